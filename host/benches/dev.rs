//! `plugin dev`: from saving an edit of the scaffolded plugin to the new generation serving
//! (incremental debug build + reload through the control socket), 10 rounds each of an edit of
//! `src/lib.rs`, of `Cargo.toml` saved by rename and of `plugin.toml` saved by rename.
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
    // The dev config's port (free when written) becomes 0: no race with another process.
    let text: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                "listen = \"127.0.0.1:0\"\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config, text).unwrap();
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
    // A save by rename, as `sed -i` and editors' safe writes do.
    let save_by_rename = |file: &str, text: String| {
        let temp = krate.join(format!(".{file}.swp"));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, krate.join(file)).unwrap();
    };
    let cargo_toml = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    let plugin_toml = std::fs::read_to_string(krate.join("plugin.toml")).unwrap();
    let mut rows = Vec::new();
    for kind in [
        "src/lib.rs",
        "Cargo.toml (by rename)",
        "plugin.toml (by rename)",
    ] {
        let (mut total, mut build, mut reload) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..10 {
            // Another value each round: a real edit, rebuilt incrementally.
            match kind {
                "src/lib.rs" => std::fs::write(
                    &lib,
                    source.replace(
                        "\"echo: \".to_owned()",
                        &format!("\"echo {round}: \".to_owned()"),
                    ),
                )
                .unwrap(),
                "Cargo.toml (by rename)" => save_by_rename(
                    "Cargo.toml",
                    cargo_toml.replacen(
                        "version = \"0.1.0\"",
                        &format!("version = \"0.1.{}\"", round + 1),
                        1,
                    ),
                ),
                _ => save_by_rename(
                    "plugin.toml",
                    plugin_toml.replacen(
                        "description = \"",
                        &format!("description = \"{round} "),
                        1,
                    ),
                ),
            }
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
        rows.push((kind, total, build, reload));
    }
    let _ = dev.kill();
    let _ = dev.wait();
    println!("## plugin dev (`cargo bench -p hermes-host --bench dev`)\n");
    println!(
        "10 edits each of the scaffolded plugin (`plugin new`), debug builds, the server running.\n"
    );
    println!("| edit | saved -> serving p50 | max | cargo build p50 | reload p50 |");
    println!("|---|---:|---:|---:|---:|");
    for (kind, mut total, mut build, mut reload) in rows {
        println!(
            "| {kind} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} ms |",
            percentile_f64(&mut total, 0.5),
            percentile_f64(&mut total, 1.0),
            percentile_f64(&mut build, 0.5),
            percentile_f64(&mut reload, 0.5)
        );
    }
    println!();
}
