//! Reload as a transaction and hot reload, against real libraries: loopback built twice (the
//! second build reports 0.2.0-next), broken files, and a fixture whose new start fails.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use hermes_host::{loader::DiscardInbound, message::Outbound, registry::EntryState};

use crate::util::{self, Recorder, Server, Sse, TestDir};

#[test]
fn a_reload_bumps_the_generation_hands_over_state_and_unmaps_the_old_copy() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let recorder = Recorder::new();
    let registry = t.registry("", recorder.clone());
    let first = registry.instance("loopback").unwrap();
    for _ in 0..3 {
        first.send(&Outbound::new("c", "x")).unwrap();
    }
    let outcome = registry.reload("loopback", "test").unwrap();
    assert_eq!(
        (outcome.old_generation, outcome.new_generation),
        (Some(1), 2)
    );
    assert_eq!(outcome.state_bytes, Some(8));
    let unload = outcome.old_unload.expect("old library unloaded");
    assert!(unload.clean(), "{unload:?}");
    assert_eq!(unload.unmapped, Some(true));
    // The old instance refuses calls (the gateway retries those on the new one)...
    assert!(first.send(&Outbound::new("c", "late")).is_err());
    // ...and the new one carries on counting.
    let second = registry.instance("loopback").unwrap();
    assert_eq!(
        second.send(&Outbound::new("c", "x")).unwrap().message_id,
        "lb-2-4"
    );
    let shadow = t.shadow().canonicalize().unwrap();
    assert_eq!(util::mapped_containing(&shadow.to_string_lossy()).len(), 1);
    assert_eq!(registry.entry("loopback").unwrap().reload_stats().done, 1);
    registry.shutdown();
}

#[test]
fn a_reload_to_another_build_serves_the_new_version() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let recorder = Recorder::new();
    let registry = t.registry("", recorder.clone());
    registry
        .instance("lb")
        .unwrap()
        .send(&Outbound::new("c", "one"))
        .unwrap();
    util::replace_like_cargo(&util::variant_lib(), &library);
    let outcome = registry.reload("lb", "test").unwrap();
    assert_eq!(outcome.old_version.as_deref(), Some("0.1.0"));
    assert_eq!(outcome.new_version, "0.2.0-next");
    registry
        .instance("lb")
        .unwrap()
        .send(&Outbound::new("c", "two"))
        .unwrap();
    let echoes = recorder.wait_for(2);
    assert_eq!(echoes[0].metadata["version"], "0.1.0");
    assert_eq!(echoes[1].metadata["version"], "0.2.0-next");
    assert_eq!(echoes[1].generation, 2);
    assert_eq!(registry.entry("lb").unwrap().status().version, "0.2.0-next");
    registry.shutdown();
}

#[test]
fn broken_reloads_are_refused_and_the_old_generation_serves() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    t.install("flaky", "fixture_panicky", 1);
    let registry = t.registry(
        "[platforms.flaky]\nfail_start_generation = 2\n",
        Arc::new(DiscardInbound),
    );
    registry.instance("lb").unwrap();

    std::fs::write(&library, b"half a library").unwrap();
    let refused = registry.reload("lb", "test").unwrap_err();
    assert!(refused.reason.contains("not an ELF file"), "{refused}");
    assert_eq!(refused.serving_generation, Some(1));

    util::replace_like_cargo(&util::lib("fixture_drift"), &library);
    let refused = registry.reload("lb", "test").unwrap_err();
    assert!(
        refused.reason.contains("built against another plugin API"),
        "{refused}"
    );

    let good = std::fs::read(util::lib("hermes_loopback")).unwrap();
    std::fs::write(&library, &good[..good.len() / 2]).unwrap();
    let refused = registry.reload("lb", "test").unwrap_err();
    assert!(refused.reason.contains("truncated"), "{refused}");

    let serving = registry.instance("lb").unwrap();
    assert_eq!(serving.generation(), 1);
    serving.send(&Outbound::new("c", "still here")).unwrap();
    let stats = registry.entry("lb").unwrap().reload_stats();
    assert_eq!((stats.done, stats.refused), (0, 3));
    assert!(stats.last_error.unwrap().contains("truncated"));

    // The new library's start fails: the old library is started again, same generation.
    registry.instance("flaky").unwrap();
    let refused = registry.reload("flaky", "test").unwrap_err();
    assert!(
        refused
            .reason
            .contains("fixture refuses to start as generation 2"),
        "{refused}"
    );
    assert_eq!(refused.serving_generation, Some(1));
    let flaky = registry.instance("flaky").unwrap();
    assert_eq!(flaky.generation(), 1);
    assert_eq!(
        flaky.send(&Outbound::new("c", "x")).unwrap().message_id,
        "ok-x"
    );
    assert_eq!(
        registry.entry("flaky").unwrap().status().state,
        EntryState::Running
    );
    // Nothing of the refused libraries stays mapped: one copy per serving platform.
    let shadow = t.shadow().canonicalize().unwrap();
    assert_eq!(util::mapped_containing(&shadow.to_string_lossy()).len(), 2);
    registry.shutdown();
}

