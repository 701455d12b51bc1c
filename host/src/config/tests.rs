use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("conf/hermes.toml"))
}

#[test]
fn defaults_and_relative_paths() {
    let c = parse("").unwrap();
    assert_eq!(c.plugins.dirs, vec![PathBuf::from("conf/plugins")]);
    assert_eq!(c.plugins.shadow_dir, PathBuf::from("conf/.hermes/shadow"));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8642");
    assert_eq!(c.hotreload.debounce, Duration::from_millis(150));
}

#[test]
fn platform_tables_split_host_and_plugin_keys() {
    let c =
        parse("[platforms.irc]\nstart = \"on_demand\"\ncall_timeout_ms = 500\nnick = \"bot\"\n")
            .unwrap();
    let irc = &c.platforms["irc"];
    assert_eq!(irc.start, StartMode::OnDemand);
    assert_eq!(irc.call_timeout, Duration::from_millis(500));
    assert_eq!(irc.plugin_json(), r#"{"nick":"bot"}"#);
}

#[test]
fn errors_name_file_and_key() {
    let e = parse("[platforms.irc]\nstart = \"later\"\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("conf/hermes.toml: key `platforms.irc.start`"),
        "{e}"
    );
    let e = parse("[server]\nlisten = \"nowhere\"\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("line 2, column 10: key `server.listen`"),
        "{e}"
    );
    let e = parse("[plugins]\ndirz = []\n").unwrap_err();
    assert!(e.to_string().contains("dirz"), "{e}");
}

#[test]
fn server_bounds_are_checked() {
    let e = parse("[server]\nworker_threads = 100000\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("key `server.worker_threads`: from 1 to 512"),
        "{e}"
    );
    let e = parse("[server]\napi_token = \"0123456789abcdef0123 \"\n").unwrap_err();
    assert!(e.to_string().contains("trailing space"), "{e}");
    let e = parse("[server]\nidle_quiet_secs = 0\n").unwrap_err();
    assert!(e.to_string().contains("server.idle_quiet_secs"), "{e}");
    let e = parse("[server]\nallowed_hosts = [\"a b\"]\n").unwrap_err();
    assert!(e.to_string().contains("server.allowed_hosts[0]"), "{e}");
    let e = parse("[server]\napi_token = \"x\"\n").unwrap_err();
    assert!(e.to_string().contains("at least 16 characters"), "{e}");
    let c = parse("[server]\nheader_read_timeout_ms = 500\n[journal]\ndurability = \"fsync\"\n")
        .unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_millis(500));
    assert_eq!(c.journal.durability, crate::journal::Durability::Fsync);
    let e = parse("[journal]\ndurability = \"sometimes\"\n").unwrap_err();
    assert!(e.to_string().contains("journal.durability"), "{e}");
}
