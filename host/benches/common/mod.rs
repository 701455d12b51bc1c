//! Helpers shared by the bench binaries: where the builds are, medians and percentiles.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The cargo target dir (`CARGO_TARGET_DIR` or the workspace's `target`).
pub(crate) fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The median of `samples`.
pub(crate) fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The `p` quantile (0.0-1.0) of `samples`.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// The `p` quantile (0.0-1.0) of `values`.
pub(crate) fn percentile_f64(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// `1.234 ms`.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `1.23 µs`.
pub(crate) fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

/// A server process under test, sent SIGTERM and waited for when dropped.
pub(crate) struct Server {
    child: Child,
    /// `host:port` from its ready line.
    pub(crate) addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Spawns `command` and reads the address from its first stdout line (`... http://ADDR ...`);
/// also returns when it was spawned.
pub(crate) fn spawn(mut command: Command) -> (Server, Instant) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the ready line names an address")
        .to_owned();
    (Server { child, addr }, started)
}

/// One `POST` on a fresh connection (`Connection: close`): `(status, body)`.
pub(crate) fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// Keep-alive POSTs from `clients` threads for `duration`: (requests per second, latencies).
pub(crate) fn load(
    addr: &str,
    path: &str,
    body: &str,
    clients: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    load_with(addr, path, &|_| body.to_owned(), "", 200, clients, duration)
}

/// [`load`] with each client's own body (`body(client)`), extra header lines (`headers`, each
/// ending in `\r\n`) and the status every answer must have.
pub(crate) fn load_with(
    addr: &str,
    path: &str,
    body: &dyn Fn(usize) -> String,
    headers: &str,
    status: u16,
    clients: usize,
    duration: Duration,
) -> (f64, Vec<Duration>) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (addr, path, body, barrier) = (addr.to_owned(), path.to_owned(), body(client), std::sync::Arc::clone(&barrier));
            let (headers, want) = (headers.to_owned(), format!("HTTP/1.1 {status}"));
            std::thread::spawn(move || {
                let stream = std::net::TcpStream::connect(&addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len());
                let mut latencies = Vec::new();
                barrier.wait();
                let end = Instant::now() + duration;
                let mut line = String::new();
                while Instant::now() < end {
                    let started = Instant::now();
                    std::io::Write::write_all(&mut writer, request.as_bytes()).unwrap();
                    let mut length = 0;
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    assert!(line.starts_with(&want), "{line}");
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut answer = vec![0; length];
                    std::io::Read::read_exact(&mut reader, &mut answer).unwrap();
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    (latencies.len() as f64 / duration.as_secs_f64(), latencies)
}

/// `target/release`, once every one of `files` is there (else the command that builds them).
pub(crate) fn release_with(files: &[&str]) -> PathBuf {
    let release = target().join("release");
    for file in files {
        assert!(
            release.join(file).is_file(),
            "{file} is missing: run `cargo build --workspace --release` (`make bench` does)"
        );
    }
    release
}

/// A scratch folder under `target/bench-tmp` (on the build's disk, as the tests' are).
pub(crate) fn scratch() -> tempfile::TempDir {
    let base = target().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(&base).unwrap()
}

/// Through `serve` at `addr`: a send to the crashy platform `id`, then `crash:abort`, timed
/// until a send is served again (by the restarted child).
pub(crate) fn crash_to_served(addr: &str, id: &str) -> Duration {
    let send = |text: &str| {
        post(
            addr,
            &format!("/api/platforms/{id}/send"),
            &format!(r#"{{"chat_id":"c","text":"{text}"}}"#),
        )
    };
    assert_eq!(send("warm").0, 200);
    let started = Instant::now();
    assert_eq!(send("crash:abort").0, 503);
    let mut tries = 0;
    while send("x").0 != 200 {
        tries += 1;
        assert!(tries < 100_000, "{id} never served again");
    }
    started.elapsed()
}

/// A registry over `dir/plugins` with `text` as `dir/hermes.toml`, isolated platforms run by
/// the release `hermes-host` in `release`.
pub(crate) fn registry_with(
    dir: &Path,
    release: &Path,
    text: &str,
) -> hermes_host::registry::Registry {
    let path = dir.join("hermes.toml");
    std::fs::write(&path, text).unwrap();
    let config = hermes_host::config::Config::parse(text, &path).unwrap();
    let mut options = hermes_host::registry::RegistryOptions::from_config(
        &config,
        std::sync::Arc::new(hermes_host::loader::DiscardInbound),
    );
    options.child_program = Some(release.join("hermes-host"));
    hermes_host::registry::Registry::discover(&[dir.join("plugins")], options)
}

/// The release `hermes-host serve` on `config`, run in `dir`, once it is ready.
pub(crate) fn serve_release(release: &Path, dir: &Path, config: &Path) -> Server {
    let mut command = Command::new(release.join("hermes-host"));
    command
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(["--log-level", "error", "serve"]);
    spawn(command).0
}
