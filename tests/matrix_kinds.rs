//! Messages beyond text through the Matrix adapter against a real Synapse: edits, reactions,
//! replies, threads and redactions, from the gateway to a human and back, checked on the
//! homeserver's own events.

use serde_json::{Value, json};

use crate::{
    matrix::{as_alice, config, make_room, room_path, synapse, wait_synced},
    util::{self, Server, Sse, TestDir},
};

fn post(server: &Server, path: &str, body: Value) -> Value {
    let (status, answer) = server.post(path, &body.to_string());
    assert_eq!(status, 200, "{path}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

/// The next SSE event on `platform` of `kind`.
fn next_kind(sse: &mut Sse, platform: &str, kind: &str) -> Value {
    loop {
        let event = sse.next();
        if event["platform"] == platform && event["kind"] == kind {
            return event;
        }
    }
}

#[test]
fn matrix_carries_edits_reactions_replies_threads_and_redactions_both_ways() {
    let t = TestDir::new();
    let synapse = synapse(&t);
    let room = make_room(&synapse);
    let config = config(&t, &synapse);
    util::shipped_capabilities(&t, "matrix", &["matrix", "alice"]);
    let server = Server::start(&t, &config);
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);

    let sent = post(
        &server,
        "/api/platforms/matrix/send",
        json!({ "chat_id": room, "text": "original" }),
    );
    let original = sent["message_id"].as_str().unwrap().to_owned();
    sse.until("original");

    // The gateway's edit reaches alice as an edit: on the homeserver an m.replace.
    let edit = post(
        &server,
        "/api/platforms/matrix/edit",
        json!({ "chat_id": room, "message_id": original, "text": "edited" }),
    );
    let seen = next_kind(&mut sse, "alice", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&json!(original), &json!("edited"))
    );
    let raw = as_alice(
        &synapse,
        "GET",
        &format!(
            "{}/event/{}",
            room_path(&room),
            edit["message_id"].as_str().unwrap().replace('$', "%24")
        ),
        None,
    );
    assert_eq!(
        raw["content"]["m.relates_to"]["rel_type"], "m.replace",
        "{raw}"
    );
    assert_eq!(raw["content"]["m.new_content"]["body"], "edited", "{raw}");

    // A reaction, and taking it back (a redaction of the reaction).
    let reaction = post(
        &server,
        "/api/platforms/matrix/react",
        json!({ "chat_id": room, "message_id": original, "emoji": "👍" }),
    );
    let seen = next_kind(&mut sse, "alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["target_id"]),
        (&json!("👍"), &json!(original))
    );
    post(
        &server,
        "/api/platforms/matrix/react",
        json!({ "chat_id": room, "message_id": original, "emoji": "👍", "remove": true }),
    );
    let seen = next_kind(&mut sse, "alice", "delete");
    assert_eq!(seen["target_id"], reaction["message_id"]);

    // A reply in a thread.
    post(
        &server,
        "/api/platforms/matrix/send",
        json!({ "chat_id": room, "text": "in thread", "thread_id": original, "reply_to": original }),
    );
    let (seen, _) = sse.until("in thread");
    assert_eq!(
        (&seen["thread_id"], &seen["reply_to"]),
        (&json!(original), &json!(original))
    );

    // Alice's own edit reaches the gateway as kind `edit` with its target.
    let hers = post(
        &server,
        "/api/platforms/alice/send",
        json!({ "chat_id": room, "text": "tpyo" }),
    );
    post(
        &server,
        "/api/platforms/alice/edit",
        json!({ "chat_id": room, "message_id": hers["message_id"], "text": "typo" }),
    );
    let seen = next_kind(&mut sse, "matrix", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&hers["message_id"], &json!("typo"))
    );

    // A delete is a redaction.
    post(
        &server,
        "/api/platforms/matrix/delete",
        json!({ "chat_id": room, "message_id": original }),
    );
    let seen = next_kind(&mut sse, "alice", "delete");
    assert_eq!(seen["target_id"], json!(original));

    // A file: uploaded to the media repository; alice gets a URL that serves the same bytes.
    post(
        &server,
        "/api/platforms/matrix/send",
        json!({
            "chat_id": room, "text": "the log",
            "attachments": [{ "name": "build.log", "mime": "text/plain", "data_base64": "b2sK" }],
        }),
    );
    let seen = loop {
        let event = sse.next();
        if event["platform"] == "alice" && event.get("attachments").is_some() {
            break event;
        }
    };
    let file = &seen["attachments"][0];
    assert_eq!(
        (&file["name"], &file["mime"], &file["size"]),
        (&json!("build.log"), &json!("text/plain"), &json!(3))
    );
    let url = file["url"].as_str().unwrap();
    let path = &url[url.find("/_matrix").unwrap()..];
    let alice = crate::matrix::token(&synapse, "alice", "secret-a");
    let (status, bytes) = util::http(
        &synapse.addr(),
        "GET",
        path,
        None,
        &[("Authorization", &format!("Bearer {alice}"))],
    );
    assert_eq!((status, bytes.as_str()), (200, "ok\n"));
}
