//! `v1` signatures: an HMAC-SHA256 under the shared secret of the timestamp, the method, the
//! path and the body; a timestamp within [`WINDOW`] of this clock; a signature seen once.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from the listener's clock, either way.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);

/// Signatures remembered (for replays) at most; past it, new requests are refused (503) until
/// old ones leave the window, rather than forgetting one that could then be replayed.
const MAX_REMEMBERED: usize = 100_000;

/// The message a `v1` signature covers.
pub(crate) fn signed_message(timestamp: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{method}\n{path}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// The MAC a `v1=<hex>` signature carries, if it is one.
fn v1_mac(signature: &str) -> Option<Vec<u8>> {
    hex::decode(signature.trim().strip_prefix("v1=")?).ok()
}

/// Whether `mac` is the HMAC-SHA256 of `message` under `secret`; compared in constant time.
pub(crate) fn mac_ok(secret: &[u8], message: &[u8], mac: &[u8]) -> bool {
    let Ok(mut hmac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    hmac.update(message);
    hmac.verify_slice(mac).is_ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The shared secret, and the signatures seen within the window (replays).
pub(super) struct Signatures {
    secret: Vec<u8>,
    /// Signatures seen, with when each leaves the window.
    seen: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Signatures {
    pub(super) fn new(secret: Vec<u8>) -> Signatures {
        Signatures {
            secret,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Why a request (its `X-Hermes-Signature` and `X-Hermes-Timestamp`) is not accepted, as
    /// the client is told: a status and a JSON body.
    pub(super) fn check(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), (&'static str, String)> {
        let unauthorized = |why: &str| ("401 Unauthorized", format!(r#"{{"error":"{why}"}}"#));
        let Some(signature) = signature else {
            return Err(unauthorized("missing X-Hermes-Signature"));
        };
        if signature.trim().starts_with("sha256=") {
            return Err(unauthorized(
                "body-only sha256= signatures are no longer accepted: sign v1 (timestamp, method, path and body; see docs/adapters.md)",
            ));
        }
        let Some(mac) = v1_mac(signature) else {
            return Err(unauthorized("X-Hermes-Signature must be v1=<hex>"));
        };
        let Some(timestamp) = timestamp else {
            return Err(unauthorized("missing X-Hermes-Timestamp"));
        };
        if !mac_ok(
            &self.secret,
            &signed_message(timestamp, method, path, body),
            &mac,
        ) {
            return Err(unauthorized("bad X-Hermes-Signature"));
        }
        let now = now_secs();
        let Some(at) = timestamp.parse::<u64>().ok() else {
            return Err(unauthorized("X-Hermes-Timestamp must be Unix seconds"));
        };
        if at.abs_diff(now) > WINDOW.as_secs() {
            return Err(unauthorized(
                "X-Hermes-Timestamp is outside the 300 s window (a replay, or a clock off)",
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, until| *until > now);
            if seen.len() >= MAX_REMEMBERED {
                return Err((
                    "503 Service Unavailable",
                    r#"{"error":"too many signed requests within the window; retry"}"#.into(),
                ));
            }
        }
        if seen.insert(mac, at + WINDOW.as_secs()).is_some() {
            return Err(unauthorized("this signature was seen already (a replay)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_method_path_and_body() {
        let secret = b"0123456789abcdef";
        let message = signed_message("1700000000", "POST", "/hooks/a", b"{}");
        assert_eq!(message, b"1700000000\nPOST\n/hooks/a\n{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(&message);
        let good = mac.finalize().into_bytes().to_vec();
        assert!(mac_ok(secret, &message, &good));
        for other in [
            signed_message("1700000001", "POST", "/hooks/a", b"{}"),
            signed_message("1700000000", "POST", "/hooks/b", b"{}"),
            signed_message("1700000000", "PUT", "/hooks/a", b"{}"),
            signed_message("1700000000", "POST", "/hooks/a", b"{ }"),
        ] {
            assert!(!mac_ok(secret, &other, &good));
        }
        assert!(!mac_ok(b"another secret!!", &message, &good));
        assert_eq!(
            v1_mac(&format!("v1={}", hex::encode(&good))),
            Some(good.clone())
        );
        assert_eq!(v1_mac("v1=zz"), None);
        assert_eq!(v1_mac(&format!("sha256={}", hex::encode(&good))), None);
    }
}
