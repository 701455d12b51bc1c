//! The cost of trust per load (`cargo bench -p hermes-host --bench trust`): hashing a library
//! for `trust = "lock"` (the release and the debug loopback), and the strict modes' checks of a
//! plugin's files and folders, against a load of the same library (shadow copy, `dlopen`,
//! checks) measured in the same run.

mod common;

use common::{median, target};
use hermes_host::{loader::Library, trust};
use std::{
    path::Path,
    time::{Duration, Instant},
};

fn timed(n: usize, mut f: impl FnMut()) -> Duration {
    f();
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let shadow = tempfile::tempdir_in(target()).unwrap();
    println!(
        "### Trust per load (medians of 15; page cache warm)\n\n| library | size | load (copy, dlopen, checks) | sha256 (`trust = \"lock\"`) | strict modes | hash / load |\n|---|---:|---:|---:|---:|---:|"
    );
    for profile in ["release", "debug"] {
        let lib = target().join(profile).join("libhermes_loopback.so");
        if !lib.exists() {
            println!("| {profile} | (not built) | | | | |");
            continue;
        }
        let size = std::fs::metadata(&lib).unwrap().len();
        let load = timed(15, || {
            let library = Library::open(&lib, shadow.path()).unwrap();
            assert!(library.unload().clean());
        });
        let hash = timed(15, || {
            trust::lock::sha256_file(&lib).unwrap();
        });
        let plugin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/loopback");
        let roots = [lib.parent().unwrap().to_owned()];
        let strict = timed(15, || {
            trust::check_plugin(&plugin_dir.join("plugin.toml"), &plugin_dir).unwrap();
            let resolved = lib.canonicalize().unwrap();
            trust::check_within(&lib, &resolved, &roots).unwrap();
            trust::check_library_folder(&resolved).unwrap();
            trust::check_library(&lib, &std::fs::metadata(&lib).unwrap()).unwrap();
        });
        println!(
            "| {profile} loopback | {:.1} MiB | {} | {} | {} | {:.2} |",
            size as f64 / f64::from(1 << 20),
            ms(load),
            ms(hash),
            ms(strict),
            hash.as_secs_f64() / load.as_secs_f64()
        );
    }
    println!();
}
