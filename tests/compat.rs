//! The compatibility matrix: plugins built from the frozen sources of every earlier plugin API
//! level (`make build` runs scripts/compat-levels) load and serve in this host, unchanged and
//! unrebuilt: sends, inbound, reload with state handover, hot reload, process isolation.
//! Level 1.0 is plugin-api 0.1.0 as of commit 243dfa8; this host's crate is 0.2.0, so these
//! tests also show the crate's release decoupled from the ABI level.

use std::path::PathBuf;

use crate::util::{self, Server, Sse, TestDir};

/// A library built for an earlier level, e.g. `compat_lib("1.0", "hermes_loopback")`.
fn compat_lib(level: &str, name: &str) -> PathBuf {
    let path = util::target_debug()
        .parent()
        .unwrap()
        .join(format!("compat/level-{level}/debug/lib{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `make build` (scripts/compat-levels)",
        path.display()
    );
    path
}

/// Installs plugin `id` with a private copy of the level-`level` build of `library`.
fn install(t: &TestDir, level: &str, id: &str, library: &str) -> PathBuf {
    let dir = t.install(id, library, 1);
    let copy = dir.join(format!("lib{library}.so"));
    std::fs::copy(compat_lib(level, library), &copy).unwrap();
    copy
}

fn send(server: &Server, id: &str, text: &str) -> serde_json::Value {
    let (status, body) = server.post(
        &format!("/api/platforms/{id}/send"),
        &serde_json::json!({ "chat_id": "room", "text": text }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn level_1_0_plugins_serve_reload_and_hot_reload_in_this_host() {
    let t = TestDir::new();
    let lb = install(&t, "1.0", "lb", "hermes_loopback");
    install(&t, "1.0", "echo", "echo_plugin");
    t.install_copy("current", "hermes_loopback");
    let server = Server::start_with(
        &t,
        "[platforms.lb]\n\n[platforms.echo]\nshout = true\n\n[platforms.current]\n",
        &["--dev"],
    );
    let mut sse = Sse::connect(&server.addr);

    // Sends and inbound, through both level-1.0 plugins.
    assert_eq!(send(&server, "lb", "one")["message_id"], "lb-1-1");
    let echo = sse.next();
    assert_eq!(echo["platform"], "lb");
    assert_eq!(echo["kind"], "message");
    assert_eq!(echo["text"], "one");
    assert_eq!(echo["metadata"]["echo_count"], 1);
    assert_eq!(echo["metadata"]["version"], "0.1.0");
    assert_eq!(send(&server, "echo", "hi")["message_id"], "echo-1");
    let echo = sse.next();
    assert_eq!(
        (&echo["platform"], &echo["text"]),
        (&"echo".into(), &"HI".into())
    );

    // Each shows its level; the plugin of this tree is 1.1.
    assert_eq!(server.platform("lb")["api_level"], "1.0");
    assert_eq!(server.platform("echo")["api_level"], "1.0");
    send(&server, "current", "x");
    assert_eq!(server.platform("current")["api_level"], "1.1");
    // It carries text messages only: an edit is refused naming its level.
    let (status, body) = server.post(
        "/api/platforms/lb/edit",
        r#"{"chat_id":"room","message_id":"lb-1-1","text":"x"}"#,
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("built for plugin API level 1.0"), "{body}");
    let info = server.cli(&["plugin", "info", "lb"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("plugin API level 1.0"), "{text}");

    // A reload hands the state over: the echo count goes on.
    let out = server.cli(&["plugin", "reload", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(send(&server, "lb", "two")["message_id"], "lb-2-2");

    // Hot reload of the same build, linked in anew as cargo does.
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    util::replace_like_cargo(&compat_lib("1.0", "hermes_loopback"), &lb);
    server.wait_platform("lb", |p| p["generation"] == 3);
    assert_eq!(send(&server, "lb", "three")["message_id"], "lb-3-3");
    assert_eq!(server.platform("lb")["api_level"], "1.0");
}

#[test]
fn a_level_1_0_plugin_serves_in_process_isolation() {
    let t = TestDir::new();
    install(&t, "1.0", "lb", "hermes_loopback");
    let server = Server::start(&t, "[platforms.lb]\nisolation = \"process\"\n");
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(send(&server, "lb", "one")["message_id"], "lb-1-1");
    assert_eq!(sse.next()["text"], "one");
    let status = server.platform("lb");
    assert!(status["pid"].as_u64().is_some(), "{status}");
    assert_eq!(status["api_level"], "1.0");
    // The gateway never maps it: the child does.
    assert!(server.mapped("hermes_loopback").is_empty());
    let out = server.cli(&["plugin", "reload", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(send(&server, "lb", "two")["message_id"], "lb-2-2");
    assert_eq!(sse.next()["metadata"]["echo_count"], 2);
}
