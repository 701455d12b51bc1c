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
    // The plugin was told why, typed (level 1.1): `DeliverError::Stale`.
    server.wait_log("delivery refused as stale", 1);
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

#[test]
fn a_thread_started_in_start_sees_the_previous_state_across_20_reloads() {
    let t = TestDir::new();
    t.install("resume", "fixture_threaded", 1);
    let recorder = crate::util::Recorder::new();
    let registry = t.registry(
        "[platforms.resume]\nthreads = 0\nresume = true\n",
        recorder.clone(),
    );
    registry.instance("resume").unwrap();
    for _ in 0..20 {
        registry.reload("resume", "test").unwrap();
    }
    let resumed: Vec<String> = recorder.wait_for(21).into_iter().map(|m| m.text).collect();
    let want: Vec<String> = (0..=20).map(|n| format!("resume-{n}")).collect();
    assert_eq!(
        resumed, want,
        "a generation's thread ran before its state arrived"
    );
    registry.shutdown();
}

#[test]
fn a_replaced_generation_never_delivers_across_20_reloads_and_a_hang() {
    let t = TestDir::new();
    t.install("ticker", "fixture_threaded", 1);
    let recorder = crate::util::Recorder::new();
    let registry = t.registry(
        "[platforms.ticker]\nthreads = 2\ndeliver_ticks = true\nworkers = 1\ncall_timeout_ms = 200\nhang_ms = 1500\n",
        recorder.clone(),
    );
    registry.instance("ticker").unwrap();
    let ticks_of_this_generation = || {
        let seen = recorder.messages().len();
        recorder.wait_for(seen + 2);
    };
    for generation in 1..=20 {
        ticks_of_this_generation();
        let outcome = registry.reload("ticker", "test").unwrap();
        assert_eq!(outcome.new_generation, generation + 1);
    }
    // Generation 21 hangs: its threads tick on while generation 22 takes over.
    ticks_of_this_generation();
    let hung = registry.instance("ticker").unwrap();
    let e = hung
        .send(&hermes_host::message::Outbound::new("c", "hang"))
        .unwrap_err();
    assert!(
        matches!(e, hermes_host::loader::CallError::Timeout { .. }),
        "{e}"
    );
    assert!(hung.is_hung());
    drop(hung);
    let outcome = registry.reload("ticker", "test").unwrap();
    assert!(outcome.state_lost);
    for _ in 0..10 {
        ticks_of_this_generation();
    }
    let generations: Vec<u64> = recorder.messages().iter().map(|m| m.generation).collect();
    assert!(
        generations.windows(2).all(|w| w[0] <= w[1]),
        "a replaced generation delivered after its successor started: {generations:?}"
    );
    let distinct: HashSet<u64> = generations.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        22,
        "every generation delivered: {distinct:?}"
    );
    registry.shutdown();
}

/// Rewrites the server's config with `extra` after the parts `Server::start` writes.
fn rewrite(t: &TestDir, extra: &str) {
    t.config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\nflush_ms = 20\n\n{extra}"
    ));
}

