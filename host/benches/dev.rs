//! `plugin dev`: from saving an edit of the scaffolded plugin to the new generation serving
//! (incremental debug build + reload through the control socket), 10 rounds.
//!
//! Run with `make bench` (or `cargo bench -p hermes-host --bench dev`). The crate is written by
//! `plugin new` into a temp folder and built in the workspace's target folder (its `target` is a
//! link to it), so the dependencies are built once.

mod common;

use common::{percentile_f64, spawn, target};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

fn main() {
    let bin = env!("CARGO_BIN_EXE_hermes-host");
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let krate = dir.path().join("benchplug");
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
    let made = Command::new(bin)
        .args(["plugin", "new", "benchplug", "--dir"])
        .arg(&krate)
        .arg("--api-path")
        .arg(&api)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::os::unix::fs::symlink(target(), krate.join("target")).unwrap();
    let config = krate.join("hermes.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.1:8650", "127.0.0.1:0")).unwrap();
    let built = Command::new(env!("CARGO"))
        .args(["build", "--offline", "-q"])
        .current_dir(&krate)
        .status()
        .unwrap();
    assert!(built.success());
    let mut serve = Command::new(bin);
    serve.arg("--config").arg(&config).args(["serve", "--dev"]);
    let (_server, _) = spawn(serve);

    let mut dev = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["plugin", "dev"])
        .arg(&krate)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut next_with = |needle: &str| loop {
        let line = lines.next().expect("plugin dev ended").unwrap();
        if line.contains(needle) {
            return line;
        }
    };
    next_with("dev: watching");
    let lib = krate.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let (mut total, mut build, mut reload) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        // Another constant each round: a real edit, rebuilt incrementally.
        let edited = source.replace(
            "\"echo: \".to_owned()",
            &format!("\"echo {round}: \".to_owned()"),
        );
        std::fs::write(&lib, edited).unwrap();
        let line = next_with("dev: edit -> serving in");
        // "dev: edit -> serving in 373 ms (build 355 ms, reload 15.6 ms, ..."
        let number = |after: &str| -> f64 {
            line.split(after)
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        total.push(number("serving in "));
        build.push(number("(build "));
        reload.push(number("reload "));
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = dev.kill();
    let _ = dev.wait();
    println!("## plugin dev (`cargo bench -p hermes-host --bench dev`)\n");
    println!(
        "10 edits of the scaffolded plugin (`plugin new`), debug builds, the server running.\n"
    );
    println!("| measure | p50 | max |");
    println!("|---|---:|---:|");
    for (name, values) in [
        ("edit saved -> new generation serving", &mut total),
        ("of which: cargo build (incremental)", &mut build),
        ("of which: the reload transaction", &mut reload),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} ms |",
            percentile_f64(values, 0.5),
            percentile_f64(values, 1.0)
        );
    }
    println!();
}