#[test]
fn two_hundred_reloads_leave_nothing_behind() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let registry = t.registry("", Arc::new(DiscardInbound));
    registry.instance("loopback").unwrap();
    for _ in 0..3 {
        registry.reload("loopback", "test").unwrap();
    }
    let baseline = util::ProcessCounts::take();
    for i in 0..200 {
        let outcome = registry.reload("loopback", "test").unwrap();
        assert!(
            outcome.old_unload.as_ref().unwrap().clean(),
            "reload {i}: {outcome:?}"
        );
    }
    assert_eq!(registry.instance("loopback").unwrap().generation(), 204);
    let shadow = t.shadow().canonicalize().unwrap();
    assert_eq!(util::mapped_containing(&shadow.to_string_lossy()).len(), 1);
    assert_eq!(util::file_count(&t.shadow()), 1);
    baseline.assert_no_growth();
    assert_eq!(registry.resident_stale_libraries(), Some(vec![]));
    registry.shutdown();
}

#[test]
fn sends_during_twenty_reloads_are_all_answered_and_echoed_once() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let mut server = Server::start(&t, "[platforms.loopback]\nworkers = 2\n");
    let mut sse = Sse::connect(&server.addr);
    let socket = t.path().join("state/control.sock");
    let senders: Vec<_> = (0..8)
        .map(|c| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                (0..125)
                    .map(|i| {
                        let body = format!(r#"{{"chat_id":"c{c}","text":"m{c}-{i}"}}"#);
                        let (status, answer) = util::http(
                            &addr,
                            "POST",
                            "/api/platforms/loopback/send",
                            Some(&body),
                            &[],
                        );
                        assert_eq!(status, 200, "{answer}");
                        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["message_id"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let reloads = std::thread::spawn(move || {
        let client = hermes_host::control::Client::new(&socket, Duration::from_secs(30));
        (0..20)
            .map(|_| {
                let outcome = client.blocking(client.reload("loopback")).unwrap();
                outcome.expect("the reload is done").held_ms
            })
            .collect::<Vec<_>>()
    });
    let receipts: Vec<String> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    let held = reloads.join().unwrap();
    assert_eq!(receipts.len(), 1000);
    assert_eq!(held.len(), 20);
    let unique: BTreeSet<&String> = receipts.iter().collect();
    assert_eq!(unique.len(), 1000, "message ids repeat across generations");

    let mut echoed = Vec::new();
    while echoed.len() < 1000 {
        let event = sse.next();
        echoed.push(event["message_id"].as_str().unwrap().to_owned());
    }
    let echoed_set: BTreeSet<&String> = echoed.iter().collect();
    assert_eq!(echoed_set, unique, "SSE echoes differ from the receipts");
    assert_eq!(server.platform("loopback")["generation"], 21);

    assert!(server.terminate().success());
    let journal = std::fs::read_to_string(t.path().join("state/journal.jsonl")).unwrap();
    let inbound: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "inbound")
        .map(|l| l["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inbound.len(), 1000, "each echo journaled exactly once");
    assert_eq!(inbound.iter().collect::<BTreeSet<_>>(), unique);
}

#[test]
fn plugin_reload_through_the_cli_bumps_the_generation() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install("flaky", "fixture_panicky", 1);
    let server = Server::start(
        &t,
        "[platforms.loopback]\n[platforms.flaky]\nfail_start_generation = 2\n",
    );
    let out = server.cli(&["plugin", "reload", "loopback"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("reloaded loopback: generation 1 (0.1.0) -> 2 (0.1.0) in "),
        "{text}"
    );
    assert!(text.contains("old copy unmapped"), "{text}");
    let info = server.cli(&["plugin", "info", "loopback"]);
    assert!(
        String::from_utf8_lossy(&info.stdout)
            .contains("running in the running server: generation 2, version 0.1.0")
    );

    let out = server.cli(&["plugin", "reload", "flaky"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("reload of `flaky` refused: the new library failed to start"),
        "{stderr}"
    );
    assert!(stderr.contains("generation 1 still serving"), "{stderr}");
    assert_eq!(
        server
            .post("/api/platforms/flaky/send", r#"{"chat_id":"c","text":"x"}"#)
            .0,
        200
    );

    let out = server.cli(&["plugin", "reload", "../../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no plugin with id `../../etc` is installed")
    );
}

#[test]
fn hot_reload_picks_up_a_rebuilt_library_and_refuses_a_broken_one() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let server = Server::start_with(&t, "[platforms.lb]\n", &["--dev"]);
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hot reload on for lb: watching"));

    util::replace_like_cargo(&util::variant_lib(), &library);
    server.wait_platform("lb", |p| p["generation"] == 2);
    let mut sse = Sse::connect(&server.addr);
    let (status, body) = server.post("/api/platforms/lb/send", r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sse.next()["metadata"]["version"], "0.2.0-next");
    assert_eq!(server.platform("lb")["version"], "0.2.0-next");
    // The table shows the loaded library's version and, where it differs, the manifest's.
    let table = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("0.2.0-next (manifest 0.0.1)"), "{table}");

    // A manifest rewritten in place is a change too: it triggers a reload (of the same library).
    let manifest = t.plugins().join("lb/plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text + "description = \"touched\"\n").unwrap();
    server.wait_platform("lb", |p| p["generation"] == 3);

    // Garbage: refused, the error is in hotreload-status, generation 3 keeps serving.
    std::fs::write(&library, b"not a library at all").unwrap();
    server.wait_platform("lb", |p| p["reloads"]["refused"] == 1);
    let status = server.cli(&["plugin", "hotreload-status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("lb: watching"), "{text}");
    assert!(
        text.contains("2 done, 1 refused; last reload refused by watcher"),
        "{text}"
    );
    assert!(
        text.contains("last error: ") && text.contains("not an ELF file"),
        "{text}"
    );
    assert_eq!(
        server
            .post("/api/platforms/lb/send", r#"{"chat_id":"c","text":"y"}"#)
            .0,
        200
    );
    assert_eq!(server.platform("lb")["generation"], 3);

    let json = server.cli(&["plugin", "hotreload-status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["resident_stale_libraries"], 0);

    // A later good build clears the old error from hotreload-status.
    util::replace_like_cargo(&util::lib("hermes_loopback"), &library);
    server.wait_platform("lb", |p| p["generation"] == 4);
    let status = server.cli(&["plugin", "hotreload-status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!text.contains("last error"), "{text}");

    let out = server.cli(&["plugin", "hotreload-disable", "lb"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hot reload off for lb"));
}

#[test]
fn a_finished_library_linked_in_reloads_without_waiting_for_the_debounce() {
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    // A debounce longer than the wait below: only the complete-file path can reload in time.
    let server = Server::start_with(
        &t,
        "[hotreload]\ndebounce_ms = 600000\n\n[platforms.lb]\n",
        &["--dev"],
    );
    assert!(
        server
            .cli(&["plugin", "hotreload-enable", "lb"])
            .status
            .success()
    );
    util::replace_like_cargo(&util::variant_lib(), &library);
    server.wait_platform("lb", |p| p["generation"] == 2);
    assert_eq!(server.platform("lb")["version"], "0.2.0-next");
}

#[test]
fn hot_reload_needs_permission_and_the_watched_set_survives_a_restart() {
    let t = TestDir::new();
    t.install_copy("lb", "hermes_loopback");
    let mut server = Server::start(&t, "[platforms.lb]\n");
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hot reload is not allowed: set `[hotreload] allowed = true` in"),
        "{stderr}"
    );
    assert!(stderr.contains("hermes-host serve --dev"), "{stderr}");
    assert!(server.terminate().success());

    let mut server = Server::start_with(&t, "[platforms.lb]\n", &["--dev"]);
    assert!(
        server
            .cli(&["plugin", "hotreload-enable", "lb"])
            .status
            .success()
    );
    assert!(server.terminate().success());
    let persisted = std::fs::read_to_string(t.path().join("state/hotreload.json")).unwrap();
    assert!(persisted.contains("\"lb\""), "{persisted}");

    let server = Server::start(&t, "[platforms.lb]\n[hotreload]\nallowed = true\n");
    let watching = || {
        let status = server.cli(&["plugin", "hotreload-status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["plugins"][0]["id"], "lb");
        status["plugins"][0]["watching"].as_bool().unwrap()
    };
    assert!(watching());

    // A config reload changes the permission: off stops the watch, on starts it again.
    let config = |allowed: bool| {
        t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\nflush_ms = 20\n\n[platforms.lb]\n[hotreload]\nallowed = {allowed}\n"
        ));
        let out = server.cli(&["reload-config"]);
        assert!(out.status.success(), "{out:?}");
    };
    config(false);
    assert!(!watching());
    let refused = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("hot reload is not allowed"));
    config(true);
    assert!(watching());
}

#[test]
fn a_reload_replaces_a_hung_instance_and_reports_its_library_resident() {
    let t = TestDir::new();
    t.install("stuck", "fixture_panicky", 1);
    let registry = t.registry(
        "[platforms.stuck]\ncall_timeout_ms = 100\nhang_send_ms = 1500\nworkers = 1\n",
        Arc::new(DiscardInbound),
    );
    let old = registry.instance("stuck").unwrap();
    let e = old.send(&Outbound::new("c", "x")).unwrap_err();
    assert!(
        matches!(e, hermes_host::loader::CallError::Timeout { .. }),
        "{e}"
    );
    assert!(old.is_hung());

    // The old instance cannot be stopped under its running call; the new one takes over and
    // the old library is honestly reported as still mapped.
    let outcome = registry.reload("stuck", "test").unwrap();
    assert_eq!(outcome.new_generation, 2);
    assert!(outcome.old_unload.is_none(), "{outcome:?}");
    assert!(outcome.state_lost, "{outcome:?}");
    // Not a timing goal: before, the swap waited out a drain of at least a second.
    assert!(
        outcome.held_ms < 1000.0,
        "the swap waited on the hung instance: {outcome:?}"
    );
    let new = registry.instance("stuck").unwrap();
    assert!(!new.is_hung());
    assert_eq!(
        new.health().unwrap().status,
        hermes_host::message::HealthStatus::Healthy
    );
    assert_eq!(
        registry.resident_stale_libraries().map(|v| v.len()),
        Some(1)
    );

    // When the hung call returns, the old instance is stopped and its library unmapped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while registry.resident_stale_libraries() != Some(vec![]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung instance's library never went"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    registry.shutdown();
}

#[test]
fn concurrent_hotreload_enables_persist_both_and_a_corrupt_state_file_is_logged() {
    let t = TestDir::new();
    t.install_copy("lb", "hermes_loopback");
    t.install_copy("lb2", "hermes_loopback");
    let platforms = "[platforms.lb]\n[platforms.lb2]\n";
    let mut server = Server::start_with(&t, platforms, &["--dev"]);
    let state = t.path().join("state/hotreload.json");
    for round in 0..5 {
        let enables: Vec<_> = ["lb", "lb2"]
            .into_iter()
            .map(|id| {
                let (bin, config) = (util::bin(), server.config.clone());
                std::thread::spawn(move || {
                    std::process::Command::new(bin)
                        .arg("--config")
                        .arg(config)
                        .args(["plugin", "hotreload-enable", id])
                        .status()
                        .unwrap()
                })
            })
            .collect();
        for enable in enables {
            assert!(enable.join().unwrap().success());
        }
        let persisted = std::fs::read_to_string(&state).unwrap();
        assert!(
            persisted.contains("\"lb\"") && persisted.contains("\"lb2\""),
            "round {round}: {persisted}"
        );
        for id in ["lb", "lb2"] {
            assert!(
                server
                    .cli(&["plugin", "hotreload-disable", id])
                    .status
                    .success()
            );
        }
    }
    // A plugin watched but not configured is listed too.
    t.install_copy("lb3", "hermes_loopback");
    assert!(server.terminate().success());
    let mut server = Server::start_with(&t, platforms, &["--dev"]);
    assert!(
        server
            .cli(&["plugin", "hotreload-enable", "lb3"])
            .status
            .success()
    );
    let status = server.cli(&["plugin", "hotreload-status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let lb3 = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "lb3")
        .unwrap_or_else(|| panic!("lb3 missing: {status}"));
    assert_eq!(lb3["watching"], true);
    assert!(server.terminate().success());
    std::fs::write(&state, "{ not json").unwrap();
    let server = Server::start_with(&t, platforms, &["--dev"]);
    assert!(
        server
            .log()
            .contains("the persisted hot-reload watches do not parse"),
        "{}",
        server.log()
    );
}

#[test]
fn a_library_rebuilt_while_another_reload_drains_is_loaded_after_it() {
    let t = TestDir::new();
    let library = t.install_copy("slow", "fixture_panicky");
    // Each generation's stop takes 1.5 s: a reload drains that long.
    let server = Server::start_with(&t, "[platforms.slow]\nhang_stop_ms = 1500\n", &["--dev"]);
    assert!(
        server
            .cli(&["plugin", "hotreload-enable", "slow"])
            .status
            .success()
    );
    std::thread::scope(|scope| {
        let reload = scope.spawn(|| server.cli(&["plugin", "reload", "slow"]));
        server.wait_platform("slow", |p| p["state"] != "running");
        // Rebuilt while that reload drains: after it, the new file is loaded as generation 3
        // (it used to be dropped: "not running, the next load uses it").
        util::replace_like_cargo(&util::lib("fixture_panicky"), &library);
        let out = reload.join().unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    server.wait_platform("slow", |p| p["generation"] == 3 && p["state"] == "running");
}
