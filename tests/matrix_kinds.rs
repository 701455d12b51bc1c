//! Messages beyond text through the Matrix adapter against a real Synapse: edits, reactions,
//! replies, threads and redactions, from the gateway to a human and back, checked on the
//! homeserver's own events.

use serde_json::json;

use crate::{
    matrix::{as_alice, config, make_room, room_path, synapse, wait_synced},
    util::{self, Server, Sse, TestDir},
};

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

    let sent = server.post_ok(
        "/api/platforms/matrix/send",
        json!({ "chat_id": room, "text": "original" }),
    );
    let original = sent["message_id"].as_str().unwrap().to_owned();
    sse.until("original");

    // The gateway's edit reaches alice as an edit: on the homeserver an m.replace.
    let edit = server.post_ok(
        "/api/platforms/matrix/edit",
        json!({ "chat_id": room, "message_id": original, "text": "edited" }),
    );
    let seen = sse.next_kind("alice", "edit");
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
    let reaction = server.post_ok(
        "/api/platforms/matrix/react",
        json!({ "chat_id": room, "message_id": original, "emoji": "👍" }),
    );
    let seen = sse.next_kind("alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["target_id"]),
        (&json!("👍"), &json!(original))
    );
    server.post_ok(
        "/api/platforms/matrix/react",
        json!({ "chat_id": room, "message_id": original, "emoji": "👍", "remove": true }),
    );
    let seen = sse.next_kind("alice", "delete");
    assert_eq!(seen["target_id"], reaction["message_id"]);

    // A reply in a thread.
    server.post_ok("/api/platforms/matrix/send",
        json!({ "chat_id": room, "text": "in thread", "thread_id": original, "reply_to": original }),
    );
    let (seen, _) = sse.until("in thread");
    assert_eq!(
        (&seen["thread_id"], &seen["reply_to"]),
        (&json!(original), &json!(original))
    );

    // Alice's own edit reaches the gateway as kind `edit` with its target.
    let hers = server.post_ok(
        "/api/platforms/alice/send",
        json!({ "chat_id": room, "text": "tpyo" }),
    );
    server.post_ok(
        "/api/platforms/alice/edit",
        json!({ "chat_id": room, "message_id": hers["message_id"], "text": "typo" }),
    );
    let seen = sse.next_kind("matrix", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&hers["message_id"], &json!("typo"))
    );

    // A delete is a redaction.
    server.post_ok(
        "/api/platforms/matrix/delete",
        json!({ "chat_id": room, "message_id": original }),
    );
    let seen = sse.next_kind("alice", "delete");
    assert_eq!(seen["target_id"], json!(original));

    // A file: uploaded to the media repository; alice gets a URL that serves the same bytes.
    server.post_ok(
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
