//! Libraries that crash the process that loads them: the probe refuses them before the host
//! opens them (at `plugin check`, at first use, at hot reload), and a crash the probe cannot see
//! (in the plugin's `start`) quarantines the library at the next start.

use std::{fs, os::unix::process::ExitStatusExt as _, path::Path, sync::Arc};

use hermes_host::{
    loader::DiscardInbound,
    probe::ProbeError,
    registry::{LoadFailure, RegistryError},
};

use crate::util::{self, Server, TestDir};

/// The debug loopback library with its whole `.text` section zeroed: the ELF headers and
/// segment bounds are intact (the loader's ELF check passes), the code is not.
fn zeroed_code_library() -> Vec<u8> {
    let mut bytes = fs::read(util::lib("hermes_loopback")).unwrap();
    let u16_at =
        |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize;
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&bytes, 0x28),
        u16_at(&bytes, 0x3a),
        u16_at(&bytes, 0x3c),
        u16_at(&bytes, 0x3e),
    );
    let section = |i: usize| shoff + i * shentsize;
    let names = u64_at(&bytes, section(shstrndx) + 24);
    let text = (0..shnum)
        .find(|&i| {
            let name = names + u32_at(&bytes, section(i));
            bytes[name..].starts_with(b".text\0")
        })
        .expect("the library has a .text section");
    let (offset, size) = (
        u64_at(&bytes, section(text) + 24),
        u64_at(&bytes, section(text) + 32),
    );
    assert!(size > 4096, ".text is {size} bytes");
    bytes[offset..offset + size].fill(0);
    bytes
}