#[test]
fn config_reload_applies_a_valid_change_whole_and_refuses_an_invalid_one_whole() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    t.install("lb2", "hermes_loopback", 1);
    let first = "[platforms.lb]\nuser = \"a\"\n\n[[routes]]\nfrom = { platform = \"lb\", chat = \"lobby\" }\nto = [{ platform = \"lb\", chat = \"archive\" }]\n";
    let mut server = Server::start(&t, first);

    // Invalid (the loopback refuses an empty user) together with a valid change: refused as a
    // whole, by SIGHUP, which does not stop the server.
    rewrite(&t, "[platforms.lb]\nuser = \"\"\n\n[platforms.lb2]\n");
    server.signal("HUP");
    server.wait_log("config reload refused", 1);
    assert!(
        server
            .log()
            .contains("[platforms.lb]: validate_config: `user` must not be empty")
    );
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.platform("lb")["generation"], 1);
    assert_eq!(server.platform("lb2")["state"], "registered");

    // A change only a restart can apply: refused, naming the key.
    t.config("[server]\nlisten = \"127.0.0.1:1\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\nflush_ms = 20\n\n[platforms.lb]\nuser = \"a\"\n");
    let out = server.cli(&["reload-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changing server.listen needs a restart"),
        "{out:?}"
    );

    // Valid: lb changes (reloaded as generation 2 with its new table), lb2 is added (eager:
    // started), the route now goes to `other`.
    rewrite(
        &t,
        "[platforms.lb]\nuser = \"b\"\n\n[platforms.lb2]\n\n[[routes]]\nfrom = { platform = \"lb\", chat = \"lobby\" }\nto = [{ platform = \"lb2\", chat = \"other\" }]\n",
    );
    let out = server.cli(&["reload-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("added lb2; removed none; changed lb; routes replaced"),
        "{stdout}"
    );
    assert_eq!(server.platform("lb")["generation"], 2);
    assert_eq!(server.platform("lb2")["state"], "running");
    let mut sse = crate::util::Sse::connect(&server.addr);
    assert_eq!(
        server
            .post(
                "/api/platforms/lb/send",
                r#"{"chat_id":"lobby","text":"hi"}"#
            )
            .0,
        200
    );
    let echo = sse.next();
    assert_eq!(
        (echo["user"].as_str(), echo["chat_id"].as_str()),
        (Some("b"), Some("lobby")),
        "{echo}"
    );
    let routed = sse.next();
    assert_eq!(
        (routed["platform"].as_str(), routed["chat_id"].as_str()),
        (Some("lb2"), Some("other")),
        "{routed}"
    );

    // Removed: lb2 stops and unloads.
    rewrite(&t, "[platforms.lb]\nuser = \"b\"\n");
    let out = server.cli(&["reload-config"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server.platform("lb2")["state"], "unloaded");

    // `plugin reload` takes the platform's table as the file has it now.
    rewrite(&t, "[platforms.lb]\nuser = \"c\"\n");
    assert!(server.cli(&["plugin", "reload", "lb"]).status.success());
    let mut sse = crate::util::Sse::connect(&server.addr);
    assert_eq!(
        server
            .post("/api/platforms/lb/send", r#"{"chat_id":"x","text":"hi"}"#)
            .0,
        200
    );
    assert_eq!(sse.next()["user"], "c");
    assert!(server.terminate().success());
}

#[test]
fn a_platform_enabled_from_the_environment_keeps_its_table_across_a_config_reload() {
    let t = TestDir::new();
    let dir = t.install("envy", "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap()
        + "[plugin.enable_when]\nenv_all = [\"HERMES_TEST_ENVY\"]\n";
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    // A bad variable fails the platform naming the variable (not some other key, as starting
    // it with the defaults would); the gateway serves.
    let mut server = Server::start_env(
        &t,
        "",
        &[("HERMES_TEST_ENVY", "1"), ("HERMES_ENVY_WORKERS", "many")],
    );
    let status = server.platform("envy");
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("environment variable HERMES_ENVY_WORKERS: expected a positive integer"),
        "{status}"
    );
    let (code, answer) = server.send("envy", "c", "hi");
    assert_eq!(code, 503, "{answer}");
    assert!(server.terminate().success());

    let server = Server::start_env(
        &t,
        "",
        &[("HERMES_TEST_ENVY", "1"), ("HERMES_ENVY_USER", "from-env")],
    );
    let echo_user = || {
        let mut sse = crate::util::Sse::connect(&server.addr);
        assert_eq!(server.send("envy", "c", "hi").0, 200);
        sse.next()["user"].as_str().unwrap().to_owned()
    };
    assert_eq!(echo_user(), "from-env");
    // An unchanged file changes nothing: the platform's table still comes from the environment.
    let out = server.cli(&["reload-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("added none; removed none; changed none"),
        "{stdout}"
    );
    assert_eq!(server.platform("envy")["state"], "running");
    assert_eq!(server.platform("envy")["generation"], 1);
    assert_eq!(echo_user(), "from-env");
    // `plugin reload` takes it from the environment too.
    assert!(server.cli(&["plugin", "reload", "envy"]).status.success());
    assert_eq!(echo_user(), "from-env");
}

#[test]
fn a_background_platform_added_by_a_config_reload_makes_the_warm_up_pending_until_it_starts() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    t.install("bg", "fixture_panicky", 1);
    let server = Server::start(&t, "[platforms.lb]\n");
    let (_, body) = server.get("/api/warmup_wait?timeout_ms=20000");
    assert!(body.contains("\"status\":\"completed\""), "{body}");

    rewrite(
        &t,
        "[platforms.lb]\n\n[platforms.bg]\nstart = \"background\"\nhang_start_ms = 1500\ncall_timeout_ms = 60000\n",
    );
    // The reload answers without waiting for the background start...
    let out = server.cli(&["reload-config"]);
    assert!(out.status.success(), "{out:?}");
    // ...which is the warm-up's now: pending, and the gateway is not idle.
    let (_, body) = server.get("/api/warmup_status");
    let warmup: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(warmup["status"], "pending", "{warmup}");
    assert_eq!(warmup["pending"], serde_json::json!(["bg"]), "{warmup}");
    let (_, idle) = server.get("/api/idle?quiet_secs=0");
    assert!(idle.contains("warm-up pending"), "{idle}");
    // warmup_wait waits for it.
    let (status, body) = server.get("/api/warmup_wait?timeout_ms=20000");
    assert_eq!(status, 200, "{body}");
    let warmup: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(warmup["status"], "completed", "{warmup}");
    assert_eq!(warmup["completed"], serde_json::json!(["bg"]), "{warmup}");
    assert_eq!(server.platform("bg")["state"], "running");
}

#[test]
fn one_send_counts_once_in_flight_and_idle_unload_stretches_for_a_platform_needed_again_soon() {
    let t = TestDir::new();
    t.install("lazy", "fixture_panicky", 1);
    let server = Server::start(
        &t,
        "[platforms.lazy]\nstart = \"on_demand\"\nidle_unload_secs = 1\nhang_text = \"slow\"\nhang_text_ms = 1500\n",
    );
    let idle = || -> serde_json::Value {
        serde_json::from_str(&server.get("/api/idle?quiet_secs=0").1).unwrap()
    };
    std::thread::scope(|scope| {
        let send = scope.spawn(|| server.send("lazy", "c", "slow"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let running = loop {
            let now = idle();
            if now["plugin_calls_in_flight"] == 1 {
                break now;
            }
            assert!(Instant::now() < deadline, "{now}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(running["requests_in_flight"], 1, "{running}");
        assert_eq!(running["in_flight"], 1, "one send, counted once: {running}");
        assert_eq!(send.join().unwrap().0, 200);
    });

    // Unloaded after 1 s of quiet; needed again at once, so the next idle period is 2 s.
    server.wait_log("unloaded after it was idle", 1);
    assert!(server.log().contains("idle_secs=1.0"), "{}", server.log());
    assert_eq!(server.send("lazy", "c", "again").0, 200);
    server.wait_log("unloaded after it was idle", 2);
    assert!(server.log().contains("idle_secs=2.0"), "{}", server.log());
}
