//! The sandbox of `isolation = "process"`: the crashy fixture's `try:` commands attempt what a
//! hostile plugin would (read a 0600 file outside its grants, write outside its data folder,
//! connect to a port nobody granted, ptrace the gateway, exec a shell). In a strict sandbox each
//! is refused and reaches the plugin as an I/O error, the child living on; in the gateway's
//! process the same plugin reads the file, and status says it is not sandboxed.

use std::{net::TcpListener, os::unix::fs::PermissionsExt};

use crate::util::{self, Server, Sse, TestDir};

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

    // `plugin info` says the same, from the running server.
    let info = server.cli(&["plugin", "info", "crashy"]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("sandbox       strict (landlock abi "),
        "{info}"
    );

    // `status` has it in a column: the mode and Landlock's ABI; `none` in process.
    let table = server.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().nth(1).unwrap().ends_with("SANDBOX"),
        "{table}"
    );
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_owned()
    };
    let head = sandbox.split(':').next().unwrap();
    assert!(row("crashy").ends_with(head), "{table}");
    assert!(row("open").ends_with("none"), "{table}");

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

/// `isolation = "process"` with `sandbox = "strict"`: the keys the adapters' tests add.
/// (The shipped manifests say `inbound = true`, which delivers no sender until allowed.)
const STRICT: &str = "isolation = \"process\"\nsandbox = \"strict\"\nallow_all_users = true\n";

fn assert_strict(server: &Server, ids: &[&str]) {
    for id in ids {
        let status = server.platform(id);
        let sandbox = status["sandbox"].as_str().unwrap_or_default();
        assert!(
            sandbox.starts_with("strict") && !sandbox.contains("not enforced"),
            "{status}"
        );
    }
}

/// XMPP against Prosody (STARTTLS with a private CA read through `tls_ca_file`), 1:1 both ways
/// and a room, each account in a strict sandbox granted what the shipped manifest declares;
/// the file share on a port of its own is reached by the account the operator granted it to,
/// and refused to the other, as a send error naming the refusal.
#[test]
fn xmpp_talks_both_ways_from_strict_sandboxes() {
    let t = TestDir::new();
    let (prosody, ca) = crate::xmpp::prosody(&t);
    util::shipped_manifest(&t, "xmpp", &["xmpp", "alice"]);
    let upload = prosody.http_port();
    let keys = |id: &str| match id {
        "xmpp" => format!("{STRICT}grants = {{ connect_ports = [{upload}] }}\n"),
        _ => STRICT.to_owned(),
    };
    let server = crate::xmpp::serve(&t, &prosody, &ca, &keys);
    assert_strict(&server, &["xmpp", "alice"]);
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(server.send("xmpp", "alice@localhost", "hello alice").0, 200);
    let (event, _) = sse.until("hello alice");
    assert_eq!(event["platform"], "alice");
    assert_eq!(
        server
            .send("alice", "ops@conference.localhost", "to the room")
            .0,
        200
    );
    let (event, _) = sse.until("to the room");
    assert_eq!(event["platform"], "xmpp");
    assert_eq!(event["chat_id"], "ops@conference.localhost");

    let file = |platform: &str, to: &str| {
        server.post(
            &format!("/api/platforms/{platform}/send"),
            &serde_json::json!({
                "chat_id": to, "text": "the log",
                "attachments": [{ "name": "build.log", "mime": "text/plain", "data_base64": "b2sK" }],
            })
            .to_string(),
        )
    };
    let (status, body) = file("xmpp", "alice@localhost");
    assert_eq!(status, 200, "{body}");
    let (status, body) = file("alice", "hermes@localhost");
    assert_ne!(status, 200, "{body}");
    assert!(body.to_lowercase().contains("permission denied"), "{body}");
}

