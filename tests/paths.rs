//! An installed `hermes-host` outside a checkout: with no `--config` and no `./hermes.toml`, the
//! config comes from `$HERMES_CONFIG` or `$XDG_CONFIG_HOME/hermes/`, plugins from
//! `$HERMES_PLUGIN_PATH` and `~/.local/share/hermes/plugins`, and `plugin list` says where each
//! came from.

use std::path::Path;

use crate::util::{self, TestDir};

/// A plugin folder `dir/<id>` holding its manifest and its own copy of the loopback library,
/// as a package installs it.
fn installed_plugin(dir: &Path, id: &str) {
    let folder = dir.join(id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        util::lib("hermes_loopback"),
        folder.join("libhermes_loopback.so"),
    )
    .unwrap();
    std::fs::write(
        folder.join("plugin.toml"),
        format!("[plugin]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"1.0.0\"\napi = 1\nlibrary = \"hermes_loopback\"\n"),
    )
    .unwrap();
}

/// `hermes-host <args>` in `work` (no hermes.toml there) with only `vars` of the search's.
fn installed(work: &Path, vars: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
    util::outside_checkout(&util::bin(), work, args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn an_installed_binary_finds_its_config_and_plugins_by_the_search_paths() {
    let t = TestDir::new();
    let (home, work, extra) = (
        t.path().join("home"),
        t.path().join("work"),
        t.path().join("extra"),
    );
    std::fs::create_dir_all(&work).unwrap();
    installed_plugin(&home.join(".local/share/hermes/plugins"), "mine");
    installed_plugin(&extra, "theirs");
    // The same id on the earlier path wins; the later one is reported, not loaded.
    installed_plugin(&home.join(".local/share/hermes/plugins"), "theirs");
    let config = home.join(".config/hermes/hermes.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[platforms.mine]\nprefix = \"xdg: \"\n").unwrap();

    let out = installed(
        &work,
        &[("HOME", &home), ("HERMES_PLUGIN_PATH", &extra)],
        &["plugin", "list", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let by_id = |id: &str| {
        list.iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {list:?}"))
            .clone()
    };
    let mine = by_id("mine");
    assert_eq!(mine["from"]["origin"], "user", "{mine}");
    // Its table came from the config in $XDG_CONFIG_HOME's default, ~/.config/hermes.
    assert_eq!(mine["configured"], true, "{mine}");
    let theirs = by_id("theirs");
    assert_eq!(theirs["from"]["origin"], "env", "{theirs}");
    assert_eq!(theirs["from"]["dir"], extra.display().to_string());
    assert_eq!(list.len(), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("theirs"),
        "the shadowed copy is reported: {stderr}"
    );

    // The table says where each came from.
    let out = installed(
        &work,
        &[("HOME", &home), ("HERMES_PLUGIN_PATH", &extra)],
        &["plugin", "list"],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().ends_with("FROM"), "{table}");
    assert!(
        table.contains("(HERMES_PLUGIN_PATH)") && table.contains("(user)"),
        "{table}"
    );

    // $HERMES_CONFIG wins over the XDG file; one that does not exist is an error naming it.
    let other = t.path().join("other.toml");
    std::fs::write(&other, "[platforms.theirs]\n").unwrap();
    let out = installed(
        &work,
        &[
            ("HOME", &home),
            ("HERMES_PLUGIN_PATH", &extra),
            ("HERMES_CONFIG", &other),
        ],
        &["plugin", "list", "--json"],
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let configured: Vec<&str> = list
        .iter()
        .filter(|p| p["configured"] == true)
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(configured, ["theirs"]);
    let missing = t.path().join("missing.toml");
    let out = installed(&work, &[("HERMES_CONFIG", &missing)], &["plugin", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.toml") && stderr.contains("$HERMES_CONFIG"),
        "{stderr}"
    );
}

/// Under systemd, `$STATE_DIRECTORY` is where the state goes, whatever the config's default.
#[test]
fn the_service_managers_state_directory_holds_the_state() {
    let t = TestDir::new();
    let (work, state) = (t.path().join("work"), t.path().join("var-lib-hermes"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let plugins = t.path().join("plugins");
    installed_plugin(&plugins, "lb");
    let out = installed(
        &work,
        &[
            ("HERMES_PLUGIN_PATH", &plugins),
            ("STATE_DIRECTORY", &state),
        ],
        &["plugin", "check", "lb"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check's shadow copy was made under the state folder, not ./.hermes.
    assert!(
        state.join("shadow").is_dir(),
        "nothing under {}",
        state.display()
    );
    assert!(!work.join(".hermes").exists());
}
