//! `hermes-host plugin list / info / check`, run as a user runs them.

use std::{
    path::Path,
    process::{Command, Output},
};

use hermes_plugin_api::abi::MAGIC;

use crate::util::{self, TestDir};

fn run(t: &TestDir, args: &[&str]) -> Output {
    t.run(args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn plugin_list_of_100_installed_opens_no_library() {
    let t = TestDir::new();
    for i in 0..100 {
        t.install(&format!("p{i:03}"), "hermes_loopback", 1);
    }
    t.config("[platforms.p007]\n");
    // LD_DEBUG=files makes glibc report every object it opens, dlopen included.
    let out = Command::new(util::bin())
        .args([
            "--config",
            &t.path().join("hermes.toml").to_string_lossy(),
            "plugin",
            "list",
            "--json",
        ])
        .env("LD_DEBUG", "files")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("file="), "LD_DEBUG gave no trace: {stderr}");
    assert!(
        !stderr.contains("hermes_loopback"),
        "a plugin library was opened"
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 100);
    assert!(
        list.iter()
            .all(|p| p["state"] == "registered" && p["api"] == 1)
    );
    assert_eq!(list.iter().filter(|p| p["configured"] == true).count(), 1);
    assert!(!t.shadow().exists());

    let out = run(&t, &["plugin", "list"]);
    let table = text(&out.stdout);
    assert!(
        table.starts_with("ID    NAME       VERSION  API  STATE       CONFIGURED  FROM\n"),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "p007  Test p007  0.0.1    1    registered  yes         {} (config)\n",
            t.plugins().display()
        )),
        "{table}"
    );
}

