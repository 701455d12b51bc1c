//! Messages beyond text through the real binary and the loopback plugin (which echoes every
//! kind as itself): edits, deletes, reactions, replies, threads and attachments over HTTP and
//! SSE; what a platform lacks refused with 422 or sent as text; long texts split in order.

use crate::util::{Server, Sse, TestDir};

/// Installs the loopback library as `id` with `capabilities` (TOML lines) in its manifest.
fn install(t: &TestDir, id: &str, capabilities: &str) {
    let dir = t.install(id, "hermes_loopback", 1);
    if !capabilities.is_empty() {
        let manifest = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            format!("{text}\n[capabilities]\n{capabilities}\n"),
        )
        .unwrap();
    }
}

fn post(server: &Server, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = server.post(path, &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or_default())
}

const ALL: &str = "edit = true\ndelete = true\nreactions = true\nreplies = true\nthreads = true\nattachments = { max_bytes = 1024, mime = [\"text/*\"] }";

#[test]
fn every_kind_goes_out_and_comes_back_as_itself() {
    let t = TestDir::new();
    install(&t, "lb", ALL);
    let server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(server.platform("lb")["capabilities"]["edit"], true);

    let (status, sent) = post(
        &server,
        "/api/platforms/lb/send",
        serde_json::json!({
            "chat_id": "room", "text": "with a file", "reply_to": "m0", "thread_id": "t1",
            "attachments": [{ "name": "a.txt", "mime": "text/plain", "data_base64": "aGVsbG8=" }],
        }),
    );
    assert_eq!(status, 200, "{sent}");
    let id = sent["message_id"].as_str().unwrap().to_owned();
    let echo = sse.next();
    assert_eq!(echo["kind"], "message");
    assert_eq!(
        (&echo["reply_to"], &echo["thread_id"]),
        (&"m0".into(), &"t1".into())
    );
    // Name, type and size go out on SSE; the bytes do not.
    assert_eq!(
        echo["attachments"],
        serde_json::json!([{ "name": "a.txt", "mime": "text/plain", "size": 5 }])
    );

    let chat = |extra: serde_json::Value| {
        let mut body = serde_json::json!({ "chat_id": "room", "message_id": id });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, body) = post(
        &server,
        "/api/platforms/lb/edit",
        chat(serde_json::json!({ "text": "fixed" })),
    );
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(
        (&echo["kind"], &echo["target_id"], &echo["text"]),
        (&"edit".into(), &id.clone().into(), &"fixed".into())
    );

    let (status, body) = post(
        &server,
        "/api/platforms/lb/react",
        chat(serde_json::json!({ "emoji": "👍" })),
    );
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(
        (&echo["kind"], &echo["emoji"]),
        (&"reaction".into(), &"👍".into())
    );
    assert!(echo.get("remove").is_none(), "{echo}");
    post(
        &server,
        "/api/platforms/lb/react",
        chat(serde_json::json!({ "emoji": "👍", "remove": true })),
    );
    assert_eq!(sse.next()["remove"], true);

    let (status, body) = post(
        &server,
        "/api/platforms/lb/delete",
        chat(serde_json::json!({})),
    );
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(
        (&echo["kind"], &echo["target_id"]),
        (&"delete".into(), &id.into())
    );

    // An idempotency key reaches the plugin (the loopback echoes it in the metadata).
    let (status, _) = server.post_with(
        "/api/platforms/lb/send",
        r#"{"chat_id":"room","text":"keyed"}"#,
        &[("Idempotency-Key", "order-42")],
    );
    assert_eq!(status, 200);
    assert_eq!(sse.next()["metadata"]["idempotency_key"], "order-42");
    let (status, _) = server.post_with(
        "/api/platforms/lb/send",
        r#"{"chat_id":"room","text":"keyed"}"#,
        &[("Idempotency-Key", &"k".repeat(256))],
    );
    assert_eq!(status, 422);

    // Bad bodies name the field.
    let (status, e) = post(
        &server,
        "/api/platforms/lb/react",
        serde_json::json!({ "chat_id": "room", "message_id": "x" }),
    );
    assert_eq!(status, 422);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("invalid react body: missing field `emoji`"),
        "{e}"
    );
    let (status, e) = post(
        &server,
        "/api/platforms/lb/send",
        serde_json::json!({
            "chat_id": "room", "text": "x", "attachments": [{ "name": "a", "mime": "text/plain" }]
        }),
    );
    assert_eq!(status, 422);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("give `data_base64` or `url`"),
        "{e}"
    );
    let (status, e) = post(
        &server,
        "/api/platforms/lb/send",
        serde_json::json!({
            "chat_id": "room", "text": "x", "attachments": [{ "name": "a.png", "mime": "image/png", "url": "https://example.invalid/a.png" }]
        }),
    );
    assert_eq!(status, 422);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("takes attachments of type text/*; `a.png` is image/png"),
        "{e}"
    );
}

