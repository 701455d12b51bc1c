//! Messages beyond text through the XMPP adapter against a real Prosody: corrections,
//! retractions, reactions, replies and threads, from the gateway to a human and back.

use serde_json::{Value, json};

use crate::{
    util::{Server, Sse, TestDir},
    xmpp::{prosody, start},
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
fn xmpp_carries_corrections_reactions_replies_and_retractions_both_ways() {
    let t = TestDir::new();
    let (prosody, ca) = prosody(&t);
    let server = start(&t, &prosody, &ca);
    let mut sse = Sse::connect(&server.addr);
    let alice = "alice@localhost";

    let sent = post(
        &server,
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
    post(
        &server,
        "/api/platforms/xmpp/edit",
        json!({ "chat_id": alice, "message_id": original, "text": "edited" }),
    );
    let seen = next_kind(&mut sse, "alice", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&json!(original), &json!("edited"))
    );

    // Reactions (XEP-0444): each change arrives as one event, though the whole set travels.
    let react = |emoji: &str, remove: bool| {
        post(
            &server,
            "/api/platforms/xmpp/react",
            json!({ "chat_id": alice, "message_id": original, "emoji": emoji, "remove": remove }),
        );
    };
    react("👍", false);
    let seen = next_kind(&mut sse, "alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["target_id"]),
        (&json!("👍"), &json!(original))
    );
    react("🎉", false);
    assert_eq!(next_kind(&mut sse, "alice", "reaction")["emoji"], "🎉");
    react("👍", true);
    let seen = next_kind(&mut sse, "alice", "reaction");
    assert_eq!(
        (&seen["emoji"], &seen["remove"]),
        (&json!("👍"), &json!(true))
    );

    // A reply (XEP-0461) in a thread.
    post(
        &server,
        "/api/platforms/xmpp/send",
        json!({ "chat_id": alice, "text": "re", "reply_to": original, "thread_id": "t1" }),
    );
    let (seen, _) = sse.until("re");
    assert_eq!(
        (&seen["reply_to"], &seen["thread_id"]),
        (&json!(original), &json!("t1"))
    );

    // Alice's correction reaches the gateway as an edit of hers.
    let hers = post(
        &server,
        "/api/platforms/alice/send",
        json!({ "chat_id": "hermes@localhost", "text": "tpyo" }),
    );
    post(
        &server,
        "/api/platforms/alice/edit",
        json!({ "chat_id": "hermes@localhost", "message_id": hers["message_id"], "text": "typo" }),
    );
    let seen = next_kind(&mut sse, "xmpp", "edit");
    assert_eq!(
        (&seen["target_id"], &seen["text"]),
        (&hers["message_id"], &json!("typo"))
    );

    // A retraction (XEP-0424).
    post(
        &server,
        "/api/platforms/xmpp/delete",
        json!({ "chat_id": alice, "message_id": original }),
    );
    let seen = next_kind(&mut sse, "alice", "delete");
    assert_eq!(seen["target_id"], json!(original));
}
