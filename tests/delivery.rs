//! Queued sends (`Prefer: respond-async`): accepted once durable, delivered in order per chat
//! within the rate budget, retried, dead letters replayed or dropped; nothing lost or sent
//! twice across `kill -9`, a reload or a crashed child.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Server, Sse, TestDir, http_full};

/// `POST /api/platforms/{platform}/send` with `Prefer: respond-async` (and `headers`): the
/// status, the response head and the JSON answer.
pub(crate) fn queue(
    server: &Server,
    platform: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut all = vec![("Prefer", "respond-async")];
    all.extend_from_slice(headers);
    let (status, head, answer) = http_full(
        &server.addr,
        "POST",
        &format!("/api/platforms/{platform}/send"),
        Some(&body.to_string()),
        &all,
    );
    (
        status,
        head,
        serde_json::from_str(&answer).unwrap_or_default(),
    )
}

/// Queues `text` to `chat`, which must be accepted: its delivery id.
pub(crate) fn queued(server: &Server, platform: &str, chat: &str, text: &str) -> String {
    let (status, _, answer) = queue(
        server,
        platform,
        &json!({"chat_id": chat, "text": text}),
        &[],
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "queued");
    answer["delivery_id"].as_str().unwrap().to_owned()
}

/// The next `delivery` event on the stream (skipping inbound messages).
pub(crate) fn next_delivery(sse: &mut Sse) -> Value {
    loop {
        let event = sse.next();
        if event["kind"] == "delivery" {
            return event;
        }
    }
}

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = server.get(path);
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[test]
fn queued_sends_are_accepted_delivered_in_order_and_reported() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let mut server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    let (status, head, answer) = queue(&server, "lb", &json!({"chat_id": "c", "text": "q0"}), &[]);
    assert_eq!(status, 202, "{answer}");
    let id = answer["delivery_id"].as_str().unwrap().to_owned();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("preference-applied: respond-async"), "{head}");
    assert!(
        head.contains(&format!("location: /api/deliveries/{id}")),
        "{head}"
    );
    let mut ids = vec![id];
    for n in 1..8 {
        ids.push(queued(&server, "lb", "c", &format!("q{n}")));
    }
    // Each echo comes in the order accepted; each delivery is told as sent.
    let (mut echoes, mut sent) = (Vec::new(), Vec::new());
    while echoes.len() < 8 || sent.len() < 8 {
        let event = sse.next();
        if event["kind"] == "delivery" {
            assert_eq!(event["state"], "sent", "{event}");
            sent.push(event["delivery_id"].as_str().unwrap().to_owned());
        } else {
            echoes.push(event["text"].as_str().unwrap().to_owned());
        }
    }
    let want: Vec<String> = (0..8).map(|n| format!("q{n}")).collect();
    assert_eq!(echoes, want);
    assert_eq!(sent, ids);
    let (status, d) = get_json(&server, &format!("/api/deliveries/{}", ids[0]));
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (d["state"].as_str(), d["attempts"].as_u64()),
        (Some("sent"), Some(1))
    );
    assert_eq!(
        (d["platform"].as_str(), d["chat_id"].as_str()),
        (Some("lb"), Some("c"))
    );
    assert!(
        d["message_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{d}"
    );
    let (status, e) = get_json(&server, "/api/deliveries/nope");
    assert_eq!(status, 404, "{e}");
    // A body the API refuses is refused before anything is queued.
    let (status, _, e) = queue(&server, "lb", &json!({"chat_id": "c"}), &[]);
    assert_eq!(status, 422, "{e}");

    // The same key twice, and again after kill -9: one delivery, the same answer.
    let key = [("Idempotency-Key", "order-1")];
    let body = json!({"chat_id": "c", "text": "once"});
    let (status, _, first) = queue(&server, "lb", &body, &key);
    assert_eq!(status, 202, "{first}");
    let (status, head, again) = queue(&server, "lb", &body, &key);
    assert_eq!((status, &again), (202, &first));
    assert!(
        head.to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{head}"
    );
    let (echo, _) = sse.until("once");
    assert_eq!(echo["metadata"]["idempotency_key"], "order-1", "{echo}");
    // Sent, and recorded as sent, before the kill (a record still `sending` at a crash is sent
    // again, with its key).
    assert_eq!(next_delivery(&mut sse)["delivery_id"], first["delivery_id"]);
    server.kill9();
    let server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    let (status, _, after) = queue(&server, "lb", &body, &key);
    assert_eq!((status, &after), (202, &first));
    queued(&server, "lb", "c", "marker");
    let (_, before) = sse.until("marker");
    assert!(before.iter().all(|e| e["text"] != "once"), "{before:?}");
}

#[test]
fn a_rate_budget_paces_queued_sends_and_answers_a_direct_send_with_retry_after() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    t.install("slow", "hermes_loopback", 1);
    let server = Server::start(
        &t,
        "[platforms.lb]\n[platforms.lb.delivery]\nrate_per_sec = 20\nburst = 1\n\n[platforms.slow]\ncall_timeout_ms = 300\n[platforms.slow.delivery]\nrate_per_sec = 0.01\nburst = 1\n",
    );
    let mut sse = Sse::connect(&server.addr);
    // 10 queued at 20 a second, a burst of 1: 9 waits of 50 ms at least.
    let started = Instant::now();
    for n in 0..10 {
        queued(&server, "lb", "c", &format!("p{n}"));
    }
    for n in 0..10 {
        assert_eq!(next_delivery(&mut sse)["state"], "sent");
        let _ = n;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "10 sends in {took:?}");
    // One token in 100 s: the second direct send finds none within its call timeout.
    let (status, _) = server.send("slow", "c", "first");
    assert_eq!(status, 200);
    let (status, head, body) = http_full(
        &server.addr,
        "POST",
        "/api/platforms/slow/send",
        Some(r#"{"chat_id":"c","text":"second"}"#),
        &[],
    );
    assert_eq!(status, 503, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["retryable"], true, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("over its rate budget"),
        "{e}"
    );
    let retry_after: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Retry-After in {head}"));
    assert!((90..=100).contains(&retry_after), "{retry_after}");
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("hermes_deliveries_sent_total{platform=\"lb\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hermes_rate_budget_tokens{platform=\"slow\"}"),
        "{metrics}"
    );
}

#[test]
fn a_bad_key_in_a_delivery_table_names_it() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    t.config("[platforms.lb.delivery]\nrate_per_sec = -1\n");
    let out = t.run(&["plugin", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("platforms.lb.delivery") && err.contains("rate_per_sec"),
        "{err}"
    );
}
