//! The registry: discovery from manifests alone, lazy and shared loads, errors left on entries.

use std::{
    sync::{Arc, Barrier},
    thread,
};

use hermes_host::{
    loader::DiscardInbound,
    registry::{DiscoveryProblem, EntryState, LoadFailure, RegistryError},
};

use crate::util::{self, TestDir};

#[test]
fn listing_100_installed_plugins_loads_nothing() {
    let t = TestDir::new();
    for i in 0..100 {
        t.install(&format!("p{i:03}"), "hermes_loopback", 1);
    }
    let registry = t.registry("", Arc::new(DiscardInbound));
    let list = registry.list();
    assert_eq!(list.len(), 100);
    assert!(
        list.iter()
            .all(|s| s.state == EntryState::Registered && s.generation == 0)
    );
    assert!(list.iter().all(|s| registry.is_registered(&s.id)));
    for s in &list {
        registry.entry(&s.id).unwrap().status();
    }
    assert_eq!(registry.loads(), 0);
    assert!(!t.shadow().exists(), "listing created the shadow dir");
    assert!(util::mapped_containing("hermes_loopback").is_empty());
}

#[test]
fn sixteen_concurrent_first_uses_share_one_load() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let registry = Arc::new(t.registry("[platforms.loopback]\n", Arc::new(DiscardInbound)));
    let barrier = Arc::new(Barrier::new(16));
    let instances: Vec<_> = (0..16)
        .map(|_| {
            let registry = Arc::clone(&registry);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                registry.instance("loopback").unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(instances.iter().all(|i| Arc::ptr_eq(i, &instances[0])));
    assert_eq!(instances[0].generation(), 1);
    assert_eq!(registry.loads(), 1);
    let status = registry.entry("loopback").unwrap().status();
    assert_eq!((status.state, status.generation), (EntryState::Running, 1));
    let shadow = t.shadow().canonicalize().unwrap();
    assert_eq!(util::mapped_containing(&shadow.to_string_lossy()).len(), 1);
    drop(instances);
    assert_eq!(registry.shutdown().len(), 1);
    assert!(util::mapped_containing(&shadow.to_string_lossy()).is_empty());
}

#[test]
fn a_failed_load_leaves_its_error_and_the_rest_serves() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install_bytes("broken", b"not a library");
    t.install("absent", "no_such_library", 1);
    let registry = t.registry("", Arc::new(DiscardInbound));

    let e = registry.instance("broken").unwrap_err();
    assert!(matches!(e, RegistryError::LoadFailed { .. }), "{e}");
    let status = registry.entry("broken").unwrap().status();
    assert_eq!(status.state, EntryState::Failed);
    assert!(
        status
            .error
            .unwrap()
            .contains("libcustom_broken.so: not a plugin library")
    );

    // A use right after the failure gets the same error without another load.
    let loads = registry.loads();
    let again = registry.instance("broken").unwrap_err();
    assert_eq!(again.to_string(), e.to_string());
    // The cause is kept as it is, shared by both answers.
    match (&again, &e) {
        (
            RegistryError::LoadFailed { cause: a, .. },
            RegistryError::LoadFailed { cause: b, .. },
        ) => {
            assert!(Arc::ptr_eq(a, b));
            assert!(matches!(**a, LoadFailure::Library(_)), "{a:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        registry.loads(),
        loads,
        "a failed library was loaded again at once"
    );

    let e = registry.instance("absent").unwrap_err().to_string();
    assert!(
        e.contains("libno_such_library.so not found (looked in"),
        "{e}"
    );

    let instance = registry.instance("loopback").unwrap();
    assert_eq!(instance.generation(), 1);
    assert!(matches!(
        registry.instance("nope"),
        Err(RegistryError::Unknown(_))
    ));
    drop(instance);
    registry.shutdown();
}

#[test]
fn bad_manifests_are_reported_and_the_others_register() {
    let t = TestDir::new();
    t.install("good", "hermes_loopback", 1);
    let bad_id = t.install("bad-id", "hermes_loopback", 1);
    std::fs::write(
        bad_id.join("plugin.toml"),
        "[plugin]\nid = \"Bad Id\"\nname = \"x\"\nversion = \"1\"\napi = 1\nlibrary = \"x\"\n",
    )
    .unwrap();
    let missing = t.install("missing", "hermes_loopback", 1);
    std::fs::write(
        missing.join("plugin.toml"),
        "[plugin]\nid = \"missing\"\nname = \"x\"\napi = 1\nlibrary = \"x\"\n",
    )
    .unwrap();
    let dup = t.install("zz-dup", "hermes_loopback", 1);
    std::fs::write(
        dup.join("plugin.toml"),
        std::fs::read_to_string(t.plugins().join("good/plugin.toml")).unwrap(),
    )
    .unwrap();

    let registry = t.registry("", Arc::new(DiscardInbound));
    // The broken ones stay listed, as `invalid` under their folder's name, with the reason.
    let listed: Vec<_> = registry
        .list()
        .into_iter()
        .map(|s| (s.id, s.state, s.error.unwrap_or_default()))
        .collect();
    assert_eq!(
        listed
            .iter()
            .map(|(id, state, _)| (id.as_str(), *state))
            .collect::<Vec<_>>(),
        [
            ("bad-id", EntryState::Invalid),
            ("good", EntryState::Registered),
            ("missing", EntryState::Invalid)
        ]
    );
    assert!(listed[2].2.contains("missing/plugin.toml"), "{listed:?}");
    match registry.instance("missing") {
        Err(RegistryError::LoadFailed { cause, .. }) => {
            assert!(matches!(*cause, LoadFailure::Manifest(_)), "{cause}");
        }
        Ok(_) => panic!("an invalid plugin was loaded"),
        Err(other) => panic!("{other}"),
    }
    let problems: Vec<String> = registry
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("bad-id/plugin.toml: field `plugin.id`")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing/plugin.toml") && p.contains("version")),
        "{problems:#?}"
    );
    assert!(
        registry
            .problems()
            .iter()
            .any(|p| matches!(p, DiscoveryProblem::DuplicateId { id, .. } if id == "good"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("good/plugin.toml and") && p.contains("zz-dup/plugin.toml"))
    );
}

#[test]
fn an_api_mismatch_is_refused_before_dlopen() {
    let t = TestDir::new();
    t.install("future", "hermes_loopback", 2);
    let registry = t.registry("[platforms.future]\n", Arc::new(DiscardInbound));
    let status = registry.entry("future").unwrap().status();
    assert_eq!(status.state, EntryState::Failed);
    assert!(
        status
            .error
            .unwrap()
            .contains("field `plugin.api`: the plugin declares API 2, this host speaks 1")
    );
    assert!(registry.instance("future").is_err());
    assert_eq!(registry.loads(), 0);
    assert!(util::mapped_containing("hermes_loopback").is_empty());
}

#[test]
fn unload_then_use_loads_the_next_generation() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let registry = t.registry("", Arc::new(DiscardInbound));
    assert_eq!(registry.unload("loopback").unwrap(), None);
    let first = registry.instance("loopback").unwrap();
    assert_eq!(first.generation(), 1);
    let report = registry.unload("loopback").unwrap().expect("was running");
    assert!(report.clean(), "{report:?}");
    assert_eq!(
        registry.entry("loopback").unwrap().status().state,
        EntryState::Unloaded
    );
    assert!(
        first
            .send(&hermes_host::message::Outbound::new("c", "x"))
            .is_err()
    );
    let second = registry.instance("loopback").unwrap();
    assert_eq!(second.generation(), 2);
    assert_eq!(registry.loads(), 2);
    registry.shutdown();
}

#[test]
fn a_slow_start_shows_as_starting_and_an_unload_waits_for_it() {
    let t = TestDir::new();
    t.install("slow", "fixture_panicky", 1);
    let registry = Arc::new(t.registry(
        "[platforms.slow]\nhang_start_ms = 400\n",
        Arc::new(DiscardInbound),
    ));
    let entry = Arc::clone(registry.entry("slow").unwrap());
    assert_eq!(entry.status().state, EntryState::Registered);
    let user = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || registry.instance("slow").map(|i| i.generation()))
    };
    // The plugin's start sleeps: the entry shows `starting` until it returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while entry.status().state != EntryState::Starting {
        assert!(std::time::Instant::now() < deadline, "{:?}", entry.status());
        thread::yield_now();
    }
    assert!(
        entry.running().is_none(),
        "nothing serves before start returns"
    );
    // An unload now waits for the load in progress, then stops what it started.
    let report = registry.unload("slow").unwrap();
    assert!(
        report.is_some_and(|r| r.clean()),
        "the started instance was unloaded"
    );
    assert_eq!(user.join().unwrap().unwrap(), 1);
    let status = entry.status();
    assert_eq!((status.state, status.generation), (EntryState::Unloaded, 1));
    // Every step of the machine is allowed, and the ones it skips are not.
    assert!(EntryState::Starting.can_become(EntryState::Running));
    assert!(!EntryState::Registered.can_become(EntryState::Running));
    assert!(!EntryState::Stopping.can_become(EntryState::Loading));
}