#[test]
fn what_a_platform_lacks_is_refused_naming_it_or_sent_as_text() {
    let t = TestDir::new();
    install(&t, "plain", "");
    install(&t, "fb", "");
    let server = Server::start(
        &t,
        "[platforms.plain]\n\n[platforms.fb]\nfallback = \"text\"\n",
    );
    let mut sse = Sse::connect(&server.addr);
    for (path, body, lacks) in [
        (
            "edit",
            serde_json::json!({ "chat_id": "c", "message_id": "m", "text": "t" }),
            "cannot edit messages",
        ),
        (
            "delete",
            serde_json::json!({ "chat_id": "c", "message_id": "m" }),
            "cannot delete messages",
        ),
        (
            "react",
            serde_json::json!({ "chat_id": "c", "message_id": "m", "emoji": "👍" }),
            "cannot carry reactions",
        ),
        (
            "send",
            serde_json::json!({ "chat_id": "c", "text": "t", "thread_id": "x" }),
            "has no threads",
        ),
        (
            "send",
            serde_json::json!({ "chat_id": "c", "text": "t", "attachments": [{ "name": "f", "mime": "text/plain", "url": "https://example.invalid/f" }] }),
            "takes no attachments",
        ),
    ] {
        let (status, e) = post(&server, &format!("/api/platforms/plain/{path}"), body);
        assert_eq!(status, 422, "{path}: {e}");
        let text = e["error"].as_str().unwrap();
        assert!(
            text.contains(&format!("platform `plain` {lacks}"))
                && text.contains("fallback = \"text\""),
            "{text}"
        );
        assert_eq!(e["retryable"], false);
    }

    // With the text fallback: a plain message saying it.
    let (status, body) = post(
        &server,
        "/api/platforms/fb/react",
        serde_json::json!({ "chat_id": "c", "message_id": "m", "emoji": "👍" }),
    );
    assert_eq!(status, 200, "{body}");
    let echo = sse.next();
    assert_eq!(
        (&echo["kind"], &echo["text"]),
        (&"message".into(), &"reacted 👍".into())
    );
    post(
        &server,
        "/api/platforms/fb/edit",
        serde_json::json!({ "chat_id": "c", "message_id": "m", "text": "new" }),
    );
    assert_eq!(sse.next()["text"], "Correction: new");
    post(
        &server,
        "/api/platforms/fb/send",
        serde_json::json!({
            "chat_id": "c", "text": "see", "thread_id": "x",
            "attachments": [{ "name": "f.txt", "mime": "text/plain", "url": "https://example.invalid/f.txt" }]
        }),
    );
    let echo = sse.next();
    assert_eq!(echo["text"], "see\n[f.txt: https://example.invalid/f.txt]");
    assert!(
        echo.get("thread_id").is_none() && echo.get("attachments").is_none(),
        "{echo}"
    );
}

