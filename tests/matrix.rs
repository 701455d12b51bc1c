//! The Matrix adapter against a real Synapse: two accounts talking through the gateway (each
//! account one platform) in a room, a route to XMPP, the homeserver restarted mid-run, no
//! history replayed after a reload or a restart, and config errors.

use std::{path::Path, time::Duration};

use hermes_host::loader::Library;
use serde_json::{Value, json};

use crate::{
    peers::Synapse,
    util::{self, Server, Sse, TestDir},
};

pub(crate) const ROOM: &str = "#ops:localhost";

pub(crate) fn synapse(t: &TestDir) -> Synapse {
    Synapse::start(
        &t.path().join("synapse"),
        &[("hermes", "secret-h"), ("alice", "secret-a")],
    )
}

/// Logs `user` in over plain HTTP: its access token.
pub(crate) fn token(synapse: &Synapse, user: &str, password: &str) -> String {
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    let (status, answer) = util::http(
        &synapse.addr(),
        "POST",
        "/_matrix/client/v3/login",
        Some(&body.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str::<Value>(&answer).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A call to the homeserver as alice, straight (not through the gateway): its JSON answer.
pub(crate) fn as_alice(synapse: &Synapse, method: &str, path: &str, body: Option<Value>) -> Value {
    let alice = token(synapse, "alice", "secret-a");
    let (status, answer) = util::http(
        &synapse.addr(),
        method,
        &format!("/_matrix/client/v3{path}"),
        body.map(|b| b.to_string()).as_deref(),
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!(status, 200, "{method} {path}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

/// `/rooms/<room>` with the room id encoded.
pub(crate) fn room_path(room: &str) -> String {
    format!("/rooms/{}", room.replace('!', "%21").replace(':', "%3A"))
}

/// Alice says `text` in `room` under transaction id `txn`, straight to the homeserver.
fn alice_says(synapse: &Synapse, room: &str, txn: &str, text: &str) {
    as_alice(
        synapse,
        "PUT",
        &format!("{}/send/m.room.message/{txn}", room_path(room)),
        Some(json!({ "msgtype": "m.text", "body": text })),
    );
}

/// Alice makes the public room `#ops:localhost`.
pub(crate) fn make_room(synapse: &Synapse) -> String {
    let body = json!({ "preset": "public_chat", "room_alias_name": "ops", "name": "ops" });
    as_alice(synapse, "POST", "/createRoom", Some(body))["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn platform(
    id: &str,
    synapse: &Synapse,
    user: &str,
    password: &str,
    store: &Path,
) -> String {
    format!(
        "[platforms.{id}]\nhomeserver = \"{}\"\nuser = \"{user}\"\npassword = \"{password}\"\nrooms = [\"{ROOM}\"]\nstore_path = \"{}\"\nsync_timeout_ms = 1000\n",
        synapse.url(),
        store.display()
    )
}

/// `hermes` as platform `matrix`, `alice` as platform `alice`, both in the room.
pub(crate) fn config(t: &TestDir, synapse: &Synapse) -> String {
    t.install("matrix", "hermes_matrix", 1);
    t.install("alice", "hermes_matrix", 1);
    format!(
        "{}\n{}",
        platform(
            "matrix",
            synapse,
            "hermes",
            "secret-h",
            &t.path().join("matrix.store")
        ),
        platform(
            "alice",
            synapse,
            "alice",
            "secret-a",
            &t.path().join("alice.store")
        )
    )
}

pub(crate) fn wait_synced(server: &Server) {
    for id in ["matrix", "alice"] {
        server.wait_platform(id, |p| p["health"]["status"] == "healthy");
    }
}

#[test]
fn matrix_talks_both_ways_in_a_room_and_survives_a_homeserver_restart() {
    let t = TestDir::new();
    let mut synapse = synapse(&t);
    let room = make_room(&synapse);
    let server = Server::start(&t, &config(&t, &synapse));
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);

    let (status, body) = server.send("matrix", ROOM, "hello alice");
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message_id"].as_str().unwrap().starts_with('$'),
        "{body}"
    );
    let (event, _) = sse.until("hello alice");
    assert_eq!(event["platform"], "alice");
    assert_eq!(event["chat_id"], room.as_str());
    assert_eq!(event["user"], "@hermes:localhost");
    let (status, body) = server.send("alice", &room, "hi hermes");
    assert_eq!(status, 200, "{body}");
    let (event, before) = sse.until("hi hermes");
    assert_eq!(event["platform"], "matrix");
    assert_eq!(event["user"], "@alice:localhost");
    // Its own message never came back to hermes.
    assert!(
        before
            .iter()
            .all(|e| !(e["platform"] == "matrix" && e["text"] == "hello alice")),
        "{before:?}"
    );

    // An invite to a private room is accepted (`auto_join`), and what is said there arrives.
    let body = json!({ "preset": "private_chat", "invite": ["@hermes:localhost"] });
    let private = as_alice(&synapse, "POST", "/createRoom", Some(body))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Hermes joins: the homeserver's member list says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members = as_alice(
            &synapse,
            "GET",
            &format!("{}/joined_members", room_path(&private)),
            None,
        );
        if members["joined"].get("@hermes:localhost").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hermes never joined: {members}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.send("alice", &private, "just us").0, 200);
    let (event, _) = sse.until("just us");
    assert_eq!(event["platform"], "matrix");
    assert_eq!(event["chat_id"], private.as_str());

    // The homeserver goes away: unhealthy, sends fail at once and say to retry.
    synapse.kill();
    server.wait_platform("matrix", |p| p["health"]["status"] == "unhealthy");
    let (status, body) = server.send("matrix", ROOM, "in the gap");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    synapse.restart();
    wait_synced(&server);
    assert_eq!(server.send("matrix", ROOM, "after").0, 200);
    let (event, before) = sse.until("after");
    assert_eq!(event["platform"], "alice");
    // Nothing from before the restart came again.
    assert!(
        before
            .iter()
            .all(|e| e["text"] != "hello alice" && e["text"] != "hi hermes"),
        "{before:?}"
    );
}

#[test]
fn matrix_replays_no_history_after_a_reload_or_a_restart_and_misses_nothing_in_between() {
    let t = TestDir::new();
    let synapse = synapse(&t);
    let room = make_room(&synapse);
    let config = config(&t, &synapse);
    let mut server = Server::start(&t, &config);
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(server.send("alice", &room, "one").0, 200);
    sse.until("one");

    // A reload: the new generation takes the old one's session and position.
    let out = server.cli(&["plugin", "reload", "matrix"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_platform("matrix", |p| {
        p["generation"] == 2 && p["health"]["status"] == "healthy"
    });
    assert_eq!(server.send("alice", &room, "two").0, 200);
    let (event, before) = sse.until("two");
    assert_eq!(event["platform"], "matrix");
    assert!(before.iter().all(|e| e["text"] != "one"), "{before:?}");

    // A restart: the position comes from the store. What alice says while the gateway is down
    // arrives after it is back; what came before does not come again.
    assert!(server.terminate().success());
    alice_says(&synapse, &room, "while-down", "while you were away");
    let server = Server::start(&t, &config);
    let mut sse = Sse::connect(&server.addr);
    let (event, before) = sse.until("while you were away");
    assert_eq!(event["platform"], "matrix");
    assert!(
        before
            .iter()
            .all(|e| e["text"] != "one" && e["text"] != "two"),
        "{before:?}"
    );
}

#[test]
fn matrix_config_errors_name_the_key() {
    let t = TestDir::new();
    let library = Library::open(&util::lib("hermes_matrix"), &t.shadow()).unwrap();
    let timeout = Duration::from_secs(5);
    for (config, key) in [
        (
            r#"{"user":"a","password":"x"}"#,
            "missing field `homeserver`",
        ),
        (
            r#"{"homeserver":"localhost:8008","user":"a"}"#,
            "`homeserver`",
        ),
        (r#"{"homeserver":"http://h"}"#, "`user`"),
        (
            r#"{"homeserver":"http://h","user":"a","rooms":["ops"]}"#,
            "`rooms`",
        ),
        (
            r#"{"homeserver":"http://h","user":"a","sync_timeout_ms":0}"#,
            "`sync_timeout_ms`",
        ),
        (
            r#"{"homeserver":"http://h","user":"a","colour":"red"}"#,
            "unknown field `colour`",
        ),
    ] {
        let e = library.validate_config(config, timeout).unwrap_err();
        assert!(e.to_string().contains(key), "{config}: {e}");
    }
    assert!(library.unload().clean());
}

#[test]
fn a_route_carries_a_matrix_room_to_an_xmpp_chat() {
    let t = TestDir::new();
    let synapse = synapse(&t);
    let room = make_room(&synapse);
    let prosody_dir = t.path().join("prosody");
    let prosody = crate::peers::Prosody::start(
        &prosody_dir,
        &[("hermes", "secret-h"), ("alice", "secret-a")],
    );
    t.install("matrix", "hermes_matrix", 1);
    t.install("xmpp", "hermes_xmpp", 1);
    t.install("xalice", "hermes_xmpp", 1);
    let xmpp = |id: &str, user: &str, password: &str| {
        format!(
            "[platforms.{id}]\njid = \"{user}@localhost\"\npassword = \"{password}\"\nserver = \"{}\"\ntls_ca_file = \"{}\"\n",
            prosody.addr(),
            prosody_dir.join("ca.pem").display()
        )
    };
    let server = Server::start(
        &t,
        &format!(
            "{}\n{}\n{}\n[[routes]]\nfrom = {{ platform = \"matrix\", chat = \"{room}\" }}\nto = [{{ platform = \"xmpp\", chat = \"alice@localhost\" }}]\n",
            platform(
                "matrix",
                &synapse,
                "hermes",
                "secret-h",
                &t.path().join("m.store")
            ),
            xmpp("xmpp", "hermes", "secret-h"),
            xmpp("xalice", "alice", "secret-a"),
        ),
    );
    for id in ["matrix", "xmpp", "xalice"] {
        server.wait_platform(id, |p| p["health"]["status"] == "healthy");
    }
    let mut sse = Sse::connect(&server.addr);
    // Alice says something in the Matrix room (straight to the homeserver)...
    alice_says(&synapse, &room, "route-1", "deploy done");
    // ... and it reaches alice's XMPP account from hermes, naming its author.
    let (event, _) = sse.until("<@alice:localhost> deploy done");
    assert_eq!(event["platform"], "xalice");
    assert_eq!(event["chat_id"], "hermes@localhost");
}

#[test]
fn matrix_waits_out_the_rate_limit_and_posts_each_message_once() {
    let t = TestDir::new();
    // Two messages at once, then one a second.
    let synapse = Synapse::start_limited(
        &t.path().join("synapse"),
        &[("hermes", "secret-h"), ("alice", "secret-a")],
        "{per_second: 1, burst_count: 2}",
    );
    make_room(&synapse);
    let server = Server::start(&t, &config(&t, &synapse));
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);
    // Each send past the burst is answered M_LIMIT_EXCEEDED with a retry_after_ms; the
    // adapter waits it out (within its send budget) and retries under the same transaction id.
    for n in 1..=5 {
        let (status, body) = server.send("matrix", ROOM, &format!("m{n}"));
        assert_eq!(status, 200, "m{n}: {body}");
    }
    let (_, before) = sse.until("m5");
    let heard: Vec<&str> = before
        .iter()
        .filter(|e| e["platform"] == "alice")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(heard, ["m1", "m2", "m3", "m4"], "each once, in order");
    // The limit was met, and waited out as the homeserver said.
    let log = server.log();
    assert!(
        log.contains("M_LIMIT_EXCEEDED") && log.contains("matrix: send retried"),
        "{log}"
    );
}
