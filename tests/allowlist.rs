//! Allowlists: a platform delivers inbound messages only from the senders it admits
//! (`allowed_users`, `allow_all_users`, or the environment's `<ID>_ALLOWED_USERS`); a plugin
//! with inbound connections admits no one by default. The loopback plugin stands in for one,
//! its manifest saying `inbound = true`: its echo comes from the sender its `user` key names.

use crate::util::{Server, Sse, TestDir};

/// Installs loopback as `id`, declaring inbound connections.
fn install_inbound(t: &TestDir, id: &str) {
    let dir = t.install(id, "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    let manifest = manifest.replacen("[plugin]\n", "[plugin]\ninbound = true\n", 1);
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
}

fn journal_inbound(t: &TestDir) -> Vec<String> {
    std::fs::read_to_string(t.path().join("state/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "inbound")
        .map(|r| {
            format!(
                "{}/{}",
                r["platform"].as_str().unwrap(),
                r["user"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn only_admitted_senders_reach_sse_routes_and_the_journal() {
    let t = TestDir::new();
    for id in ["closed", "listed", "envall"] {
        install_inbound(&t, id);
    }
    // `closed` sets neither key; `listed` admits bob (its echoes come from bob), and routes
    // what it receives to `closed`; `envall` is opened by the environment.
    let mut server = Server::start_env(
        &t,
        "[journal]\nflush_ms = 20\n\n\
         [platforms.closed]\nuser = \"eve\"\n\n\
         [platforms.listed]\nuser = \"bob\"\nallowed_users = [\"alice\", \"bob\"]\n\n\
         [platforms.envall]\n\n\
         [[routes]]\nfrom = { platform = \"listed\", chat = \"c\" }\nto = [{ platform = \"closed\", chat = \"routed\" }]\n",
        &[("ENVALL_ALLOW_ALL_USERS", "true")],
    );
    let log = server.log();
    assert!(
        log.contains("platform `closed` admits no sender yet")
            && log.contains("CLOSED_ALLOWED_USERS"),
        "{log}"
    );
    assert!(
        log.contains("platform `envall` delivers messages from everyone"),
        "{log}"
    );
    assert!(!log.contains("platform `listed`"), "{log}");
    assert_eq!(server.platform("listed")["senders"], "2 allowed user(s)");

    let mut sse = Sse::connect(&server.addr);
    // eve's echo on `closed` is dropped; bob's on `listed` arrives, and its routed copy to
    // `closed` is sent (200 in the journal) but its echo from eve is dropped again.
    assert_eq!(server.send("closed", "c", "from eve").0, 200);
    assert_eq!(server.send("listed", "c", "from bob").0, 200);
    assert_eq!(server.send("envall", "c", "from anyone").0, 200);
    let first = sse.next();
    assert_eq!(
        (first["platform"].as_str(), first["user"].as_str()),
        (Some("listed"), Some("bob"))
    );
    let second = sse.next();
    assert_eq!(second["platform"], "envall", "{second}");
    // The routed copy is sent on a task of its own: its echo's refusal may come after the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = server.get("/metrics");
        if metrics.contains("hermes_inbound_refused_total{platform=\"closed\"} 2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.wait_log(
        "refused a message from a sender the platform does not admit",
        1,
    );

    // A config reload that admits eve applies without reloading the plugin.
    t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\nflush_ms = 20\n\n\
         [platforms.closed]\nuser = \"eve\"\nallowed_users = \"eve\"\n\n\
         [platforms.listed]\nuser = \"bob\"\nallowed_users = [\"alice\", \"bob\"]\n\n\
         [platforms.envall]\n",
    );
    let out = server.cli(&["reload-config"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("changed closed"),
        "{out:?}"
    );
    assert_eq!(server.platform("closed")["generation"], 1);
    assert_eq!(server.send("closed", "c", "eve again").0, 200);
    let third = sse.next();
    assert_eq!(
        (third["platform"].as_str(), third["user"].as_str()),
        (Some("closed"), Some("eve"))
    );
    assert!(server.terminate().success());
    let mut inbound = journal_inbound(&t);
    inbound.sort();
    assert_eq!(inbound, ["closed/eve", "envall/loopback", "listed/bob"]);
}

#[test]
fn a_contradictory_allowlist_is_refused_naming_the_key() {
    let t = TestDir::new();
    install_inbound(&t, "lb");
    t.config("[platforms.lb]\nallowed_users = [\"a\"]\nallow_all_users = true\n");
    let out = t.run(&["serve"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow_all_users") && stderr.contains("contradicts allowed_users"),
        "{stderr}"
    );
}
