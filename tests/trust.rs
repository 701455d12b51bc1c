//! Strict modes: a library, manifest or plugin folder that someone else could change, and a
//! library that resolves outside the plugin folders, are refused naming the path, and the rest
//! of the gateway serves.

use std::{fs, os::unix::fs::PermissionsExt as _};

use crate::util::{self, Server, TestDir};

fn mode(path: &std::path::Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn writable_libraries_and_folders_are_refused_naming_the_path_and_mode() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    t.install("ok", "hermes_loopback", 1);
    mode(&library, 0o666);
    let server = Server::start(
        &t,
        "[platforms.lb]\nstart = \"on_demand\"\n[platforms.ok]\n",
    );
    let (status, body) = server.send("lb", "c", "hi");
    assert_eq!(status, 503, "{body}");
    let error = server.platform("lb")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!(
            "library {} is writable by group and others (mode 0666)",
            library.display()
        )) && error.contains("chmod go-w"),
        "{error}"
    );
    assert_eq!(server.send("ok", "c", "still serving").0, 200);

    // Fixed, it loads; a plugin folder others can write is refused in turn.
    mode(&library, 0o755);
    let dir = t.plugins().join("lb");
    mode(&dir, 0o777);
    let check = server.cli(&["plugin", "check", "lb"]);
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        out.contains("plugin folder") && out.contains("(mode 0777)"),
        "{out}"
    );
    mode(&dir, 0o755);
    let check = server.cli(&["plugin", "check", "lb"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_library_symlinked_out_of_the_plugin_folders_is_refused_unless_its_folder_is_trusted() {
    let t = TestDir::new();
    let dir = t.install("lb", "hermes_loopback", 1);
    // Outside the test's folder, which lies under the library dir target/debug.
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().canonicalize().unwrap();
    let real = elsewhere.join("libhermes_loopback.so");
    fs::copy(util::lib("hermes_loopback"), &real).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("libhermes_loopback.so")).unwrap();
    let server = Server::start(&t, "[platforms.lb]\nstart = \"on_demand\"\n");
    assert_eq!(server.send("lb", "c", "hi").0, 503);
    let error = server.platform("lb")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("outside the plugin folder and [plugins] library_dirs")
            && error.contains("trusted_dirs"),
        "{error}"
    );
    drop(server);
    // The folder named as trusted: loaded.
    let config = t.config("");
    let text = fs::read_to_string(&config).unwrap().replace(
        "state_dir = \"state\"",
        &format!(
            "state_dir = \"state\"\ntrusted_dirs = [{:?}]",
            elsewhere.display().to_string()
        ),
    );
    fs::write(&config, text + "[platforms.lb]\n").unwrap();
    let server = Server::start_config(&t, config, &[]);
    assert_eq!(server.send("lb", "c", "hi").0, 200);
}

/// This test dir's config for a server, with `[plugins] trust = "lock"` and `extra`.
fn locked_config(t: &TestDir, extra: &str) -> std::path::PathBuf {
    let config = t.config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n{extra}"
    ));
    let text = fs::read_to_string(&config).unwrap().replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\ntrust = \"lock\"",
    );
    fs::write(&config, text).unwrap();
    config
}

