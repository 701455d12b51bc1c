use super::*;

#[test]
fn path_keys_resolve_against_the_config_folder() {
    let text = "[plugin]\nid = \"irc\"\nname = \"IRC\"\nversion = \"1\"\napi = 1\nlibrary = \"x\"\npath_keys = [\"tls_ca_file\", \"absent\"]\n";
    let manifest = Manifest::parse(text, Path::new("plugins/irc/plugin.toml")).unwrap();
    let mut table = toml::Table::new();
    table.insert("tls_ca_file".into(), "certs/ca.pem".into());
    table.insert("nick".into(), "certs/not-a-path".into());
    let json: serde_json::Value =
        serde_json::from_str(&manifest.plugin_json(&table, Path::new("/etc/hermes"))).unwrap();
    assert_eq!(json["tls_ca_file"], "/etc/hermes/certs/ca.pem");
    assert_eq!(json["nick"], "certs/not-a-path");
    table.insert("tls_ca_file".into(), "/abs/ca.pem".into());
    let json: serde_json::Value =
        serde_json::from_str(&manifest.plugin_json(&table, Path::new("/etc/hermes"))).unwrap();
    assert_eq!(json["tls_ca_file"], "/abs/ca.pem");
}

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("p/plugin.toml"))
}

const GOOD: &str = r#"
[plugin]
id = "irc"
name = "IRC"
version = "0.3.1"
api = 1
library = "hermes_irc"
"#;

#[test]
fn ids() {
    for ok in ["a", "irc", "0x", "a-b_c", &"a".repeat(64)] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "_a",
        "A",
        "a.b",
        "a/b",
        "..",
        &"a".repeat(65),
        "é",
    ] {
        assert!(!valid_id(bad), "{bad}");
    }
}

#[test]
fn good_manifest_parses() {
    let m = parse(GOOD).unwrap();
    assert_eq!(m.id, "irc");
    assert_eq!(m.kind, "platform");
    assert_eq!(m.library_file_name(), "libhermes_irc.so");
}

#[test]
fn errors_name_file_and_field() {
    let e = parse(&GOOD.replace("\"irc\"", "\"IRC!\"")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("plugin.id"));
    assert!(
        e.to_string()
            .starts_with("p/plugin.toml: field `plugin.id`:"),
        "{e}"
    );

    let e = parse(&GOOD.replace("api = 1", "api = \"one\"")).unwrap_err();
    assert!(
        e.to_string().contains("key `plugin.api`: invalid type"),
        "{e}"
    );

    let e = parse(&GOOD.replace("name = \"IRC\"\n", "")).unwrap_err();
    assert!(e.to_string().contains("name"), "{e}");

    let e = parse(&GOOD.replace("hermes_irc", "../evil")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("plugin.library"));

    let limited = format!("{GOOD}\n[limits]\nrate_per_sec = 2\nburst = 0\n");
    let e = parse(&limited).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("limits.burst"));
    let ok = parse(&limited.replace("burst = 0", "burst = 4")).unwrap();
    assert_eq!(ok.limits.rate_per_sec, Some(2.0));
}

#[test]
fn the_sandbox_table_is_read_and_its_paths_must_be_absolute() {
    let head =
        "[plugin]\nid = \"irc\"\nname = \"IRC\"\nversion = \"1\"\napi = 1\nlibrary = \"x\"\n";
    let m = Manifest::parse(
        &format!("{head}[sandbox]\nconnect_ports = [6697]\nconnect_keys = [\"server\"]\nread = [\"/etc/certs\"]\n"),
        Path::new("p/plugin.toml"),
    )
    .unwrap();
    assert_eq!(m.sandbox.connect_ports, [6697]);
    assert_eq!(m.sandbox.connect_keys, ["server"]);
    let e = Manifest::parse(
        &format!("{head}[sandbox]\nwrite = [\"data\"]\n"),
        Path::new("p/plugin.toml"),
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("sandbox.write"));
    let e = Manifest::parse(
        &format!("{head}[sandbox]\nports = [1]\n"),
        Path::new("p/plugin.toml"),
    )
    .unwrap_err();
    assert!(e.message.contains("ports"), "{e}");
}
