//! `isolation = "process"`: the same cdylib in a supervised child. Every fault of the crashy
//! fixture ends the child alone: the gateway serves on, the platform restarts and serves again.

use std::os::fd::OwnedFd;

use crate::util::{Server, TestDir};

/// crashy isolated (a short call timeout, so a hung call is killed soon; a memory limit, so an
/// unbounded allocation fails) and the loopback in process beside it.
const CONFIG: &str = "[platforms.crashy]\nisolation = \"process\"\ncall_timeout_ms = 1000\nmemory_limit_mb = 512\n\n[platforms.lb]\n";

fn setup() -> (TestDir, Server) {
    let t = TestDir::new();
    install_crashy(&t);
    t.install("lb", "hermes_loopback", 1);
    let server = Server::start(&t, CONFIG);
    (t, server)
}

fn install_crashy(t: &TestDir) {
    let dir = t.install("crashy", "fixture_crashy", 1);
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("{text}optional_env = [\"CRASHY_SECRET\"]\n"),
    )
    .unwrap();
}

/// The pid of the child serving `platform`.
fn child_pid(server: &Server, platform: &str) -> i32 {
    server.platform(platform)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid: {}", server.platform(platform))) as i32
}

/// Waits for process `pid` (not our child) to end, through a pidfd.
fn wait_gone(pid: i32) {
    let Ok(fd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) else {
        return; // Already gone.
    };
    let fd: OwnedFd = fd;
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    let n = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
    assert_eq!(n, 1, "process {pid} still runs after 10 s");
}

#[test]
fn every_fault_in_the_child_leaves_the_gateway_serving_and_the_platform_restarts() {
    let (_t, server) = setup();
    let (status, body) = server.send("crashy", "c", "hello");
    assert_eq!(status, 200, "{body}");
    // The gateway never maps the isolated library; its child does.
    let pid = child_pid(&server, "crashy");
    assert!(server.mapped("fixture_crashy").is_empty());
    let child_maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(child_maps.contains("fixture_crashy"));

    for (fault, expect_status, how) in [
        ("crash:null", 503, "killed by SIGSEGV"),
        ("crash:abort", 503, "killed by SIGABRT"),
        ("crash:stack", 503, "killed by SIG"),
        ("crash:alloc", 503, "killed by SIGABRT"),
        ("crash:exit3", 503, "exited with code 3"),
        (
            "crash:hang",
            504,
            "killed by SIGKILL: the gateway killed it because its send call was not answered within 2000 ms",
        ),
    ] {
        let before = server.platform("crashy")["generation"].as_u64().unwrap();
        let (status, body) = server.send("crashy", "c", fault);
        assert_eq!(status, expect_status, "{fault}: {body}");
        assert_eq!(body["retryable"], true, "{fault}: {body}");
        // Another platform answers at once.
        let (status, body) = server.send("lb", "c", "still here");
        assert_eq!(status, 200, "after {fault}: {body}");
        // The crashed platform restarts in a new child and serves again.
        let p = server.wait_platform("crashy", |p| {
            p["state"] == "running" && p["generation"].as_u64() > Some(before)
        });
        let note = p["error"].as_str().unwrap_or_default();
        assert!(note.contains(how), "{fault}: {note}");
        let (status, body) = server.send("crashy", "c", "hello again");
        assert_eq!(status, 200, "after {fault}: {body}");
        assert_ne!(child_pid(&server, "crashy"), pid);
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hermes_plugin_crashes_total{platform=\"crashy\"} 6"),
        "{metrics}"
    );
    assert!(server.mapped("fixture_crashy").is_empty());
}

#[test]
fn a_child_killed_from_outside_fails_its_calls_retryable_and_is_restarted() {
    let (_t, server) = setup();
    let (status, _) = server.send("crashy", "c", "warm");
    assert_eq!(status, 200);
    let pid = child_pid(&server, "crashy");
    let addr = server.addr.clone();
    let in_flight = std::thread::spawn(move || {
        crate::util::http(
            &addr,
            "POST",
            "/api/platforms/crashy/send",
            Some(r#"{"chat_id":"c","text":"crash:hang"}"#),
            &[],
        )
    });
    server.wait_platform("crashy", |p| p["in_flight"] == 1);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["retryable"], true, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("killed by SIGKILL"),
        "{body}"
    );
    server.wait_platform("crashy", |p| {
        p["state"] == "running" && p["generation"] == 2
    });
    let (status, body) = server.send("crashy", "c", "back");
    assert_eq!(status, 200, "{body}");
    assert!(
        server
            .log()
            .contains("the plugin's process was killed by SIGKILL")
    );
}