#[test]
fn under_trust_lock_only_the_pinned_library_loads() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let config = locked_config(&t, "[platforms.lb]\nstart = \"on_demand\"\n");
    let server = Server::start_config(&t, config.clone(), &[]);
    assert_eq!(server.send("lb", "c", "hi").0, 503);
    let error = server.platform("lb")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("is not pinned in")
            && error.contains("`hermes-host plugin lock lb` pins it"),
        "{error}"
    );
    let out = server.cli(&["plugin", "lock", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = fs::read_to_string(t.path().join("hermes.lock")).unwrap();
    assert!(
        lock.contains("[plugins.lb]") && lock.contains("sha256 = "),
        "{lock}"
    );
    // A failed load is tried again after a second: the next send then loads the pinned one.
    server.wait_platform("lb", |_| server.send("lb", "c", "hi").0 == 200);

    // Another build: refused by a reload, naming both hashes; the pinned one serves on.
    util::replace_like_cargo(&util::variant_lib(), &library);
    let out = server.cli(&["plugin", "reload", "lb"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("its library has sha256 ") && err.contains(" pins "),
        "{err}"
    );
    assert_eq!(server.platform("lb")["generation"], 1);
    assert_eq!(server.send("lb", "c", "still").0, 200);
    let out = server.cli(&["plugin", "lock", "lb"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(was "));
    let out = server.cli(&["plugin", "reload", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.platform("lb")["version"], "0.2.0-next");
}

#[test]
fn serve_dev_loads_a_watched_plugins_rebuild_with_a_warning_under_trust_lock() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let config = locked_config(&t, "[platforms.lb]\n");
    assert!(t.run(&["plugin", "lock", "lb"]).status.success());
    let server = Server::start_config(&t, config, &["--dev"]);
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    util::replace_like_cargo(&util::variant_lib(), &library);
    server.wait_platform("lb", |p| p["generation"] == 2);
    server.wait_log("serve --dev: a watched plugin is loaded anyway", 1);
}

/// Runs Debian's `minisign` with `args` in `dir`, which must succeed.
fn minisign(dir: &std::path::Path, args: &[&str]) {
    let binary = std::path::Path::new("/usr/bin/minisign");
    assert!(
        binary.exists(),
        "/usr/bin/minisign is missing: install Debian's minisign package (.ci/run does)"
    );
    let out = std::process::Command::new(binary)
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "minisign {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair made by `minisign -G` in `dir` as `<name>.pub` / `<name>.key`: the public key's
/// base64 line.
fn key_pair(dir: &std::path::Path, name: &str) -> String {
    let (public, secret) = (format!("{name}.pub"), format!("{name}.key"));
    minisign(dir, &["-G", "-W", "-p", &public, "-s", &secret]);
    fs::read_to_string(dir.join(public))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[test]
fn under_trust_signed_only_a_library_signed_by_a_trusted_key_loads() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let trusted = key_pair(t.path(), "trusted");
    key_pair(t.path(), "other");
    let sign = |key: &str| {
        minisign(
            t.path(),
            &[
                "-S",
                "-s",
                &format!("{key}.key"),
                "-m",
                library.to_str().unwrap(),
            ],
        );
    };
    sign("other");
    let config = locked_config(&t, "[platforms.lb]\nstart = \"on_demand\"\n");
    let text = fs::read_to_string(&config).unwrap().replace(
        "trust = \"lock\"",
        &format!("trust = \"signed\"\ntrusted_keys = [\"{trusted}\"]"),
    );
    fs::write(&config, text).unwrap();
    assert!(t.run(&["plugin", "lock", "lb"]).status.success());
    let server = Server::start_config(&t, config, &[]);

    // Signed by a key that is not trusted: refused.
    assert_eq!(server.send("lb", "c", "hi").0, 503);
    let error = server.platform("lb")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("does not verify") && error.contains("1 trusted keys"),
        "{error}"
    );
    // Signed by the trusted key: loads (once the failed load's second has passed).
    sign("trusted");
    server.wait_platform("lb", |_| server.send("lb", "c", "hi").0 == 200);
    // Unsigned: a reload is refused, the signed generation serves on.
    fs::remove_file(format!("{}.minisig", library.display())).unwrap();
    let out = server.cli(&["plugin", "reload", "lb"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("is not signed"),
        "{err}"
    );
    assert_eq!(server.send("lb", "c", "still").0, 200);
}

#[test]
fn a_key_that_is_not_a_minisign_key_is_refused_naming_it() {
    let t = TestDir::new();
    let config = t.config("");
    let text = fs::read_to_string(&config).unwrap().replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\ntrust = \"signed\"\ntrusted_keys = [\"not-a-key\"]",
    );
    fs::write(&config, text).unwrap();
    let out = t.run(&["plugin", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plugins.trusted_keys[0]"), "{err}");
}