#[test]
fn plugin_info_shows_manifest_library_and_env_names_never_values() {
    let t = TestDir::new();
    let dir = t.install("loopback", "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap()
        + "required_env = [\"HERMES_TEST_SET\", \"HERMES_TEST_UNSET\"]\n";
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    t.config("");
    let out = Command::new(util::bin())
        .args([
            "--config",
            &t.path().join("hermes.toml").to_string_lossy(),
            "plugin",
            "info",
            "loopback",
        ])
        .env("HERMES_TEST_SET", "s3cret-value")
        .env_remove("HERMES_TEST_UNSET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    assert!(
        info.contains("HERMES_TEST_SET (set), HERMES_TEST_UNSET (missing)"),
        "{info}"
    );
    assert!(!info.contains("s3cret"), "an env value leaked: {info}");
    assert!(
        info.contains(&util::lib("hermes_loopback").display().to_string()),
        "{info}"
    );
    assert!(info.contains("serving       no server running"), "{info}");

    let out = run(&t, &["plugin", "info", "loopback", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["manifest"]["id"], "loopback");
    assert_eq!(json["required_env"][1]["present"], false);

    let out = run(&t, &["plugin", "info", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no plugin with id `nope` is installed"));
}

#[test]
fn plugin_check_accepts_the_shipped_plugins() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install("echo", "echo_plugin", 1);
    t.config("[platforms.loopback]\nuser = \"bob\"\n");
    for args in [
        &["plugin", "check", "loopback"][..],
        &["plugin", "check", "loopback", "--start"],
        &["plugin", "check", "echo", "--start"],
    ] {
        let out = run(&t, args);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("vtable layouts compatible"), "{stdout}");
        assert!(
            stdout.contains("plugin API level 1.1 (this host: 1.0 to 1.1)"),
            "{stdout}"
        );
        assert!(stdout.contains("the copy is no longer mapped"), "{stdout}");
        assert!(stdout.trim_end().ends_with(": sound"), "{stdout}");
    }
    let out = run(&t, &["plugin", "check", "loopback", "--start"]);
    assert!(text(&out.stdout).contains("ok   config    [platforms.loopback] is valid"));
    assert!(text(&out.stdout).contains("ok   start     started; health Healthy"));
    // The scratch shadow dirs are gone.
    assert_eq!(util::file_count(&t.shadow()), 0);
}

/// Runs `plugin check <id>` and returns the refusal printed on stderr.
fn refusal(t: &TestDir, id: &str) -> String {
    let out = run(t, &["plugin", "check", id]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{id}: {}{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("error: {id} refused:")),
        "{stderr}"
    );
    stderr
}

#[test]
fn plugin_check_refuses_broken_plugins_with_the_reason() {
    let t = TestDir::new();
    let good = std::fs::read(util::lib("hermes_loopback")).unwrap();
    t.install_bytes("text", b"#!/bin/sh\necho not a library\n");
    t.install_bytes("truncated", &good[..good.len() / 3]);
    let mut no_entry = good.clone();
    util::patch(
        &mut no_entry,
        b"hermes_plugin_entry",
        b"hermes_plugin_entrx",
    );
    t.install_bytes("noentry", &no_entry);
    let mut bad_magic = good.clone();
    util::patch(&mut bad_magic, &MAGIC.to_le_bytes(), b"NOTHERMS");
    t.install_bytes("badmagic", &bad_magic);
    t.install("drift", "fixture_drift", 1);
    t.install("future", "hermes_loopback", 2);
    t.install("dashed", "my-plugin", 1);
    t.install("loopback", "hermes_loopback", 1);
    t.config("[platforms.loopback]\nuser = \"\"\n[platforms.panicky]\ncolour = \"red\"\n");
    t.install("panicky", "fixture_panicky", 1);

    assert!(refusal(&t, "text").contains("not an ELF file"));
    // The crate is `my-plugin`; cargo wrote `libmy_plugin.so`.
    assert!(
        refusal(&t, "dashed").contains("libmy-plugin.so not found")
            && refusal(&t, "dashed").contains("set `library = \"my_plugin\"`")
    );
    assert!(refusal(&t, "truncated").contains("truncated"));
    assert!(refusal(&t, "noentry").contains("no `hermes_plugin_entry` symbol"));
    assert!(refusal(&t, "badmagic").contains("wrong magic"));
    assert!(refusal(&t, "drift").contains("built against another plugin API: PluginVTable"));
    // The full layout comparison only when asked.
    let terse = text(&run(&t, &["plugin", "check", "drift"]).stdout);
    assert!(
        terse.contains("--verbose` shows the full layout comparison") && terse.lines().count() < 8,
        "{terse}"
    );
    let verbose = text(&run(&t, &["plugin", "check", "drift", "--verbose"]).stdout);
    assert!(verbose.contains("Compared <this>"), "{verbose}");
    let json = text(&run(&t, &["plugin", "check", "drift", "--json"]).stdout);
    assert!(json.contains("\"layout_details\""), "{json}");
    assert!(
        refusal(&t, "future")
            .contains("field `plugin.api`: the plugin declares API 2, this host speaks 1")
    );
    assert!(
        refusal(&t, "loopback")
            .contains("[platforms.loopback]: validate_config: `user` must not be empty")
    );
    assert!(refusal(&t, "panicky").contains("unknown field `colour`"));
}

#[test]
fn enable_when_makes_a_plugin_configured_without_loading_it() {
    let t = TestDir::new();
    let dir = t.install("envy", "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap()
        + "[plugin.enable_when]\nenv_all = [\"HERMES_TEST_ENVY\"]\n";
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    t.config("");
    let list = |value: Option<&str>| {
        let mut command = Command::new(util::bin());
        command.args([
            "--config",
            &t.path().join("hermes.toml").to_string_lossy(),
            "plugin",
            "list",
            "--json",
        ]);
        match value {
            Some(v) => command.env("HERMES_TEST_ENVY", v),
            None => command.env_remove("HERMES_TEST_ENVY"),
        };
        let out = command.output().unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        (
            list[0]["configured"].as_bool().unwrap(),
            list[0]["state"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(list(None), (false, "registered".to_owned()));
    assert_eq!(list(Some("")), (false, "registered".to_owned()));
    assert_eq!(list(Some("yes")), (true, "registered".to_owned()));
}

#[test]
fn adapter_config_errors_name_the_key_in_check_and_in_serve() {
    let t = TestDir::new();
    t.install("irc", "hermes_irc", 1);
    t.install("mqtt", "hermes_mqtt", 1);
    let platforms = "[platforms.irc]\nserver = \"nohost\"\nnick = \"hermes\"\n[platforms.mqtt]\nbroker = \"127.0.0.1:1883\"\nqos = 7\n";
    t.config(platforms);
    assert!(refusal(&t, "irc").contains("[platforms.irc]: validate_config: `server`"));
    assert!(refusal(&t, "mqtt").contains("[platforms.mqtt]: validate_config: `qos`"));

    // serve starts; the two platforms are `failed` with the same errors, the gateway serves.
    let server = util::Server::start(&t, platforms);
    for (id, key) in [("irc", "`server`"), ("mqtt", "`qos`")] {
        let p = server.platform(id);
        assert_eq!(p["state"], "failed", "{p}");
        assert!(p["error"].as_str().unwrap().contains(key), "{p}");
    }
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_not_an_error() {
    let t = TestDir::new();
    for i in 0..50 {
        t.install(&format!("p{i:03}"), "hermes_loopback", 1);
    }
    let config = t.config("");
    // `hermes-host plugin list | head -0`: the read end is gone before the list is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .args(["plugin", "list"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "");
}

/// Rewrites a scaffolded hermes.toml's listen address (a port that was free when it was
/// written) to port 0, so a test never races another process for it.
fn listen_on_any_port(config: &Path) {
    let dev = std::fs::read_to_string(config).unwrap();
    let listen = dev
        .lines()
        .find(|l| l.starts_with("listen = \"127.0.0.1:"))
        .unwrap_or_else(|| panic!("no listen line in {dev}"));
    let port: u16 = listen["listen = \"127.0.0.1:".len()..]
        .trim_end_matches('"')
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    std::fs::write(config, dev.replace(listen, "listen = \"127.0.0.1:0\"")).unwrap();
}

#[test]
fn plugin_new_gives_a_crate_that_compiles_for_any_valid_id_and_honours_cargo_target_dir() {
    let t = TestDir::new();
    t.config("");
    let api = util::root().join("plugin-api");
    let target = t.path().join("elsewhere");
    for id in [
        "host", "config", "state", "plugin", "option", "self", "9lives", "api",
    ] {
        let dir = t.path().join(id);
        let out = Command::new(util::bin())
            .args(["plugin", "new", id, "--dir"])
            .arg(&dir)
            .arg("--api-path")
            .arg(&api)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("by path"),
            "{}",
            text(&out.stdout)
        );
        let config = std::fs::read_to_string(dir.join("hermes.toml")).unwrap();
        assert!(
            config.contains(&format!("{:?}", target.join("debug").display().to_string())),
            "{config}"
        );
        // Checked in the workspace's target folder (seconds each), and linted as strictly as
        // the crate's author will.
        let cargo = Command::new(env!("CARGO"))
            .args(["check", "--offline", "-q", "--all-targets"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", util::root().join("target"))
            .output()
            .unwrap();
        assert!(
            cargo.status.success(),
            "plugin new {id}: cargo check: {}{}",
            text(&cargo.stdout),
            text(&cargo.stderr)
        );
    }
}

#[test]
fn plugin_new_writes_a_crate_that_tests_builds_checks_and_serves_as_it_is() {
    let t = TestDir::new();
    t.config("");
    let dir = t.path().join("my-plugin");
    let api = util::root().join("plugin-api");
    let dir_arg = dir.to_str().unwrap();
    let api_arg = api.to_str().unwrap();
    let out = run(
        &t,
        &[
            "plugin",
            "new",
            "my-plugin",
            "--dir",
            dir_arg,
            "--api-path",
            api_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created plugin my-plugin"));
    // An existing non-empty folder and an invalid id are refused.
    let again = run(&t, &["plugin", "new", "my-plugin", "--dir", dir_arg]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("is not empty"),
        "{}",
        text(&again.stderr)
    );
    let bad = run(
        &t,
        &[
            "plugin",
            "new",
            "Bad Id",
            "--dir",
            t.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(
        text(&bad.stderr).contains("not a valid plugin id"),
        "{}",
        text(&bad.stderr)
    );

    // Its own tests and build, sharing the workspace's target folder (seconds, not minutes).
    std::os::unix::fs::symlink(util::root().join("target"), dir.join("target")).unwrap();
    for args in [["test", "--offline", "-q"], ["build", "--offline", "-q"]] {
        let cargo = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            // Its tests run in parallel threads: not one per process, as NEXTEST would say.
            .env_remove("NEXTEST")
            .output()
            .unwrap();
        assert!(
            cargo.status.success(),
            "cargo {args:?}: {}{}",
            text(&cargo.stdout),
            text(&cargo.stderr)
        );
    }

    // Its dev config, on a free port: check --start, then serve, send, and the echo on SSE.
    let config = dir.join("hermes.toml");
    listen_on_any_port(&config);
    let check = Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .args(["plugin", "check", "my-plugin", "--start"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    assert!(text(&check.stdout).contains("my-plugin: sound"));
    let server = util::Server::start_config(&t, config, &["--dev"]);
    let mut sse = util::Sse::connect(&server.addr);
    let (status, body) = server.post(
        "/api/platforms/my-plugin/send",
        r#"{"chat_id":"c","text":"hello"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(echo["platform"], "my-plugin");
    assert_eq!(echo["text"], "echo: hello");
}

#[test]
fn a_platform_enabled_from_the_environment_takes_its_config_from_there_and_required_env_is_enforced()
 {
    let t = TestDir::new();
    let dir = t.install("envy", "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap()
        + "required_env = [\"HERMES_TEST_TOKEN\"]\n[plugin.enable_when]\nenv_all = [\"HERMES_ENVY_USER\"]\n";
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    let config =
        t.config("[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n");
    let hermes = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(util::bin());
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("HERMES_ENVY_USER", "bob")
            .env("HERMES_ENVY_PREFIX", "\"> \"");
        match token {
            Some(v) => command.env("HERMES_TEST_TOKEN", v),
            None => command.env_remove("HERMES_TEST_TOKEN"),
        };
        command
    };

    // `plugin check --start` refuses to start it without the required variable, naming it.
    let out = hermes(&["plugin", "check", "envy", "--start"], None)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL env") && stdout.contains("HERMES_TEST_TOKEN"),
        "{stdout}"
    );
    let out = hermes(&["plugin", "check", "envy", "--start"], Some("t0ken"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Served with no table in hermes.toml: user and prefix come from HERMES_ENVY_*.
    let mut child = hermes(&["--log-level", "info", "serve"], Some("t0ken"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .strip_prefix("hermes-host ready: http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let mut sse = util::Sse::connect(&addr);
    let (status, body) = util::http(
        &addr,
        "POST",
        "/api/platforms/envy/send",
        Some(r#"{"chat_id":"c","text":"hi"}"#),
        &[],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(echo["user"], "bob");
    assert_eq!(echo["text"], "> hi");
}

#[test]
fn plugin_dev_rebuilds_on_an_edit_reloads_and_keeps_serving_through_a_broken_build() {
    let t = TestDir::new();
    t.config("");
    let dir = t.path().join("devplug");
    let api = util::root().join("plugin-api");
    let out = run(
        &t,
        &[
            "plugin",
            "new",
            "devplug",
            "--dir",
            dir.to_str().unwrap(),
            "--api-path",
            api.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::os::unix::fs::symlink(util::root().join("target"), dir.join("target")).unwrap();
    let config = dir.join("hermes.toml");
    listen_on_any_port(&config);
    let cargo = Command::new(env!("CARGO"))
        .args(["build", "--offline", "-q"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(cargo.status.success(), "{}", text(&cargo.stderr));

    // No server runs: `plugin dev` starts one.
    let mut child = Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .args(["plugin", "dev"])
        .arg(&dir)
        .env("CARGO", env!("CARGO"))
        .env("CARGO_NET_OFFLINE", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |needle: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            eprintln!("dev> {line}");
            if line.contains(needle) {
                return line;
            }
        }
    };
    let started = wait_line("dev: started hermes-host ready: http://");
    let addr = started
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    wait_line("dev: devplug serving, generation 2");
    wait_line("dev: watching");

    // An edit: rebuilt, reloaded, serving the new code.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(
        &lib,
        source.replace(
            r#"format!("{}{text}", config.greeting)"#,
            r#"format!("{}{text}!", config.greeting)"#,
        ),
    )
    .unwrap();
    let done = wait_line("dev: edit -> serving in");
    assert!(done.ends_with("generation 3"), "{done}");
    let post = |body: &str| {
        util::http(
            &addr,
            "POST",
            "/api/platforms/devplug/send",
            Some(body),
            &[],
        )
    };
    let mut sse = util::Sse::connect(&addr);
    let (status, body) = post(r#"{"chat_id":"c","text":"hi"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sse.next()["text"], "echo: hi!");

    // A broken build: said so, and generation 3 keeps serving.
    std::fs::write(&lib, "this is not rust").unwrap();
    wait_line("dev: build failed; generation 3 keeps serving");
    let (status, body) = post(r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");
    std::fs::write(&lib, &source).unwrap();
    assert!(wait_line("dev: edit -> serving in").ends_with("generation 4"));

    // Cargo.toml saved by rename (as `sed -i` and editors' safe writes do), twice: each version
    // is built and served (a watch on the file would have followed the first, replaced inode).
    let save_by_rename = |file: &str, from: &str, to: &str| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{text}");
        let temp = dir.join(format!(".{file}.swp"));
        std::fs::write(&temp, text.replacen(from, to, 1)).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    };
    let version = || {
        let (_, body) = util::http(&addr, "GET", "/api/platforms/devplug", None, &[]);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    save_by_rename("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"");
    assert!(wait_line("dev: edit -> serving in").ends_with("generation 5"));
    assert_eq!(version(), "0.2.0");
    save_by_rename("Cargo.toml", "version = \"0.2.0\"", "version = \"0.3.0\"");
    assert!(wait_line("dev: edit -> serving in").ends_with("generation 6"));
    assert_eq!(version(), "0.3.0");

    // A stale copy of the library in the plugin's folder comes first in the server's search:
    // the loop says so, naming it, instead of reporting the edit as served.
    let stale = dir.join("libhermes_platform_devplug.so");
    std::fs::copy(
        util::root().join("target/debug/libhermes_platform_devplug.so"),
        &stale,
    )
    .unwrap();
    save_by_rename(
        "plugin.toml",
        "description = \"",
        "description = \"Edited: ",
    );
    let warning = wait_line("dev: warning: the server loads");
    assert!(
        warning.contains(&stale.display().to_string())
            && warning.contains("not what this build made"),
        "{warning}"
    );
    wait_line("dev: edit -> serving in");

    // SIGTERM ends `plugin dev` and the server it started: none is left running, orphaned.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_line("dev: stopping");
    assert!(child.wait().unwrap().success());
    let status = Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    assert!(
        !status.status.success()
            && text(&status.stderr).contains("no hermes-host server is running"),
        "{}{}",
        text(&status.stdout),
        text(&status.stderr)
    );
}

#[test]
fn a_config_file_named_on_the_command_line_must_exist() {
    let t = TestDir::new();
    let missing = t.path().join("hermse.toml");
    let out = Command::new(util::bin())
        .arg("-c")
        .arg(&missing)
        .args(["plugin", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("hermse.toml: no such config file"),
        "{stderr}"
    );
    // Without -c, a missing ./hermes.toml still means the defaults.
    let out = Command::new(util::bin())
        .current_dir(t.path())
        .args(["plugin", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn plugin_check_names_a_broken_manifest_and_a_library_that_is_no_file() {
    let t = TestDir::new();
    // A manifest without `name`: its own error, not "declares API 0".
    let dir = t.plugins().join("noname");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "[plugin]\nid = \"noname\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"x\"\n",
    )
    .unwrap();
    let out = run(&t, &["plugin", "check", "noname"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("name"), "{said}");
    assert!(!said.contains("declares API 0"), "{said}");
    // A library path that is a folder, or a FIFO.
    let dir = t.install("folder", "custom_folder", 1);
    std::fs::create_dir(dir.join("libcustom_folder.so")).unwrap();
    let out = run(&t, &["plugin", "check", "folder"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("libcustom_folder.so is a folder, not a library file"),
        "{said}"
    );
    let dir = t.install("fifo", "custom_fifo", 1);
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("libcustom_fifo.so"))
            .status()
            .unwrap()
            .success()
    );
    let out = run(&t, &["plugin", "check", "fifo"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("libcustom_fifo.so is a FIFO, not a library file"),
        "{said}"
    );
}
