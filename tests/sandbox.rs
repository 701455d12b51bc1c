//! The sandbox of `isolation = "process"`: the crashy fixture's `try:` commands attempt what a
//! hostile plugin would (read a 0600 file outside its grants, write outside its data folder,
//! connect to a port nobody granted, ptrace the gateway, exec a shell). In a strict sandbox each
//! is refused and reaches the plugin as an I/O error, the child living on; in the gateway's
//! process the same plugin reads the file, and status says it is not sandboxed.

use std::{net::TcpListener, os::unix::fs::PermissionsExt};

use crate::util::{Server, TestDir};

/// `try:<what>` through `platform`: the plugin's answer (`ok` or its I/O error).
fn attempt(server: &Server, platform: &str, what: &str) -> String {
    let (status, body) = server.send(platform, "c", &format!("try:{what}"));
    assert_eq!(status, 200, "{what}: {body}");
    body["message_id"].as_str().unwrap_or_default().to_owned()
}

fn secret(t: &TestDir) -> String {
    let path = t.path().join("secret.txt");
    std::fs::write(&path, "the gateway's secret").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[test]
fn a_strict_sandbox_refuses_what_was_not_granted_as_io_errors_and_the_child_lives_on() {
    let t = TestDir::new();
    t.install("crashy", "fixture_crashy", 1);
    t.install("open", "fixture_crashy", 1);
    let secret = secret(&t);
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    let granted_port = granted.local_addr().unwrap().port();
    let config = format!(
        "[platforms.crashy]\nisolation = \"process\"\nsandbox = \"strict\"\n\
         grants = {{ connect_ports = [{granted_port}] }}\n\n[platforms.open]\n"
    );
    let server = Server::start(&t, &config);
    let status = server.platform("crashy");
    let pid = status["pid"].as_i64().expect("a child");
    let sandbox = status["sandbox"].as_str().unwrap_or_default();
    assert!(
        sandbox.starts_with("strict (landlock abi ")
            && sandbox.contains("files, tcp ports, signals, seccomp")
            && !sandbox.contains("not enforced"),
        "{status}"
    );

    let outside = t.path().join("outside.txt").display().to_string();
    let refused_port = refused.local_addr().unwrap().port();
    for (what, error) in [
        (format!("read:{secret}"), "PermissionDenied"),
        (format!("write:{outside}"), "PermissionDenied"),
        (format!("connect:{refused_port}"), "PermissionDenied"),
        (
            "ptrace".to_owned(),
            "PermissionDenied: Operation not permitted",
        ),
        ("exec".to_owned(), "PermissionDenied"),
    ] {
        let answer = attempt(&server, "crashy", &what);
        assert!(answer.starts_with(error), "{what}: {answer}");
    }
    assert!(!std::path::Path::new(&outside).exists());
    // What it was granted works: its data folder, the granted port, its own library folder.
    assert_eq!(attempt(&server, "crashy", "data"), "ok");
    assert!(t.path().join("state/data/crashy/crashy.txt").exists());
    assert_eq!(
        attempt(&server, "crashy", &format!("connect:{granted_port}")),
        "ok"
    );
    // The same child serves on: no refusal was a crash.
    assert_eq!(server.platform("crashy")["pid"].as_i64(), Some(pid));
    let (status, body) = server.send("crashy", "c", "hello");
    assert_eq!(status, 200, "{body}");

    // In the gateway's process the same plugin reads the file, and status says so.
    assert_eq!(attempt(&server, "open", &format!("read:{secret}")), "ok");
    let open = server.platform("open");
    assert!(
        open["sandbox"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not sandboxed (in process"),
        "{open}"
    );
}

#[test]
fn sandbox_off_leaves_the_child_unconfined_and_says_so() {
    let t = TestDir::new();
    t.install("crashy", "fixture_crashy", 1);
    let secret = secret(&t);
    let server = Server::start(
        &t,
        "[platforms.crashy]\nisolation = \"process\"\nsandbox = \"off\"\n",
    );
    assert_eq!(attempt(&server, "crashy", &format!("read:{secret}")), "ok");
    let status = server.platform("crashy");
    assert!(
        status["sandbox"]
            .as_str()
            .unwrap_or_default()
            .starts_with("off"),
        "{status}"
    );
}

#[test]
fn sandbox_keys_are_refused_for_a_platform_in_the_gateways_process() {
    let t = TestDir::new();
    t.install("crashy", "fixture_crashy", 1);
    t.config("[platforms.crashy]\nsandbox = \"strict\"\n");
    let out = t.run(&["plugin", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sandbox") && stderr.contains("isolation = \"process\" only"),
        "{stderr}"
    );
}