/// Matrix against Synapse: the homeserver's port from its URL, `store_path`'s folder writable;
/// a message each way, and the store written from inside the sandbox.
#[test]
fn matrix_talks_both_ways_from_strict_sandboxes() {
    let t = TestDir::new();
    let synapse = crate::matrix::synapse(&t);
    let room = crate::matrix::make_room(&synapse);
    util::shipped_manifest(&t, "matrix", &["matrix", "alice"]);
    let stores = t.path().join("stores");
    std::fs::create_dir_all(&stores).unwrap();
    let table = |id: &str, user: &str, password: &str| {
        crate::matrix::platform(id, &synapse, user, password, &stores.join(id)).replacen(
            "]\n",
            &format!("]\n{STRICT}"),
            1,
        )
    };
    let server = Server::start(
        &t,
        &format!(
            "{}\n{}",
            table("matrix", "hermes", "secret-h"),
            table("alice", "alice", "secret-a")
        ),
    );
    crate::matrix::wait_synced(&server);
    assert_strict(&server, &["matrix", "alice"]);
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(
        server.send("matrix", crate::matrix::ROOM, "hello alice").0,
        200
    );
    let (event, _) = sse.until("hello alice");
    assert_eq!(event["platform"], "alice");
    assert_eq!(server.send("alice", &room, "hi hermes").0, 200);
    let (event, _) = sse.until("hi hermes");
    assert_eq!(event["platform"], "matrix");
    assert!(stores.join("matrix").exists(), "no store written");
}

/// Webhooks: a target's port from its URL, the listener's from `listen`; a signed inbound
/// request arrives and a send is posted, both from a strict sandbox.
#[test]
fn webhook_listens_and_posts_from_a_strict_sandbox() {
    let t = TestDir::new();
    util::shipped_manifest(&t, "webhook", &["wh"]);
    let target = crate::webhook::Target::start(vec![("/hook", vec![(200, "")])]);
    let port = crate::peers::free_port();
    let secret = "a-shared-secret-of-some-length";
    let server = Server::start(
        &t,
        &format!(
            "[platforms.wh]\n{STRICT}listen = \"127.0.0.1:{port}\"\nsecret = \"{secret}\"\n\
             targets = [{{ chat = \"ops\", url = \"http://{}/hook\", format = \"json\" }}]\n",
            target.addr
        ),
    );
    assert_strict(&server, &["wh"]);
    assert_eq!(server.send("wh", "ops", "posted from the sandbox").0, 200);
    let seen = target.seen("/hook");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["text"], "posted from the sandbox");

    let mut sse = Sse::connect(&server.addr);
    let body = r#"{"text":"in through the sandbox","user":"alertmanager"}"#;
    let signed =
        crate::webhook::signed_at(secret, crate::webhook::now_secs(), "/hooks/alerts", body);
    let addr = format!("127.0.0.1:{port}");
    let (status, answer) = crate::webhook::post(&addr, "/hooks/alerts", body, &signed);
    assert_eq!(status, 204, "{answer}");
    let (event, _) = sse.until("in through the sandbox");
    assert_eq!(event["platform"], "wh");
}

/// A kernel without Landlock (`no_landlock.py` answers its system calls with ENOSYS, as such a
/// kernel does): `strict` refuses to open the library, naming why, while `best-effort` serves
/// and says what it could not enforce, which the same read then shows.
#[test]
fn without_landlock_strict_refuses_and_best_effort_says_what_is_not_enforced() {
    let t = TestDir::new();
    t.install("tight", "fixture_crashy", 1);
    t.install("loose", "fixture_crashy", 1);
    let secret = secret(&t);
    let config = t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n\
         [platforms.tight]\nisolation = \"process\"\nsandbox = \"strict\"\n\n\
         [platforms.loose]\nisolation = \"process\"\n",
    );
    let wrapper = util::root().join("tests/fixtures/no_landlock.py");
    let server = Server::start_wrapped(&t, config, &[], &[wrapper.to_str().unwrap()]);

    let tight = server.wait_platform("tight", |p| p["state"] == "failed");
    let error = tight["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("sandbox = \"strict\" cannot be met") && error.contains("landlock"),
        "{tight}"
    );
    let (status, body) = server.send("tight", "c", "hello");
    assert_ne!(status, 200, "{body}");

    let loose = server.platform("loose");
    let sandbox = loose["sandbox"].as_str().unwrap_or_default();
    assert!(
        sandbox.starts_with("best-effort (landlock abi 0): no_new_privs, seccomp; not enforced: files, tcp ports, signals"),
        "{loose}"
    );
    // Not enforced means not enforced: the read a strict sandbox refuses goes through.
    assert_eq!(attempt(&server, "loose", &format!("read:{secret}")), "ok");
    assert!(attempt(&server, "loose", "ptrace").starts_with("PermissionDenied"));
}
