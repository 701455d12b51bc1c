//! Messages beyond text through the XMPP adapter against a real Prosody: corrections,
//! retractions, reactions, replies and threads, from the gateway to a human and back.

use serde_json::json;

use crate::{
    util::{Sse, TestDir},
    xmpp::{prosody, start},
};

#[test]
fn xmpp_carries_corrections_reactions_replies_and_retractions_both_ways() {
    let t = TestDir::new();
    let (prosody, ca) = prosody(&t);
    let server = start(&t, &prosody, &ca);
    let mut sse = Sse::connect(&server.addr);
    let alice = "alice@localhost";

    let sent = server.post_ok(
        "/api/platforms/xmpp/send",
        json!({ "chat_id": alice, "text": "original" }),
    );
    let original = sent["message_id"].as_str().unwrap().to_owned();
    let (seen, _) = sse.until("original");
    assert_eq!(
        seen["message_id"],
        json!(original),
        "the id alice sees is the one the send answered"
    );

    // A correction (XEP-0308).
    server.post_ok(
        "/api/platforms/xmpp/edit",
        json!({ "chat_id": alice, "message_id": original, "text": "edited" }),
    );
    let seen = sse.next_kind("alice", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&json!(original), &json!("edited"))
    );

    // Reactions (XEP-0444): each change arrives as one event, though the whole set travels.
    let react = |emoji: &str, remove: bool| {
        server.post_ok(
            "/api/platforms/xmpp/react",
            json!({ "chat_id": alice, "message_id": original, "emoji": emoji, "remove": remove }),
        );
    };
    react("👍", false);
    let seen = sse.next_kind("alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["target_id"]),
        (&json!("👍"), &json!(original))
    );
    react("🎉", false);
    assert_eq!(sse.next_kind("alice", "reaction")["emoji"], "🎉");
    react("👍", true);
    let seen = sse.next_kind("alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["remove"]),
        (&json!("👍"), &json!(true))
    );

    // A reply (XEP-0461) in a thread.
    server.post_ok(
        "/api/platforms/xmpp/send",
        json!({ "chat_id": alice, "text": "re", "reply_to": original, "thread_id": "t1" }),
    );
    let (seen, _) = sse.until("re");
    assert_eq!(
        (&seen["reply_to"], &seen["thread_id"]),
        (&json!(original), &json!("t1"))
    );

    // Alice's correction reaches the gateway as an edit of hers.
    let hers = server.post_ok(
        "/api/platforms/alice/send",
        json!({ "chat_id": "hermes@localhost", "text": "tpyo" }),
    );
    server.post_ok(
        "/api/platforms/alice/edit",
        json!({ "chat_id": "hermes@localhost", "message_id": hers["message_id"], "text": "typo" }),
    );
    let seen = sse.next_kind("xmpp", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&hers["message_id"], &json!("typo"))
    );

    // A retraction (XEP-0424).
    server.post_ok(
        "/api/platforms/xmpp/delete",
        json!({ "chat_id": alice, "message_id": original }),
    );
    let seen = sse.next_kind("alice", "delete");
    assert_eq!(seen["target_id"], json!(original));

    // A file: put to Prosody's file share (XEP-0363), shared by its URL, which serves it.
    server.post_ok(
        "/api/platforms/xmpp/send",
        json!({
            "chat_id": alice, "text": "the log",
            "attachments": [{ "name": "build.log", "mime": "text/plain", "data_base64": "b2sK" }],
        }),
    );
    sse.until("the log");
    let seen = loop {
        let event = sse.next();
        if event["platform"] == "alice" && event.get("attachments").is_some() {
            break event;
        }
    };
    let url = seen["attachments"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.ends_with("/build.log"), "{url}");
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let (status, body) = crate::util::http(addr, "GET", path, None, &[]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}
