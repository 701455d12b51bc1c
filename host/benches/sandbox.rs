//! The sandbox of `isolation = "process"`, on (`strict`) against off, side by side in one run,
//! release builds throughout (the release loopback and crashy fixture, the release
//! `hermes-host` as the child program).
//!
//! - Load and start: unload, then first use (the child spawned, sandboxed, the library opened,
//!   the instance started); 30 of each, interleaved.
//! - Calls: a no-op (`health`) and a send, interleaved rounds of 2,000 each, p50 and p99.
//! - Restart after a crash, through a release `serve`: from the send that crashes the child to
//!   the next send served; 10 platforms of each kind, each crashed once (no backoff), in turn.
//!
//! Run with `make bench` (or `cargo build --workspace --release` first, then
//! `cargo bench -p hermes-host --bench sandbox`).

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{
    crash_to_served, ms, percentile, registry_with, release_with, scratch, serve_release, us,
};
use hermes_host::{message::Outbound, registry::Registry};

/// The platforms' tables: the sandbox off, and strict.
const KINDS: [(&str, &str); 2] = [("off", "off"), ("on", "strict")];

fn main() {
    let release = release_with(&[
        "libhermes_loopback.so",
        "libfixture_crashy.so",
        "hermes-host",
    ]);
    println!("## sandbox (`cargo bench -p hermes-host --bench sandbox`)\n");
    let dir = scratch();
    let registry = registry(dir.path(), &release);
    loads(&registry);
    calls(&registry);
    registry.shutdown();
    restart(dir.path(), &release);
}

fn manifest(dir: &Path, id: &str, library: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        format!("[plugin]\nid = \"{id}\"\nname = \"{id}\"\nversion = \"0.1.0\"\napi = 1\nlibrary = \"{library}\"\n"),
    )
    .unwrap();
}

fn registry(dir: &Path, release: &Path) -> Registry {
    let mut text = format!(
        "[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [\"{}\"]\nstate_dir = \"state\"\nshadow_dir = \"state/shadow\"\n",
        release.display()
    );
    for (id, mode) in KINDS {
        manifest(&dir.join("plugins").join(id), id, "hermes_loopback");
        text.push_str(&format!(
            "\n[platforms.{id}]\nworkers = 2\nisolation = \"process\"\nsandbox = \"{mode}\"\n"
        ));
    }
    registry_with(dir, release, &text)
}

fn row(what: &str, off: &mut [Duration], on: &mut [Duration], show: fn(Duration) -> String) {
    let (a50, a99) = (percentile(off, 0.5), percentile(off, 0.99));
    let (b50, b99) = (percentile(on, 0.5), percentile(on, 0.99));
    println!(
        "| {what} | {} | {} | {} | {} | {:+.3} ms | {:.2}x |",
        show(a50),
        show(a99),
        show(b50),
        show(b99),
        (b50.as_secs_f64() - a50.as_secs_f64()) * 1e3,
        b50.as_secs_f64() / a50.as_secs_f64()
    );
}

fn header(title: &str) {
    println!("### {title}\n");
    println!(
        "| what | off p50 | p99 | strict p50 | p99 | strict - off (p50) | strict / off (p50) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
}

fn loads(registry: &Registry) {
    header("Load and start in a child (unload, then first use; 30 each, interleaved)");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..31 {
        for (id, samples) in [("off", &mut off), ("on", &mut on)] {
            registry.unload(id).ok();
            let started = Instant::now();
            registry.instance(id).unwrap();
            if round > 0 {
                samples.push(started.elapsed());
            }
        }
    }
    row("load and start", &mut off, &mut on, ms);
    println!();
}

fn calls(registry: &Registry) {
    header("Calls, one at a time (10 interleaved rounds of 2,000)");
    let off = registry.instance("off").unwrap();
    let on = registry.instance("on").unwrap();
    let message = Outbound::new("bench", "x");
    for _ in 0..2_000 {
        for instance in [&off, &on] {
            instance.health().unwrap();
            instance.send(&message).unwrap();
        }
    }
    let (mut h_off, mut h_on, mut s_off, mut s_on) = (vec![], vec![], vec![], vec![]);
    for round in 0..10 {
        // Who goes first alternates, so neither gains from the other's warm-up.
        let mut health = [(&off, &mut h_off), (&on, &mut h_on)];
        let mut sends = [(&off, &mut s_off), (&on, &mut s_on)];
        if round % 2 == 1 {
            health.reverse();
            sends.reverse();
        }
        for (instance, samples) in health {
            for _ in 0..2_000 {
                let started = Instant::now();
                std::hint::black_box(instance.health().unwrap());
                samples.push(started.elapsed());
            }
        }
        for (instance, samples) in sends {
            for _ in 0..2_000 {
                let started = Instant::now();
                std::hint::black_box(instance.send(&message).unwrap());
                samples.push(started.elapsed());
            }
        }
    }
    row("no-op (`health`)", &mut h_off, &mut h_on, us);
    row(
        "send (a `deliver` round trip inside)",
        &mut s_off,
        &mut s_on,
        us,
    );
    println!();
}

fn restart(dir: &Path, release: &Path) {
    header("Restart after a crash (release `serve`, 10 platforms of each, crashed once each)");
    let n = 10;
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[plugins]\ndirs = [\"crashy\"]\nlibrary_dirs = [\"{}\"]\nstate_dir = \"state\"\nshadow_dir = \"state/shadow\"\n",
        release.display()
    );
    for i in 0..n {
        for (kind, mode) in KINDS {
            let id = format!("{kind}{i}");
            manifest(&dir.join("crashy").join(&id), &id, "fixture_crashy");
            config.push_str(&format!(
                "\n[platforms.{id}]\nisolation = \"process\"\nsandbox = \"{mode}\"\n"
            ));
        }
    }
    let path = dir.join("serve.toml");
    std::fs::write(&path, config).unwrap();
    let server = serve_release(release, dir, &path);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (kind, samples) in [("off", &mut off), ("on", &mut on)] {
            samples.push(crash_to_served(&server.addr, &format!("{kind}{i}")));
        }
    }
    row("crash to served again", &mut off, &mut on, ms);
    println!();
}
