//! The platform lifecycle under load and hangs: calls that wait too long are dropped unrun, a
//! timeout fails one call only, and a hung instance is replaced with no manual step; a replaced
//! generation's deliveries never reach SSE or the journal.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::util::{Server, TestDir};

/// Every record of the server's journal.
fn journal(t: &TestDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(t.path().join("state/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_burst_past_the_timeout_drops_unrun_calls_and_the_platform_keeps_serving() {
    let t = TestDir::new();
    t.install("slow", "fixture_panicky", 1);
    // 2 workers, 50 ms a send, 1 s timeout: of 100 concurrent sends about 40 can run in time.
    let mut server = Server::start(
        &t,
        "[platforms.slow]\nworkers = 2\ncall_timeout_ms = 1000\nhang_send_ms = 50\necho = true\n",
    );
    let addr = server.addr.clone();
    let answers: Vec<(usize, u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let addr = addr.clone();
                scope.spawn(move || {
                    let body = format!(r#"{{"chat_id":"c","text":"m{i}"}}"#);
                    let (status, answer) = crate::util::http(
                        &addr,
                        "POST",
                        "/api/platforms/slow/send",
                        Some(&body),
                        &[],
                    );
                    (i, status, answer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: HashSet<usize> = answers.iter().filter(|a| a.1 == 200).map(|a| a.0).collect();
    let refused: Vec<&(usize, u16, String)> = answers.iter().filter(|a| a.1 != 200).collect();
    for (i, status, answer) in &refused {
        assert_eq!(
            *status, 503,
            "m{i}: a call that never ran must not be a 504: {answer}"
        );
        let v: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert_eq!(v["retryable"], true, "{answer}");
    }
    assert!(
        !ok.is_empty() && !refused.is_empty(),
        "{} ok, {} refused",
        ok.len(),
        refused.len()
    );
    // No call ran after its caller got an error: what ran is exactly what answered 200.
    assert!(server.terminate().success());
    let ran: HashSet<usize> = journal(&t)
        .iter()
        .filter(|r| r["kind"] == "inbound")
        .filter_map(|r| r["text"].as_str()?.strip_prefix("ran-m")?.parse().ok())
        .collect();
    assert_eq!(ran, ok, "calls that ran vs calls answered 200");
}

#[test]
fn a_hung_call_fails_alone_and_the_instance_is_replaced_without_a_manual_step() {
    let t = TestDir::new();
    t.install("stuck", "fixture_panicky", 1);
    let server = Server::start(
        &t,
        "[platforms.stuck]\nworkers = 1\ncall_timeout_ms = 300\nhang_text = \"hang\"\nhang_text_ms = 3000\necho = true\n",
    );
    let (status, answer) = server.post(
        "/api/platforms/stuck/send",
        r#"{"chat_id":"c","text":"hang"}"#,
    );
    assert_eq!(status, 504, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["retryable"], true, "{answer}");
    // Its one worker is stuck: sends answer 503 (retryable) until the supervisor has replaced
    // it; then a fresh generation serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let (status, answer) = server.post(
            "/api/platforms/stuck/send",
            r#"{"chat_id":"c","text":"after"}"#,
        );
        match status {
            200 => break serde_json::from_str::<serde_json::Value>(&answer).unwrap(),
            503 => assert!(answer.contains("\"retryable\":true"), "{answer}"),
            other => panic!("{other}: {answer}"),
        }
        assert!(
            Instant::now() < deadline,
            "never replaced:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(served["generation"], 2, "{served}");
    let p = server.platform("stuck");
    assert_eq!(p["state"], "running", "{p}");
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("started without its state"),
        "{p}"
    );
    assert!(server.log().contains("hung instance replaced"));
    // When the stuck call returns, generation 1's delivery is refused (it no longer serves),
    // counted, and its library is unloaded.
    let p = server.wait_platform("stuck", |_| {
        server
            .get("/metrics")
            .1
            .contains("hermes_stale_deliveries_total{platform=\"stuck\"} 1")
    });
    let _ = p;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.mapped("fixture_panicky").len().eq(&1) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            server.mapped("fixture_panicky")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let echoes: Vec<serde_json::Value> = journal(&t)
        .into_iter()
        .filter(|r| r["kind"] == "inbound")
        .collect();
    assert!(
        echoes.iter().all(|r| r["generation"] == 2),
        "a replaced generation's delivery reached the journal: {echoes:?}"
    );
}