fn check(t: &TestDir, id: &str) -> (bool, String) {
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(t.config(""))
        .args(["plugin", "check", id])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_library_with_zeroed_code_is_refused_by_the_probe_at_check_first_use_and_hot_reload() {
    let t = TestDir::new();
    let zeroed = zeroed_code_library();
    t.install_bytes("broken", &zeroed);
    let library = t.install_copy("lb", "hermes_loopback");

    let (ok, text) = check(&t, "broken");
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL probe") && text.contains("crashed the probe with SIG"),
        "{text}"
    );

    // First use at start-up: refused with the reason; the gateway and the other platform serve.
    let server = Server::start_with(&t, "[platforms.broken]\n[platforms.lb]\n", &["--dev"]);
    let broken = server.platform("broken");
    assert_eq!(broken["state"], "failed", "{broken}");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("crashed the probe with SIG"),
        "{broken}"
    );
    let (status, body) = server.post("/api/platforms/lb/send", r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");

    // Hot reload: the damaged file is refused, generation 1 keeps serving.
    let out = server.cli(&["plugin", "hotreload-enable", "lb"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let staged = t.path().join("zeroed.so");
    fs::write(&staged, &zeroed).unwrap();
    util::replace_like_cargo(&staged, &library);
    server.wait_platform("lb", |p| p["reloads"]["refused"] == 1);
    let text =
        String::from_utf8_lossy(&server.cli(&["plugin", "hotreload-status"]).stdout).into_owned();
    assert!(text.contains("crashed the probe with SIG"), "{text}");
    let (status, body) = server.post("/api/platforms/lb/send", r#"{"chat_id":"c","text":"y"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.platform("lb")["generation"], 1);
}

#[test]
fn a_constructor_that_crashes_is_refused_by_the_probe_and_this_process_lives() {
    let t = TestDir::new();
    t.install("ctor", "fixture_ctor_crash", 1);
    let (ok, text) = check(&t, "ctor");
    assert!(!ok, "{text}");
    assert!(text.contains("crashed the probe with SIGSEGV"), "{text}");

    // In this very process: without the probe, this load would kill the test.
    let registry = t.registry("[platforms.ctor]\n", Arc::new(DiscardInbound));
    match registry.instance("ctor") {
        Err(RegistryError::LoadFailed { cause, .. }) => match &*cause {
            LoadFailure::Probe(ProbeError::Crashed { signal }) => assert_eq!(signal, "SIGSEGV"),
            other => panic!("{other}"),
        },
        Ok(_) => panic!("the crashing library was loaded"),
        Err(other) => panic!("{other}"),
    }
    assert!(util::mapped_containing("fixture_ctor_crash").is_empty());
}

#[test]
fn a_crash_while_starting_quarantines_that_library_until_it_is_lifted() {
    let t = TestDir::new();
    t.install("crashy", "fixture_panicky", 1);
    t.install("lb", "hermes_loopback", 1);
    // lb starts on demand: no other load is in progress when crashy aborts, so its marker is
    // the only one and names the culprit (several would make suspects, loaded alone next time).
    let extra =
        "[platforms.crashy]\nabort_in = [\"start\"]\n[platforms.lb]\nstart = \"on_demand\"\n";

    // The probe passes (it does not start the plugin); the in-process start aborts the server.
    let first = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n{extra}"
        )))
        .args(["--log-level", "error", "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(first.signal(), Some(libc::SIGABRT), "{first:?}");
    let markers = t.path().join("state/loading");
    assert_eq!(
        fs::read_dir(&markers).unwrap().count(),
        1,
        "the load left its marker"
    );

    // The next start quarantines that library; everything else starts and serves.
    let server = Server::start(&t, extra);
    let crashy = server.platform("crashy");
    assert_eq!(crashy["state"], "failed", "{crashy}");
    assert_eq!(crashy["quarantined"], true, "{crashy}");
    let error = crashy["error"].as_str().unwrap();
    assert!(
        error.contains("quarantined") && error.contains("plugin unquarantine crashy"),
        "{error}"
    );
    assert!(server.log().contains("died while loading or starting"));
    let (status, body) = server.post("/api/platforms/lb/send", r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hermes_platforms_quarantined 1"),
        "{metrics}"
    );
    assert_eq!(fs::read_dir(&markers).unwrap().count(), 0);
    drop(server);

    let lifted = server_cli(&t, &["plugin", "unquarantine", "crashy"]);
    assert!(
        lifted.contains("lifted the quarantine of crashy"),
        "{lifted}"
    );
    let again = server_cli(&t, &["plugin", "unquarantine", "crashy"]);
    assert!(again.contains("crashy is not quarantined"), "{again}");
    assert!(!quarantine_list(&t.path().join("state")).contains("crashy"));
}

fn server_cli(t: &TestDir, args: &[&str]) -> String {
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(t.path().join("hermes.toml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn quarantine_list(state: &Path) -> String {
    fs::read_to_string(state.join("quarantine.json")).unwrap_or_default()
}

#[test]
fn a_fatal_signal_in_a_plugin_names_it_and_two_in_a_row_quarantine_it() {
    let t = TestDir::new();
    t.install("crashy", "fixture_crashy", 1);
    let crash = |text: &str| -> String {
        let mut server = Server::start(&t, "[platforms.crashy]\n");
        let (status, _) = server.post(
            "/api/platforms/crashy/send",
            &format!(r#"{{"chat_id":"c","text":"{text}"}}"#),
        );
        assert_eq!(status, 0, "the gateway died mid-request");
        let exit = server.child.wait().unwrap();
        assert!(exit.signal().is_some(), "{exit:?}");
        server.log()
    };
    // An abort in libc, called by the plugin on its worker thread: named by the thread.
    let first = crash("crash:abort");
    assert!(
        first.contains("hermes-host: fatal signal SIGABRT at pc 0x")
            && first.contains("on a worker thread of platform=crashy content=")
            && first.contains("generation=1"),
        "{first}"
    );
    // A write through a null pointer in the plugin's own code: named by the faulting address.
    let second = crash("crash:null");
    assert!(
        second.contains("the previous run of the gateway died of a fatal signal"),
        "{second}"
    );
    assert!(
        second.contains("hermes-host: fatal signal SIGSEGV at pc 0x")
            && second.contains("in the code of platform=crashy content=")
            && second.contains("libfixture_crashy.so"),
        "{second}"
    );
    // Twice in a row with the same library: it is quarantined, the gateway serves on.
    let server = Server::start(&t, "[platforms.crashy]\n");
    let crashy = server.platform("crashy");
    assert_eq!(crashy["quarantined"], true, "{crashy}\n{}", server.log());
    assert!(
        crashy["error"]
            .as_str()
            .unwrap()
            .contains("fatal signal in its code 2 times in a row"),
        "{crashy}"
    );
    assert_eq!(server.get("/health").0, 200);
}