#[test]
fn a_start_that_returns_after_its_timeout_is_stopped_and_its_library_unloaded() {
    let t = TestDir::new();
    t.install("late", "fixture_panicky", 1);
    let registry = t.registry(
        "[platforms.late]\nhang_start_ms = 600\ncall_timeout_ms = 100\n",
        Arc::new(DiscardInbound),
    );
    let error = registry.instance("late").err().unwrap().to_string();
    assert!(
        error.contains("start did not return within 100 ms"),
        "{error}"
    );
    // The start still runs: its library is still mapped, and nothing serves.
    assert_eq!(
        registry.resident_stale_libraries().map(|v| v.len()),
        Some(1)
    );
    assert!(registry.running("late").is_none());
    // Once it returns, what it started is stopped and the library unmapped (it used to stay,
    // one more resident library per timed-out start).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while registry.resident_stale_libraries() != Some(vec![]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the late start's library never went: {:?}",
            registry.resident_stale_libraries()
        );
        thread::sleep(std::time::Duration::from_millis(50));
    }
    // The late thread is gone too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while util::thread_names().iter().any(|n| n.contains("-late")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            util::thread_names()
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn path_keys_resolve_to_absolute_paths_from_a_relative_config_file() {
    let config =
        hermes_host::config::Config::parse("", std::path::Path::new("hermes.toml")).unwrap();
    let options =
        hermes_host::registry::RegistryOptions::from_config(&config, Arc::new(DiscardInbound));
    assert!(
        options.config_dir.is_absolute(),
        "{}",
        options.config_dir.display()
    );
    assert_eq!(options.config_dir, std::env::current_dir().unwrap());
}
