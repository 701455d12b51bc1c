//! `[plugins] trust = "signed"`: a library needs a minisign signature, `<library>.minisig`
//! beside it (the format of the `minisign` tool: `minisign -Sm <library>`), by one of
//! `[plugins] trusted_keys` (public keys as `minisign -G` prints them). The signature is
//! checked against the very copy about to be opened; hermes.lock applies too.

use std::path::Path;

use minisign_verify::{PublicKey, Signature};

/// The trusted keys, decoded; the error names the key that is not one.
pub fn keys(encoded: &[String]) -> Result<Vec<PublicKey>, String> {
    encoded
        .iter()
        .enumerate()
        .map(|(i, key)| {
            PublicKey::from_base64(key.trim()).map_err(|e| {
                format!("key `plugins.trusted_keys[{i}]`: not a minisign public key ({e})")
            })
        })
        .collect()
}

/// The signature file of `library`.
pub fn signature_path(library: &Path) -> std::path::PathBuf {
    let mut name = library.as_os_str().to_owned();
    name.push(".minisig");
    name.into()
}

/// Checks that `copy` (of platform `id`'s `library`) is signed by one of `keys`: the refusal's
/// one line.
pub fn verify(id: &str, library: &Path, copy: &Path, keys: &[PublicKey]) -> Result<(), String> {
    let sig_path = signature_path(library);
    let text = match std::fs::read_to_string(&sig_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "platform `{id}`: {} is not signed (no {}); refused (trust = \"signed\"): sign it with `minisign -Sm {}` and a key in [plugins] trusted_keys",
                library.display(),
                sig_path.display(),
                library.display()
            ));
        }
        Err(e) => return Err(format!("platform `{id}`: {}: {e}", sig_path.display())),
    };
    let signature = Signature::decode(&text).map_err(|e| {
        format!(
            "platform `{id}`: {} is not a minisign signature ({e}); refused (trust = \"signed\")",
            sig_path.display()
        )
    })?;
    let bytes = std::fs::read(copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    if keys
        .iter()
        .any(|key| key.verify(&bytes, &signature, false).is_ok())
    {
        return Ok(());
    }
    Err(format!(
        "platform `{id}`: {} does not verify {} with any of the {} trusted keys; refused (trust = \"signed\")",
        sig_path.display(),
        library.display(),
        keys.len()
    ))
}
