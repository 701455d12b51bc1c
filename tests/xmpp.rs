//! The XMPP adapter against a real Prosody: two accounts of the same server talking through the
//! gateway (each account one platform), 1:1 chats and a room, a server restart mid-run, and
//! config errors.

use std::{path::Path, time::Duration};

use hermes_host::loader::Library;

use crate::{
    peers::Prosody,
    util::{self, Server, Sse, TestDir},
};

/// `hermes` as platform `xmpp` and `alice` as platform `alice`, both in the room `ops`.
pub(crate) fn start(t: &TestDir, prosody: &Prosody, ca: &Path) -> Server {
    t.install("xmpp", "hermes_xmpp", 1);
    t.install("alice", "hermes_xmpp", 1);
    util::shipped_capabilities(t, "xmpp", &["xmpp", "alice"]);
    serve(t, prosody, ca, &|_| String::new())
}

/// Serves the two installed platforms with `keys(id)` added to each table.
pub(crate) fn serve(
    t: &TestDir,
    prosody: &Prosody,
    ca: &Path,
    keys: &dyn Fn(&str) -> String,
) -> Server {
    let platform = |id: &str, user: &str, password: &str| {
        format!(
            "[platforms.{id}]\n{}jid = \"{user}@localhost\"\npassword = \"{password}\"\nserver = \"{}\"\ntls_ca_file = \"{}\"\nrooms = [\"ops@conference.localhost\"]\nupload_service = \"upload.localhost\"\n",
            keys(id),
            prosody.addr(),
            ca.display()
        )
    };
    let server = Server::start(
        t,
        &format!(
            "{}\n{}",
            platform("xmpp", "hermes", "secret-h"),
            platform("alice", "alice", "secret-a")
        ),
    );
    for id in ["xmpp", "alice"] {
        server.wait_platform(id, |p| p["health"]["status"] == "healthy");
    }
    server
}

pub(crate) fn prosody(t: &TestDir) -> (Prosody, std::path::PathBuf) {
    let dir = t.path().join("prosody");
    let server = Prosody::start(&dir, &[("hermes", "secret-h"), ("alice", "secret-a")]);
    (server, dir.join("ca.pem"))
}

#[test]
fn xmpp_talks_both_ways_in_chats_and_a_room_against_prosody() {
    let t = TestDir::new();
    let (prosody, ca) = prosody(&t);
    let server = start(&t, &prosody, &ca);
    let mut sse = Sse::connect(&server.addr);

    // 1:1, both ways.
    let (status, body) = server.send("xmpp", "alice@localhost", "hello alice <&>");
    assert_eq!(status, 200, "{body}");
    let (event, _) = sse.until("hello alice <&>");
    assert_eq!(event["platform"], "alice");
    assert_eq!(event["chat_id"], "hermes@localhost");
    assert_eq!(event["user"], "hermes@localhost");
    assert_eq!(server.send("alice", "hermes@localhost", "hi hermes").0, 200);
    let (event, _) = sse.until("hi hermes");
    assert_eq!(event["platform"], "xmpp");
    assert_eq!(event["chat_id"], "alice@localhost");

    // The room: each hears the other under its nick, never its own reflection.
    assert_eq!(
        server
            .send("alice", "ops@conference.localhost", "to the room")
            .0,
        200
    );
    let (event, _) = sse.until("to the room");
    assert_eq!(event["platform"], "xmpp");
    assert_eq!(event["chat_id"], "ops@conference.localhost");
    assert_eq!(event["user"], "alice");
    assert_eq!(
        server
            .send("xmpp", "ops@conference.localhost", "hermes here")
            .0,
        200
    );
    let (event, before) = sse.until("hermes here");
    assert_eq!(event["platform"], "alice");
    assert_eq!(event["user"], "hermes");
    // Had alice's own message come back to her, it would have arrived before this one.
    assert!(
        before.iter().all(|e| e["text"] != "to the room"),
        "{before:?}"
    );
    // Neither does hermes get its own room message.
    assert_eq!(server.send("alice", "hermes@localhost", "marker").0, 200);
    let (_, before) = sse.until("marker");
    assert!(
        before.iter().all(|e| e["text"] != "hermes here"),
        "{before:?}"
    );

    let (status, body) = server.send("xmpp", "not a jid", "x");
    assert_eq!(status, 502, "{body}");

    // A reload joins the room again without its history: nothing said before comes again.
    let out = server.cli(&["plugin", "reload", "xmpp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_platform("xmpp", |p| {
        p["generation"] == 2 && p["health"]["status"] == "healthy"
    });
    let (status, _) = server.send("alice", "ops@conference.localhost", "after the reload");
    assert_eq!(status, 200);
    let (event, before) = sse.until("after the reload");
    assert_eq!(event["platform"], "xmpp");
    assert!(
        before.iter().all(|e| e["text"] != "to the room"),
        "{before:?}"
    );
}

#[test]
fn xmpp_reconnects_after_the_server_restarts_and_sends_in_the_gap_fail_retryable() {
    let t = TestDir::new();
    let (mut prosody, ca) = prosody(&t);
    let server = start(&t, &prosody, &ca);
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(server.send("xmpp", "alice@localhost", "before").0, 200);
    sse.until("before");

    prosody.kill();
    server.wait_platform("xmpp", |p| p["health"]["status"] == "unhealthy");
    let (status, body) = server.send("xmpp", "alice@localhost", "in the gap");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retryable"], true, "{body}");

    prosody.restart();
    for id in ["xmpp", "alice"] {
        server.wait_platform(id, |p| {
            p["health"]["status"] == "healthy"
                && p["health"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("(connection 2)"))
        });
    }
    assert_eq!(server.send("xmpp", "alice@localhost", "after").0, 200);
    let (event, before) = sse.until("after");
    assert_eq!(event["platform"], "alice");
    // Nothing from before the restart is delivered again.
    assert!(before.iter().all(|e| e["text"] != "before"), "{before:?}");
}

#[test]
fn xmpp_config_errors_name_the_key() {
    let t = TestDir::new();
    let library = Library::open(&util::lib("hermes_xmpp"), &t.shadow()).unwrap();
    let timeout = Duration::from_secs(5);
    for (config, key) in [
        (r#"{"password":"x"}"#, "missing field `jid`"),
        (r#"{"jid":"nobody"}"#, "`jid`"),
        (r#"{"jid":"a@example.org","tls":"none"}"#, "`tls`"),
        (r#"{"jid":"a@localhost","server":"localhost"}"#, "`server`"),
        (r#"{"jid":"a@localhost","rooms":["ops"]}"#, "`rooms`"),
        (
            r#"{"jid":"a@localhost","tls":"sometimes"}"#,
            "unknown variant `sometimes`",
        ),
    ] {
        let e = library.validate_config(config, timeout).unwrap_err();
        assert!(e.to_string().contains(key), "{config}: {e}");
    }
    assert!(library.unload().clean());
}