#[test]
fn a_long_text_is_split_under_max_text_len_in_order() {
    let t = TestDir::new();
    install(&t, "short", "max_text_len = 20");
    let server = Server::start(&t, "[platforms.short]\n");
    let mut sse = Sse::connect(&server.addr);
    let words: Vec<String> = (1..=30).map(|i| format!("w{i:02}")).collect();
    let text = words.join(" ");
    let (status, sent) = post(
        &server,
        "/api/platforms/short/send",
        serde_json::json!({ "chat_id": "c", "text": text, "reply_to": "r" }),
    );
    assert_eq!(status, 200, "{sent}");
    let parts: Vec<String> = serde_json::from_value(sent["parts"].clone()).unwrap();
    assert!(parts.len() >= 6, "{sent}");
    assert_eq!(sent["message_id"], parts[0]);
    let mut got = Vec::new();
    for (i, id) in parts.iter().enumerate() {
        let echo = sse.next();
        assert_eq!(&echo["message_id"], id, "in order");
        let part = echo["text"].as_str().unwrap();
        assert!(part.len() <= 20, "{part:?}");
        // The reply goes with the first part only.
        assert_eq!(echo.get("reply_to").is_some(), i == 0, "{echo}");
        got.extend(part.split(' ').map(str::to_owned));
    }
    assert_eq!(got, words);
    // A short text is one message, without `parts`.
    let (_, sent) = post(
        &server,
        "/api/platforms/short/send",
        serde_json::json!({ "chat_id": "c", "text": "hi" }),
    );
    assert!(sent.get("parts").is_none(), "{sent}");
}

/// The next SSE event from `platform`.
fn next_from(sse: &mut Sse, platform: &str) -> serde_json::Value {
    loop {
        let event = sse.next();
        if event["platform"] == platform {
            return event;
        }
    }
}

#[test]
fn routes_carry_edits_reactions_and_replies_to_the_copies_across_a_restart() {
    let t = TestDir::new();
    install(&t, "src", ALL);
    install(&t, "dst", ALL);
    let routes = "[platforms.src]\n\n[platforms.dst]\nuser = \"copy\"\n\n[[routes]]\nfrom = { platform = \"src\", chat = \"a\" }\nto = [{ platform = \"dst\", chat = \"b\" }]\n";
    let mut server = Server::start(&t, routes);
    let mut sse = Sse::connect(&server.addr);
    // Two messages on the source, each routed: the copies get ids of their own.
    for text in ["first", "second"] {
        post(
            &server,
            "/api/platforms/src/send",
            serde_json::json!({ "chat_id": "a", "text": text }),
        );
    }
    let copy1 = next_from(&mut sse, "dst");
    let copy2 = next_from(&mut sse, "dst");
    assert_eq!(
        (&copy1["text"], &copy2["text"]),
        (&"first".into(), &"second".into())
    );
    let src_first = "lb-1-1";

    // An edit of the source's first message edits its copy.
    post(
        &server,
        "/api/platforms/src/edit",
        serde_json::json!({ "chat_id": "a", "message_id": src_first, "text": "first!" }),
    );
    let edit = next_from(&mut sse, "dst");
    assert_eq!(edit["kind"], "edit");
    assert_eq!(edit["target_id"], copy1["message_id"]);
    assert_eq!(edit["text"], "first!");

    // After a restart the map still knows the copies: a reaction and a reply find them.
    drop(sse);
    server.terminate();
    let server = Server::start(&t, routes);
    let mut sse = Sse::connect(&server.addr);
    post(
        &server,
        "/api/platforms/src/react",
        serde_json::json!({ "chat_id": "a", "message_id": "lb-1-2", "emoji": "🎉" }),
    );
    let reaction = next_from(&mut sse, "dst");
    assert_eq!(
        (&reaction["kind"], &reaction["emoji"]),
        (&"reaction".into(), &"🎉".into())
    );
    assert_eq!(reaction["target_id"], copy2["message_id"]);
    post(
        &server,
        "/api/platforms/src/send",
        serde_json::json!({ "chat_id": "a", "text": "re", "reply_to": src_first }),
    );
    let reply = next_from(&mut sse, "dst");
    assert_eq!(reply["text"], "re");
    assert_eq!(reply["reply_to"], copy1["message_id"]);

    // An edit of a message that was never routed has no copy to change: not sent.
    post(
        &server,
        "/api/platforms/src/edit",
        serde_json::json!({ "chat_id": "a", "message_id": "never", "text": "x" }),
    );
    post(
        &server,
        "/api/platforms/src/send",
        serde_json::json!({ "chat_id": "a", "text": "after" }),
    );
    let next = next_from(&mut sse, "dst");
    assert_eq!(
        (&next["kind"], &next["text"]),
        (&"message".into(), &"after".into())
    );
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hermes_routed_total{result=\"unmapped\"} 1"),
        "{metrics}"
    );
}