#[test]
fn reload_starts_a_new_child_beside_the_old_and_a_crash_hands_on_the_last_snapshot() {
    let (_t, server) = setup();
    for text in ["a", "b"] {
        assert_eq!(server.send("crashy", "c", text).0, 200);
    }
    let old = child_pid(&server, "crashy");
    let out = server.cli(&["plugin", "reload", "crashy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = child_pid(&server, "crashy");
    assert_ne!(old, new);
    wait_gone(old);
    let health = |server: &Server| {
        server.platform("crashy")["health"]["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The state crossed the reload: two sends so far.
    assert!(
        health(&server).starts_with("sends=2 "),
        "{}",
        health(&server)
    );
    assert_eq!(server.send("crashy", "c", "c").0, 200);
    assert!(
        health(&server).starts_with("sends=3 "),
        "{}",
        health(&server)
    );

    // After a crash the new child starts with the snapshot the last reload handed over: the
    // send made since is lost (as docs/isolation.md says).
    assert_eq!(server.send("crashy", "c", "crash:abort").0, 503);
    server.wait_platform("crashy", |p| {
        p["state"] == "running" && p["generation"] == 3
    });
    assert!(
        health(&server).starts_with("sends=2 "),
        "{}",
        health(&server)
    );

    // The plugin's log records reach the gateway's log under its id and generation.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("crashy started sends=2")
            && l.contains("platform=\"crashy\"")
            && l.contains("generation=3")),
        "{log}"
    );
    // SIGTERM stops the child in order: it unloads and exits.
    let child = child_pid(&server, "crashy");
    let mut server = server;
    assert!(server.terminate().success());
    wait_gone(child);
}

#[test]
fn the_child_gets_only_the_basics_and_the_manifests_variables() {
    let t = TestDir::new();
    install_crashy(&t);
    t.install("lb", "hermes_loopback", 1);
    let mut server = Server::start_env(
        &t,
        CONFIG,
        &[
            ("CRASHY_SECRET", "for crashy"),
            ("GATEWAY_ONLY_SECRET", "not for plugins"),
        ],
    );
    let p = server.platform("crashy");
    let detail = p["health"]["detail"].as_str().unwrap();
    let env = detail.split("env=").nth(1).unwrap();
    let names: Vec<&str> = env.split(',').collect();
    assert!(names.contains(&"CRASHY_SECRET"), "{detail}");
    assert!(
        names
            .iter()
            .all(|n| ["PATH", "HOME", "LANG", "CRASHY_SECRET"].contains(n)),
        "{detail}"
    );

    // A kill -9 of the gateway takes the child along.
    let pid = p["pid"].as_i64().unwrap() as i32;
    server.kill9();
    wait_gone(pid);
}

#[test]
fn an_isolated_platform_that_cannot_open_reports_why_and_the_rest_serves() {
    let t = TestDir::new();
    t.install_bytes("broken", b"not an ELF file at all");
    t.install("lb", "hermes_loopback", 1);
    let server = Server::start(
        &t,
        "[platforms.broken]\nisolation = \"process\"\nstart = \"on_demand\"\n[platforms.lb]\n",
    );
    let (status, body) = server.send("broken", "c", "x");
    assert_eq!(status, 503, "{body}");
    let p = server.platform("broken");
    let error = p["error"].as_str().unwrap();
    assert!(
        error.contains("isolated child for `broken`") && error.contains("not a plugin library"),
        "{error}"
    );
    assert_eq!(server.send("lb", "c", "fine").0, 200);
}

#[test]
fn hot_reload_of_an_isolated_platform_refuses_a_library_that_kills_its_child_and_takes_a_good_one()
{
    let t = TestDir::new();
    let library = t.install_copy("lb", "hermes_loopback");
    let server = Server::start_with(&t, "[platforms.lb]\nisolation = \"process\"\n", &["--dev"]);
    assert_eq!(server.send("lb", "c", "one").0, 200);
    let first = child_pid(&server, "lb");
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A library whose constructor writes through null: the new child dies while loading it,
    // the reload is refused, and the old child serves on.
    crate::util::replace_like_cargo(&crate::util::lib("fixture_ctor_crash"), &library);
    let p = server.wait_platform("lb", |p| p["reloads"]["refused"] == 1);
    let reason = p["reloads"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("killed by SIGSEGV while loading"),
        "{reason}"
    );
    assert_eq!(p["generation"], 1);
    assert_eq!(child_pid(&server, "lb"), first);
    assert_eq!(server.send("lb", "c", "two").0, 200);

    // A good build: a new child beside the old, which goes once the new one serves.
    crate::util::replace_like_cargo(&crate::util::variant_lib(), &library);
    let p = server.wait_platform("lb", |p| p["reloads"]["done"] == 1);
    assert_eq!(p["version"], "0.2.0-next", "{p}");
    assert_eq!(p["generation"], 2);
    let second = child_pid(&server, "lb");
    assert_ne!(second, first);
    wait_gone(first);
    let (status, body) = server.send("lb", "c", "three");
    assert_eq!(
        (status, body["generation"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    assert!(server.mapped("hermes_loopback").is_empty());
}

#[test]
fn a_manual_reload_during_a_crash_backoff_is_not_restarted_again() {
    let (_t, server) = setup();
    // Crashes in a row: the restarts wait 0, 100, 200, 400 and 800 ms.
    for _ in 0..5 {
        let before = server.platform("crashy")["generation"].as_u64().unwrap();
        assert_eq!(server.send("crashy", "c", "crash:abort").0, 503);
        server.wait_platform("crashy", |p| {
            p["state"] == "running" && p["generation"].as_u64() > Some(before)
        });
    }
    // The sixth waits 1.6 s; an operator reloads it in the meantime.
    assert_eq!(server.send("crashy", "c", "crash:abort").0, 503);
    server.wait_platform("crashy", |p| p["state"] == "crashed");
    let out = server.cli(&["plugin", "reload", "crashy"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("had crashed (its process"), "{said}");
    assert!(!said.contains("hung"), "{said}");
    let reloaded = server.platform("crashy")["generation"].as_u64().unwrap();
    // When the backoff ends, the supervisor finds the crashed generation gone and leaves the
    // healthy one alone.
    server.wait_log("the crashed generation was replaced before its restart", 1);
    assert_eq!(
        server.platform("crashy")["generation"].as_u64(),
        Some(reloaded)
    );
    assert_eq!(server.send("crashy", "c", "fine").0, 200);
}

#[test]
fn a_send_during_a_crash_restart_waits_for_the_new_generation() {
    let (_t, server) = setup();
    // Crashes in a row, so that the next restart waits (0, 100, 200 ms, then 400 ms).
    for _ in 0..3 {
        let before = server.platform("crashy")["generation"].as_u64().unwrap();
        assert_eq!(server.send("crashy", "c", "crash:abort").0, 503);
        server.wait_platform("crashy", |p| {
            p["state"] == "running" && p["generation"].as_u64() > Some(before)
        });
    }
    let before = server.platform("crashy")["generation"].as_u64().unwrap();
    assert_eq!(server.send("crashy", "c", "crash:abort").0, 503);
    server.wait_platform("crashy", |p| p["state"] == "crashed");
    // Sent while it is down: served by the next generation, not refused at once.
    let (status, body) = server.send("crashy", "c", "while down");
    assert_eq!(status, 200, "{body}");
    assert!(body["generation"].as_u64() > Some(before), "{body}");
}

#[test]
fn what_an_isolated_plugin_prints_is_logged_under_its_id_and_forges_no_line() {
    let (_t, server) = setup();
    let forged =
        r"print:hello\n2026-01-01T00:00:00.000000Z  INFO hermes_host: FORGED-LINE \e[31mred";
    let (status, body) = server.send("crashy", "c", forged);
    assert_eq!(status, 200, "{body}");
    server.wait_log("FORGED-LINE", 2);
    let log = server.log();
    assert!(!log.contains('\x1b'), "a raw escape reached the log");
    for line in log.lines().filter(|l| l.contains("FORGED-LINE")) {
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line}");
        assert!(line.contains("platform=crashy"), "{line}");
        assert!(line.contains("stream=\"std"), "{line}");
    }
    assert!(log.contains("hello"), "{log}");
}
