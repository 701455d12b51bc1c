//! Foundation benchmarks: registering manifests, loading a plugin, calling through an instance.
//!
//! Run with `make bench` (builds the debug and release plugins first). Prints markdown tables
//! for BENCHMARKS.md; every figure is a median over repeated runs in this one process.

use std::{
    hint::black_box,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

mod common;

use common::{median, ms, percentile, target, us};
use hermes_host::{
    loader::{DiscardInbound, Library, StartOptions},
    registry::{Registry, RegistryOptions},
};
use hermes_plugin_api::{Health, Host, OutboundMessage, Plugin, SendError, SendReceipt};

fn ns(d: Duration) -> String {
    format!("{:.1} ns", d.as_secs_f64() * 1e9)
}

fn scratch() -> tempfile::TempDir {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn options(shadow: &Path) -> RegistryOptions {
    RegistryOptions {
        trusted_dirs: Vec::new(),
        lock_file: None,
        signing_keys: None,
        library_dirs: vec![target().join("debug")],
        shadow_dir: shadow.to_owned(),
        platforms: Default::default(),
        sink: Arc::new(DiscardInbound),
        // The raw loader: the probe's cost is measured in the reload bench.
        probe: None,
        child_program: None,
        state_dir: None,
        config_dir: std::path::PathBuf::from("."),
    }
}

fn bench_registration() {
    println!("### Registering manifests (`Registry::discover`, manifests only)\n");
    println!("| manifests | median | per manifest | runs |");
    println!("|---:|---:|---:|---:|");
    for n in [10usize, 100, 1000] {
        let dir = scratch();
        let plugins = dir.path().join("plugins");
        for i in 0..n {
            let p = plugins.join(format!("p{i:04}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("plugin.toml"),
                format!(
                    "[plugin]\nid = \"p{i:04}\"\nname = \"P {i}\"\nversion = \"1.0.0\"\napi = 1\nlibrary = \"hermes_loopback\"\ndescription = \"bench\"\nrequired_env = [\"X_{i}\"]\n"
                ),
            )
            .unwrap();
        }
        let runs = 21;
        let samples: Vec<Duration> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let registry = Registry::discover(
                    std::slice::from_ref(&plugins),
                    options(&dir.path().join("shadow")),
                );
                let elapsed = started.elapsed();
                assert_eq!(registry.list().len(), n);
                elapsed
            })
            .collect();
        let m = median(samples);
        println!("| {n} | {} | {} | {runs} |", ms(m), us(m / n as u32));
    }
    println!();
}

fn bench_load() {
    println!(
        "### Loading loopback (shadow copy + ELF check + dlopen + header and layout checks)\n"
    );
    println!("| build | library size | median load | median unload | runs |");
    println!("|---|---:|---:|---:|---:|");
    for profile in ["debug", "release"] {
        let lib = target().join(profile).join("libhermes_loopback.so");
        if !lib.is_file() {
            println!("| {profile} | (not built) | | | |");
            continue;
        }
        let size = std::fs::metadata(&lib).unwrap().len();
        let dir = scratch();
        let runs = 51;
        let mut loads = Vec::new();
        let mut unloads = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let library = Library::open(&lib, dir.path()).unwrap();
            loads.push(started.elapsed());
            let started = Instant::now();
            assert!(library.unload().clean());
            unloads.push(started.elapsed());
        }
        println!(
            "| {profile} | {:.1} MiB | {} | {} | {runs} |",
            size as f64 / 1048576.0,
            ms(median(loads)),
            ms(median(unloads))
        );
    }
    println!();
}

/// The same no-op `health` as loopback's, compiled into the bench: the direct-call baseline.
struct Direct;

impl Plugin for Direct {
    type Config = ();
    fn start(_: (), _: Host, _: Option<hermes_plugin_api::State>) -> Result<Self, String> {
        Ok(Direct)
    }
    fn send(&self, _: OutboundMessage) -> Result<SendReceipt, SendError> {
        Err(SendError::permanent("no"))
    }
    fn health(&self) -> Health {
        Health::healthy()
    }
    fn stop(self) -> Result<(), String> {
        Ok(())
    }
}

/// An object-safe view of the no-op, for a `&dyn` call.
trait Probe {
    fn probe(&self) -> Health;
}

impl Probe for Direct {
    fn probe(&self) -> Health {
        self.health()
    }
}

fn bench_calls() {
    let profile = if target().join("release/libhermes_loopback.so").is_file() {
        "release"
    } else {
        "debug"
    };
    let lib = target().join(profile).join("libhermes_loopback.so");
    let dir = scratch();
    let instance = Library::open(&lib, dir.path())
        .unwrap()
        .start(StartOptions {
            workers: 1,
            call_timeout: Duration::from_secs(5),
            ..StartOptions::new("loopback", 1, "{}", Arc::new(DiscardInbound))
        })
        .unwrap();

    // Instance path: the caller's thread hands the call to the worker and waits for the answer.
    for _ in 0..2_000 {
        instance.health().unwrap();
    }
    let mut hop: Vec<Duration> = (0..20_000)
        .map(|_| {
            let started = Instant::now();
            black_box(instance.health().unwrap());
            started.elapsed()
        })
        .collect();

    // Raw FFI: the vtable's function pointer, called back to back on the worker thread.
    let batch = 10_000u32;
    let raw = median(
        (0..21)
            .map(|_| instance.time_raw_health_calls(batch).unwrap() / batch)
            .collect(),
    );

    // Direct Rust trait call on the same no-op, through `&dyn` so it is not inlined away.
    let direct_plugin: &dyn Probe = &Direct;
    let direct = median(
        (0..21)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..batch {
                    black_box(black_box(direct_plugin).probe());
                }
                started.elapsed() / batch
            })
            .collect(),
    );

    let p50 = percentile(&mut hop, 0.5);
    let p99 = percentile(&mut hop, 0.99);
    println!("### A no-op call (`health`) three ways, same run ({profile} loopback)\n");
    println!("| path | p50 | p99 | vs direct |");
    println!("|---|---:|---:|---:|");
    println!(
        "| direct Rust trait call (in the host) | {} | | 1.0 |",
        ns(direct)
    );
    println!(
        "| raw FFI call through the vtable (on the worker) | {} | | {:.1} |",
        ns(raw),
        raw.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "| instance call (worker hop + FFI + conversion) | {} | {} | {:.0} |",
        us(p50),
        us(p99),
        p50.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "\nThe hop (queue to the worker, wake it, answer through a oneshot) is {:.1}% of the instance path's p50.\n",
        100.0 * (p50.as_secs_f64() - raw.as_secs_f64()) / p50.as_secs_f64()
    );
    assert!(
        instance
            .stop(false, Duration::from_secs(5))
            .unwrap()
            .library
            .unload()
            .clean()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters by section name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    println!("## Foundation benchmarks\n");
    println!(
        "Command: `make bench` ({} cores).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if run("registration") {
        bench_registration();
    }
    if run("load") {
        bench_load();
    }
    if run("calls") {
        bench_calls();
    }
}
