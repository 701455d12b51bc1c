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
    // 10 queued at 20 a second, a burst of 1: 9 waits of 50 ms (each may end 1 ms early).
    let started = Instant::now();
    for n in 0..10 {
        queued(&server, "lb", "c", &format!("p{n}"));
    }
    for n in 0..10 {
        assert_eq!(next_delivery(&mut sse)["state"], "sent");
        let _ = n;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(440), "10 sends in {took:?}");
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

#[test]
fn a_failing_peer_makes_dead_letters_that_are_replayed_and_dropped() {
    let t = TestDir::new();
    t.install("wh", "hermes_webhook", 1);
    // /down answers 500 twice, then 200; /gone always 500; /bad 400 (no retry can help).
    let target = crate::webhook::Target::start(vec![
        ("/down", vec![(500, ""), (500, ""), (200, "")]),
        ("/gone", vec![(500, "")]),
        ("/bad", vec![(400, "")]),
    ]);
    let url = |p: &str| format!("http://{}{p}", target.addr);
    let server = Server::start(
        &t,
        &format!(
            "[platforms.wh]\nmax_retries = 0\ntargets = [\n  {{ chat = \"down\", url = \"{}\", format = \"slack\" }},\n  {{ chat = \"gone\", url = \"{}\", format = \"slack\" }},\n  {{ chat = \"bad\", url = \"{}\", format = \"slack\" }},\n]\n[platforms.wh.delivery]\nmax_attempts = 2\nbackoff_ms = 50\n",
            url("/down"),
            url("/gone"),
            url("/bad")
        ),
    );
    let mut sse = Sse::connect(&server.addr);
    let down = queued(&server, "wh", "down", "to down");
    let dead = next_delivery(&mut sse);
    assert_eq!(
        (dead["delivery_id"].as_str(), dead["state"].as_str()),
        (Some(down.as_str()), Some("dead"))
    );
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["last_error"].as_str().unwrap().contains("HTTP 500"),
        "{dead}"
    );
    let bad = queued(&server, "wh", "bad", "to bad");
    let dead = next_delivery(&mut sse);
    assert_eq!(dead["delivery_id"].as_str(), Some(bad.as_str()));
    assert_eq!(dead["attempts"], 1, "not retryable: dead at once: {dead}");
    let gone = queued(&server, "wh", "gone", "to gone");
    assert_eq!(
        next_delivery(&mut sse)["delivery_id"].as_str(),
        Some(gone.as_str())
    );

    let (status, list) = get_json(&server, "/api/deadletters?platform=wh");
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> = list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [down.as_str(), bad.as_str(), gone.as_str()]);
    let out = server.cli(&["deadletters", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&down) && text.contains("HTTP 500"),
        "{text}"
    );
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("hermes_dead_letters{platform=\"wh\"} 3"),
        "{metrics}"
    );
    assert_eq!(server.platform("wh")["outbox"]["dead"], 3);

    // The peer answers now: replayed once, delivered once.
    let out = server.cli(&["deadletters", "replay", &down]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = next_delivery(&mut sse);
    assert_eq!(
        (sent["delivery_id"].as_str(), sent["state"].as_str()),
        (Some(down.as_str()), Some("sent"))
    );
    assert_eq!(target.seen("/down").len(), 3);
    // Dropped: gone from the list and from the outbox.
    let out = server.cli(&["deadletters", "drop", &gone]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get_json(&server, &format!("/api/deliveries/{gone}")).0, 404);
    let out = server.cli(&["deadletters", "drop", &gone]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no dead letter `{gone}`")));
    let out = server.cli(&["deadletters", "list", "--json"]);
    let left: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    // Replay all: the 400 goes again, and is dead again at once.
    let out = server.cli(&["deadletters", "replay", "--all", "--platform", "wh"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 dead letters queued again"));
    let again = next_delivery(&mut sse);
    assert_eq!(
        (again["delivery_id"].as_str(), again["state"].as_str()),
        (Some(bad.as_str()), Some("dead"))
    );
    assert_eq!(target.seen("/bad").len(), 2);
}

#[test]
fn queued_sends_outlive_a_stopped_broker_and_a_killed_gateway_and_arrive_once_in_order() {
    let t = TestDir::new();
    t.install("mq", "hermes_mqtt", 1);
    let mut broker = crate::peers::Mosquitto::start(&t.path().join("mosquitto"));
    // A persistent subscriber: the broker keeps what arrives for it while it is away.
    drop(broker.subscribe_as("out/#", Some("hermes-delivery-test")));
    broker.stop();
    let config = format!(
        "[platforms.mq]\nbroker = \"{}\"\nreconnect_max_ms = 300\n[platforms.mq.delivery]\nmax_attempts = 10000\nbackoff_ms = 100\nmax_backoff_ms = 400\n",
        broker.addr()
    );
    // Half the sends are accepted by a gateway that is then killed, half by the next one.
    let mut first = Server::start(&t, &config);
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(queued(&first, "mq", "out/q", &format!("m{n}")));
    }
    first.kill9();
    let server = Server::start(&t, &config);
    let mut sse = Sse::connect(&server.addr);
    for n in 10..20 {
        ids.push(queued(&server, "mq", "out/q", &format!("m{n}")));
    }
    let (_, d) = get_json(&server, &format!("/api/deliveries/{}", ids[0]));
    assert!(
        matches!(d["state"].as_str(), Some("queued" | "sending")),
        "{d}"
    );
    broker.restart();
    let mut sent = Vec::new();
    while sent.len() < 20 {
        let event = next_delivery(&mut sse);
        assert_eq!(event["state"], "sent", "{event}");
        sent.push(event["delivery_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(sent, ids, "delivered in the order accepted");
    let mut sub = broker.subscribe_as("out/#", Some("hermes-delivery-test"));
    let got: Vec<String> = (0..20).map(|_| sub.next().1).collect();
    let want: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    assert_eq!(got, want);
    // Nothing more came: the next message is one published now.
    broker.publish("out/q", "marker");
    assert_eq!(sub.next().1, "marker");
}

/// The texts of the next `n` inbound echoes and the ids of the next `n` deliveries sent.
fn echoes_and_sent(sse: &mut Sse, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut echoes, mut sent) = (Vec::new(), Vec::new());
    while sent.len() < n || echoes.len() < n {
        let event = sse.next();
        if event["kind"] == "delivery" {
            assert_eq!(event["state"], "sent", "{event}");
            sent.push(event["delivery_id"].as_str().unwrap().to_owned());
        } else {
            echoes.push(event["text"].as_str().unwrap().to_owned());
        }
    }
    (echoes, sent)
}

/// Paces lb's deliveries, so that a fault comes while records wait.
const PACED: &str = "[platforms.lb.delivery]\nrate_per_sec = 100\nburst = 1\n";

/// Queues `n` texts `<prefix><i>` to lb's chat `c`, with `fault` halfway: their delivery ids.
fn queue_around(server: &Server, prefix: &str, n: usize, fault: impl FnOnce()) -> Vec<String> {
    let mut fault = Some(fault);
    (0..n)
        .map(|i| {
            if i == n / 2 {
                fault.take().unwrap()();
            }
            queued(server, "lb", "c", &format!("{prefix}{i}"))
        })
        .collect()
}

#[test]
fn a_reload_during_queued_delivery_loses_and_duplicates_nothing() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let server = Server::start(&t, &format!("[platforms.lb]\n{PACED}"));
    let mut sse = Sse::connect(&server.addr);
    let ids = queue_around(&server, "r", 120, || {
        let out = server.cli(&["plugin", "reload", "lb"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let (echoes, sent) = echoes_and_sent(&mut sse, 120);
    let want: Vec<String> = (0..120).map(|n| format!("r{n}")).collect();
    assert_eq!(echoes, want);
    assert_eq!(sent, ids);
    assert_eq!(server.platform("lb")["generation"], 2);
    let (_, last) = get_json(&server, &format!("/api/deliveries/{}", ids[119]));
    assert_eq!(last["attempts"], 1, "{last}");
}

#[test]
fn a_crashed_child_during_queued_delivery_loses_nothing_and_keeps_the_order() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let server = Server::start(
        &t,
        &format!("[platforms.lb]\nisolation = \"process\"\n{PACED}"),
    );
    let mut sse = Sse::connect(&server.addr);
    let ids = queue_around(&server, "k", 80, || {
        let pid = server.platform("lb")["pid"].as_i64().unwrap();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    });
    let (mut echoes, sent) = echoes_and_sent(&mut sse, 80);
    assert_eq!(sent, ids);
    // The one call in flight when the child died may have echoed before it died, and is sent
    // again with the same idempotency key (a platform that dedupes by it posts it once).
    let before = echoes.len();
    echoes.dedup();
    assert!(before - echoes.len() <= 1, "{before} echoes");
    let want: Vec<String> = (0..80).map(|n| format!("k{n}")).collect();
    assert_eq!(echoes, want);
    assert!(server.platform("lb")["generation"].as_u64().unwrap() >= 2);
}

#[test]
fn a_homeserver_rate_limit_is_waited_out_by_the_outbox_and_each_message_posted_once() {
    use crate::matrix::{ROOM, config, make_room, wait_synced};
    let t = TestDir::new();
    // Two messages at once, then one a second.
    let synapse = crate::peers::Synapse::start_limited(
        &t.path().join("synapse"),
        &[("hermes", "secret-h"), ("alice", "secret-a")],
        "{per_second: 1, burst_count: 2}",
    );
    make_room(&synapse);
    // The adapter gives up on a limited send within 300 ms and hands the homeserver's
    // retry_after_ms to the outbox, which waits it out.
    let server = Server::start(
        &t,
        &config(&t, &synapse).replace(
            "[platforms.matrix]\n",
            "[platforms.matrix]\nsend_budget_ms = 300\n",
        ),
    );
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);
    let ids: Vec<String> = (0..10)
        .map(|n| queued(&server, "matrix", ROOM, &format!("q{n}")))
        .collect();
    let (_, before) = sse.until("q9");
    let heard: Vec<&str> = before
        .iter()
        .filter(|e| e["platform"] == "alice" && e["kind"] == "message")
        .filter_map(|e| e["text"].as_str())
        .collect();
    let want: Vec<String> = (0..9).map(|n| format!("q{n}")).collect();
    assert_eq!(heard, want, "each once, in order");
    let mut retried = false;
    for id in &ids {
        let (_, d) = get_json(&server, &format!("/api/deliveries/{id}"));
        if d["state"] != "sent" {
            // The last may still be settling: its delivery event says so.
            assert_eq!(id, &ids[9], "{d}");
            continue;
        }
        retried |= d["attempts"].as_u64() > Some(1);
    }
    assert!(retried, "the limit was met and waited out by the outbox");
}

#[test]
fn a_message_a_platform_delivers_again_is_dropped() {
    use crate::matrix::{config, make_room, synapse, wait_synced};
    let t = TestDir::new();
    let synapse = synapse(&t);
    let room = make_room(&synapse);
    let config = config(&t, &synapse);
    crate::util::shipped_capabilities(&t, "matrix", &["matrix", "alice"]);
    let mut server = Server::start(&t, &config);
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);
    // The sync position as it was before the message: what a gateway killed between
    // delivering a message and saving the position starts from.
    let store = t.path().join("matrix.store");
    let before = std::fs::read(&store).unwrap();
    assert_eq!(server.send("alice", &room, "first").0, 200);
    let (event, _) = sse.until("first");
    assert_eq!(event["platform"], "matrix");
    assert!(server.terminate().success());
    std::fs::write(&store, before).unwrap();

    let server = Server::start(&t, &config);
    wait_synced(&server);
    let mut sse = Sse::connect(&server.addr);
    assert_eq!(server.send("alice", &room, "second").0, 200);
    let (event, before) = sse.until("second");
    assert_eq!(event["platform"], "matrix");
    assert!(before.iter().all(|e| e["text"] != "first"), "{before:?}");
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("hermes_inbound_duplicates_total{platform=\"matrix\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_hot_reload_during_queued_delivery_loses_and_duplicates_nothing() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let server = Server::start_with(&t, &format!("[platforms.lb]\n{PACED}"), &["--dev"]);
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sse = Sse::connect(&server.addr);
    let ids = queue_around(&server, "h", 120, || {
        crate::util::replace_like_cargo(&crate::util::variant_lib(), &library);
    });
    let (echoes, sent) = echoes_and_sent(&mut sse, 120);
    let want: Vec<String> = (0..120).map(|n| format!("h{n}")).collect();
    assert_eq!(echoes, want);
    assert_eq!(sent, ids);
    server.wait_platform("lb", |p| p["version"] == "0.2.0-next");
}

#[test]
fn a_stop_does_not_wait_for_a_slow_budget_and_the_queued_send_goes_after_the_restart() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    // One token every 100 s: the second send waits for it.
    let mut server = Server::start(
        &t,
        "[platforms.lb]\n[platforms.lb.delivery]\nrate_per_sec = 0.01\nburst = 1\n",
    );
    let mut sse = Sse::connect(&server.addr);
    queued(&server, "lb", "c", "first");
    assert_eq!(next_delivery(&mut sse)["state"], "sent");
    let waiting = queued(&server, "lb", "c", "second");
    server.wait_platform("lb", |_| {
        get_json(&server, &format!("/api/deliveries/{waiting}")).1["state"] == "sending"
    });
    assert!(server.terminate().success());
    let log = server.log();
    assert!(!log.contains("still in flight"), "{log}");

    let server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    let (event, _) = sse.until("second");
    assert_eq!(event["platform"], "lb");
    let sent = next_delivery(&mut sse);
    assert_eq!(
        (sent["delivery_id"].as_str(), sent["state"].as_str()),
        (Some(waiting.as_str()), Some("sent"))
    );
}
