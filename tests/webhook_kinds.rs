//! Every kind through the webhook adapter: a target of `format = "json"` receives edits,
//! deletes and reactions in the gateway's JSON form; the chat formats refuse them by name; the
//! inbound listener takes any kind in the same form.

use hermes_host::loader::CallError;
use hermes_host::message::{MessageKind, Outbound};

use crate::{
    peers::free_port,
    util::{Recorder, TestDir},
    webhook::{Target, now_secs, post, signed_at, start, stop},
};

#[test]
fn webhook_json_targets_and_the_listener_carry_every_kind() {
    let t = TestDir::new();
    let server = Target::start(vec![
        ("/json", vec![(200, "")]),
        ("/slack", vec![(200, "")]),
    ]);
    let secret = "a-shared-secret-of-some-length";
    let port = free_port();
    let recorder = Recorder::new();
    let webhook = start(
        &t,
        serde_json::json!({
            "listen": format!("127.0.0.1:{port}"), "secret": secret,
            "targets": [
                { "chat": "bot", "url": format!("http://{}/json", server.addr), "format": "json" },
                { "chat": "ops", "url": format!("http://{}/slack", server.addr), "format": "slack" },
            ],
        }),
        &recorder,
    );
    let react = Outbound {
        kind: MessageKind::Reaction,
        target_id: Some("webhook-1".into()),
        emoji: Some("👍".into()),
        ..Outbound::new("bot", "")
    };
    let sent = webhook.send(&react).unwrap();
    let seen = server.seen.lock().unwrap().last().unwrap().body.clone();
    assert_eq!(
        seen,
        serde_json::json!({ "kind": "reaction", "message_id": sent.message_id, "text": "", "target_id": "webhook-1", "emoji": "👍" })
    );
    let e = webhook
        .send(&Outbound {
            chat_id: "ops".into(),
            ..react
        })
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Plugin { retryable: false, message, .. } if message.contains("cannot go to the Slack incoming webhook")),
        "{e}"
    );

    let body = r#"{"kind":"edit","target_id":"m1","text":"fixed","user":"ann"}"#;
    let (status, _) = post(
        &format!("127.0.0.1:{port}"),
        "/hooks/alerts",
        body,
        &signed_at(secret, now_secs(), "/hooks/alerts", body),
    );
    assert_eq!(status, 204);
    let got = &recorder.wait_for(1)[0];
    assert_eq!(
        (
            got.kind,
            got.target_id.as_deref(),
            got.text.as_str(),
            got.user.as_str()
        ),
        (MessageKind::Edit, Some("m1"), "fixed", "ann")
    );
    stop(webhook);
}
