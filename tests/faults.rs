//! Faults a gateway meets in its first week: a killed process, a full disk, a stuck journal,
//! a control socket path that is not ours, a FIFO where a manifest should be, a signal during
//! start-up. Tests that need root (mounting a tmpfs) say so and skip without it.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::util::{self, Server, TestDir};

/// `serve`'s config for these tests: a free port, the socket and journal under `state/`.
fn config(t: &TestDir, journal: &str, extra: &str) -> PathBuf {
    t.config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\n{journal}\n\n{extra}"
    ))
}

/// Runs `hermes-host --config <config> serve` to its end (it is expected to refuse).
fn serve_refused(config: &Path) -> String {
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(config)
        .args(["--log-level", "info", "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "serve should refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The control API's `GET /status`, through the CLI.
fn status(server: &Server) -> serde_json::Value {
    let out = server.cli(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every line of the journal at `path` as JSON; panics naming a line that does not parse.
fn journal_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the journal ends in a partial line"
    );
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("journal line {} does not parse ({e}): {l:?}", i + 1))
        })
        .collect()
}

fn outbound_ids(lines: &[serde_json::Value]) -> HashSet<String> {
    lines
        .iter()
        .filter(|l| l["kind"] == "outbound")
        .map(|l| l["message_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_file_at_the_socket_path_is_refused_and_left_alone() {
    let t = TestDir::new();
    fs::create_dir_all(t.path().join("state")).unwrap();
    let precious = t.path().join("state/control.sock");
    fs::write(&precious, "not a socket").unwrap();
    let stderr = serve_refused(&config(&t, "", ""));
    assert!(
        stderr.contains("control socket") && stderr.contains("a file is at that path"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&precious).unwrap(), "not a socket");
}

#[test]
fn the_socket_folder_keeps_its_mode_and_an_unsafe_one_is_refused() {
    let t = TestDir::new();
    let shared = t.path().join("shared");
    fs::create_dir(&shared).unwrap();

    // Others may write, without the sticky bit: anyone could swap the socket. Refused, and the
    // folder is not touched.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let conf =
        t.config("[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"shared/hermes.sock\"\n");
    let stderr = serve_refused(&conf);
    assert!(
        stderr.contains("writable by others without the sticky bit"),
        "{stderr}"
    );
    assert_eq!(mode(&shared), 0o777);

    // A shared folder with the sticky bit (as /tmp is) is fine, and keeps its mode.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let mut server = Server::start_config(&t, conf, &[]);
    assert_eq!(mode(&shared), 0o1777);
    assert_eq!(mode(&shared.join("hermes.sock")), 0o600);
    assert!(server.terminate().success());

    // A folder of the operator's own keeps its mode too; one the host creates is 0700.
    let own = t.path().join("own");
    fs::create_dir(&own).unwrap();
    fs::set_permissions(&own, fs::Permissions::from_mode(0o750)).unwrap();
    let conf =
        t.config("[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"own/new/hermes.sock\"\n");
    let mut server = Server::start_config(&t, conf, &[]);
    assert_eq!(mode(&own), 0o750);
    assert_eq!(mode(&own.join("new")), 0o700);
    assert!(server.terminate().success());
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_second_server_on_the_same_socket_starts_no_platform() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let mut first = Server::start(&t, "[platforms.loopback]\n");
    // The second gets its own port, the same socket, and an eager platform.
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&first.config)
        .args(["--log-level", "info", "serve"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("another hermes-host server is running"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("platform started"),
        "the second server started a platform before failing:\n{stderr}"
    );
    assert!(first.terminate().success());
}

#[test]
fn sigterm_during_start_up_stops_what_started() {
    let t = TestDir::new();
    t.install("slowstart", "fixture_panicky", 1);
    let conf = config(
        &t,
        "",
        "[platforms.slowstart]\nhang_start_ms = 1500\ncall_timeout_ms = 60000\n",
    );
    let log = t.path().join("serve.log");
    let mut child = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&conf)
        .args(["--log-level", "debug", "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The socket exists once the listeners are bound, before any platform starts.
    let socket = t.path().join("state/control.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let log = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("signal during start-up"), "{log}");
    assert!(!log.contains("ready http="), "{log}");
    assert!(!socket.exists(), "the socket was not removed");
}

#[test]
fn a_fifo_manifest_is_an_error_never_a_wait() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let dir = t.plugins().join("stuck");
    fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("plugin.toml"))
        .status()
        .unwrap();
    assert!(made.success());
    let conf = t.config("");
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&conf)
        .args(["plugin", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("stuck/plugin.toml") && stderr.contains("not a regular file (a FIFO)"),
        "{stderr}"
    );
    assert!(stdout.contains("loopback"), "{stdout}");
}

/// Sends from `clients` threads until `stop`; returns each acknowledged message id with when
/// its answer came.
fn traffic(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, Instant)>>> {
    (0..clients)
        .map(|c| {
            let addr = addr.to_owned();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!(r#"{{"chat_id":"c{c}","text":"m{c}-{n}"}}"#);
                    let Some((status, answer)) =
                        try_post(&addr, "/api/platforms/loopback/send", &body)
                    else {
                        break;
                    };
                    if status == 200 {
                        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                        acked.push((v["message_id"].as_str().unwrap().to_owned(), Instant::now()));
                    }
                }
                acked
            })
        })
        .collect()
}

/// A POST that answers `None` once the server is gone.
fn try_post(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, rest) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, rest.to_owned()))
}

/// Runs traffic, kills the server with SIGKILL mid-way; returns the acknowledged ids with
/// their times, and when the kill happened.
fn kill_mid_traffic(server: &mut Server, acks: usize) -> (Vec<(String, Instant)>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(&server.addr, 4, Arc::clone(&stop));
    let journal = server.config.parent().unwrap().join("state/journal.jsonl");
    // Wait until the journal shows traffic, then a little more of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read(&journal).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < acks {
        assert!(Instant::now() < deadline, "no traffic reached the journal");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    let killed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let acked = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    (acked, killed)
}

#[test]
fn kill_9_with_fsync_loses_no_acknowledged_send() {
    for run in 0..3 {
        let t = TestDir::new();
        t.install("loopback", "hermes_loopback", 1);
        let conf = config(&t, "durability = \"fsync\"", "[platforms.loopback]\n");
        let mut server = Server::start_config(&t, conf.clone(), &[]);
        let (acked, _) = kill_mid_traffic(&mut server, 200 + run * 150);
        assert!(!acked.is_empty());
        let journal = t.path().join("state/journal.jsonl");
        // Restart: a torn last line (if the kill left one) is repaired; then every line parses.
        let mut again = Server::start_config(&t, conf, &[]);
        assert!(again.terminate().success());
        let lines = journal_lines(&journal);
        let kept = outbound_ids(&lines);
        let missing: Vec<_> = acked.iter().filter(|(id, _)| !kept.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "run {run}: {} of {} acknowledged sends are not in the journal: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[test]
fn kill_9_with_flush_loses_only_the_last_flush_window() {
    const FLUSH_MS: u64 = 50;
    // What the writer thread may lag behind its tick on a loaded 2-core machine.
    const ALLOWANCE: Duration = Duration::from_millis(300);
    for run in 0..3 {
        let t = TestDir::new();
        t.install("loopback", "hermes_loopback", 1);
        let conf = config(
            &t,
            &format!("flush_ms = {FLUSH_MS}"),
            "[platforms.loopback]\n",
        );
        let mut server = Server::start_config(&t, conf.clone(), &[]);
        let (acked, killed) = kill_mid_traffic(&mut server, 200 + run * 150);
        let mut again = Server::start_config(&t, conf, &[]);
        assert!(again.terminate().success());
        let kept = outbound_ids(&journal_lines(&t.path().join("state/journal.jsonl")));
        let window = Duration::from_millis(FLUSH_MS) + ALLOWANCE;
        let old: Vec<_> = acked
            .iter()
            .filter(|(id, at)| !kept.contains(id) && killed.duration_since(*at) > window)
            .collect();
        assert!(
            old.is_empty(),
            "run {run}: sends acknowledged more than {window:?} before the kill are missing: {:?}",
            old.iter()
                .map(|(id, at)| (id, killed.duration_since(*at)))
                .take(5)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_burst_of_large_sends_with_flush_loses_no_acknowledged_record() {
    // A small queue, so that 4 clients sending 60 KiB texts meet its bound all the time.
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let conf = config(&t, "queue_kib = 256", "[platforms.loopback]\n");
    let mut server = Server::start_config(&t, conf, &[]);
    let text = "y".repeat(60 * 1024);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let addr = server.addr.clone();
            let text = text.clone();
            std::thread::spawn(move || {
                let (mut acked, mut refused) = (Vec::new(), 0);
                for n in 0..40 {
                    let body = serde_json::json!({ "chat_id": format!("c{c}-{n}"), "text": text });
                    let (status, answer) =
                        try_post(&addr, "/api/platforms/loopback/send", &body.to_string())
                            .expect("the server answers");
                    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                    match status {
                        200 => acked.push(v["message_id"].as_str().unwrap().to_owned()),
                        503 => {
                            assert_eq!(v["retryable"], true, "{v}");
                            refused += 1;
                        }
                        other => panic!("{other}: {v}"),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let (mut acked, mut refused) = (Vec::new(), 0);
    for client in clients {
        let (a, r) = client.join().unwrap();
        acked.extend(a);
        refused += r;
    }
    assert!(server.terminate().success());
    let lines = journal_lines(&t.path().join("state/journal.jsonl"));
    let kept = outbound_ids(&lines);
    let missing: Vec<_> = acked.iter().filter(|id| !kept.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} sends answered 200 are not in the journal ({refused} refused): {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let inbound = lines.iter().filter(|l| l["kind"] == "inbound").count();
    assert_eq!(inbound, acked.len(), "every echo of a sent message is kept");
}

#[test]
fn a_restart_moves_a_torn_last_line_aside() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let conf = config(&t, "", "[platforms.loopback]\n");
    let mut server = Server::start_config(&t, conf.clone(), &[]);
    assert_eq!(
        server
            .post(
                "/api/platforms/loopback/send",
                r#"{"chat_id":"a","text":"one"}"#
            )
            .0,
        200
    );
    server.kill9();
    let journal = t.path().join("state/journal.jsonl");
    // What a kill inside a write() leaves: half a record at the end.
    let mut f = fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut f, br#"{"ts":1,"kind":"inbound","platf"#).unwrap();
    drop(f);
    let mut server = Server::start_config(&t, conf, &[]);
    assert!(
        server.log().contains("moved it to the side file"),
        "{}",
        server.log()
    );
    assert_eq!(
        server
            .post(
                "/api/platforms/loopback/send",
                r#"{"chat_id":"a","text":"two"}"#
            )
            .0,
        200
    );
    assert!(server.terminate().success());
    let lines = journal_lines(&journal);
    assert!(lines.iter().any(|l| l["text"] == "two"));
    assert_eq!(
        fs::read_to_string(t.path().join("state/journal.jsonl.corrupt")).unwrap(),
        "{\"ts\":1,\"kind\":\"inbound\",\"platf\n"
    );
    assert_eq!(mode(&journal), 0o600);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (after saying why) where mounting is not allowed.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_owned())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_refuses_sends_counts_errors_and_recovers_without_corrupt_lines() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let Some(disk) = Tmpfs::mount(&t.path().join("disk"), "1m") else {
        return;
    };
    let filler = disk.0.join("filler");
    fs::write(&filler, vec![0u8; 850 * 1024]).unwrap();
    let conf = config(
        &t,
        "path = \"disk/journal.jsonl\"\nflush_ms = 20",
        "[platforms.loopback]\n",
    );
    let mut server = Server::start_config(&t, conf, &[]);
    let text = "x".repeat(30_000);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let body = format!(r#"{{"chat_id":"c","text":"{i}-{text}"}}"#);
        let (status, answer) = server.post("/api/platforms/loopback/send", &body);
        match status {
            200 => {
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                acked.push(v["message_id"].as_str().unwrap().to_owned());
            }
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
        // Let the writer reach the disk between sends, so the refusal comes from a failed write.
        let _ = status_until(&server, |j| {
            j["queued_bytes"] == 0 || j["state"] == "degraded"
        });
    }
    let refused = refused.expect("sends went on while the disk was full");
    let v: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(v["retryable"], true, "{v}");
    assert!(v["error"].as_str().unwrap().contains("journal"), "{v}");
    let journal = status(&server)["journal"].clone();
    assert_eq!(journal["state"], "degraded", "{journal}");
    assert!(journal["errors"].as_u64().unwrap() >= 1, "{journal}");
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("hermes_journal_errors_total"), "{metrics}");
    assert_eq!(
        server.log().matches("journal write failed").count(),
        1,
        "one log line when the state changes, not one per record"
    );

    // Space comes back: the kept records are written, and sends go through again.
    fs::remove_file(&filler).unwrap();
    status_until(&server, |j| j["state"] == "ok");
    let (status, answer) = server.post(
        "/api/platforms/loopback/send",
        r#"{"chat_id":"c","text":"after"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(server.terminate().success());
    let lines = journal_lines(&disk.0.join("journal.jsonl"));
    let kept = outbound_ids(&lines);
    for id in &acked {
        assert!(kept.contains(id), "acknowledged {id} is missing");
    }
    assert!(lines.iter().any(|l| l["text"] == "after"));
    assert!(server.log().contains("the journal writes again"));
}

/// Polls the journal's status until `done` holds (panics after 10 s).
fn status_until(server: &Server, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let journal = status(server)["journal"].clone();
        if done(&journal) {
            return journal;
        }
        assert!(Instant::now() < deadline, "journal stayed {journal}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stuck_journal_blocks_nothing_but_itself() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    fs::create_dir_all(t.path().join("state")).unwrap();
    let fifo = t.path().join("state/journal.jsonl");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A reader that never reads: writes succeed until the pipe's buffer is full, then block.
    let _reader = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let conf = config(&t, "", "[platforms.loopback]\n");
    let mut server = Server::start_config(&t, conf, &[]);
    let text = "y".repeat(20_000);
    for i in 0..40 {
        let body = format!(r#"{{"chat_id":"c","text":"{i}-{text}"}}"#);
        let (status, _) = server.post("/api/platforms/loopback/send", &body);
        assert!(status == 200 || status == 503, "{status}");
    }
    // 1.6 MB went to a pipe that holds 64 KiB: the writer is stuck. The rest still answers.
    assert_eq!(server.get("/health").0, 200);
    let journal = status(&server)["journal"].clone();
    assert!(journal["queued_bytes"].as_u64().unwrap() > 0, "{journal}");
    assert_eq!(server.get("/api/platforms").0, 200);
    // Shutdown does not wait forever on it.
    assert!(server.terminate().success());
    assert!(
        server.log().contains("did not finish writing"),
        "{}",
        server.log()
    );
}

#[test]
fn a_flood_of_half_open_connections_leaves_health_and_the_control_socket_answering() {
    const FLOOD: usize = 2000;
    // This test holds FLOOD sockets itself.
    util::raise_nofile();
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    // A header timeout far longer than the test: only the connection limit's eviction of
    // half-open connections can let /health in.
    let conf = t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\nheader_read_timeout_ms = 120000\n\n[platforms.loopback]\n",
    );
    let server = Server::start_wrapped(&t, conf, &[], &["prlimit", "--nofile=1024:1024"]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            continue;
        };
        // A request head that never ends.
        let _ = std::io::Write::write_all(&mut s, b"GET /health HTTP/1.1\r\nHost: x\r\n");
        flood.push(s);
    }
    assert!(
        flood.len() > 1024,
        "only {} connections were made",
        flood.len()
    );
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        "/api/platforms/loopback/send",
        r#"{"chat_id":"c","text":"in"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let out = server.cli(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let log = server.log();
    assert!(!log.contains("Too many open files"), "{log}");
    drop(flood);
}

#[test]
fn a_request_head_that_never_ends_is_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    let t = TestDir::new();
    let conf = t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\nheader_read_timeout_ms = 200\n",
    );
    let server = Server::start_config(&t, conf, &[]);
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    // The server closes the connection (an error is a reset: closed too).
    let _ = s.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("\"status\":\"ok\""),
        "the half-sent request was answered"
    );
    assert_eq!(server.get("/health").0, 200);
}

/// Parses OpenMetrics text with the reference parser (Python's `prometheus_client`); returns
/// the family names, in order.
fn parse_metrics(text: &str) -> Vec<String> {
    parse_metrics_with(text, "prometheus_client.openmetrics.parser")
}

/// As [`parse_metrics`], with the parser of Python module `parser` (the OpenMetrics one, or
/// `prometheus_client.parser` for Prometheus' text format 0.0.4).
fn parse_metrics_with(text: &str, parser: &str) -> Vec<String> {
    let script = format!(
        "import sys\nfrom {parser} import text_string_to_metric_families as parse\nfor f in parse(sys.stdin.read()):\n    print(f.name)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse /metrics (`make test` installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the reference parser is missing: `pip install prometheus-client` (`make test` installs it)"
    );
    assert!(
        out.status.success(),
        "the reference parser refused /metrics: {stderr}\n{text}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn metrics_parse_with_the_reference_parser_one_family_per_name() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install("bigid", "fixture_panicky", 1);
    let server = Server::start(
        &t,
        "[platforms.loopback]\n\n[platforms.bigid]\nmessage_id_bytes = 10000000\n",
    );
    assert_eq!(
        server
            .post(
                "/api/platforms/loopback/send",
                r#"{"chat_id":"c","text":"x"}"#
            )
            .0,
        200
    );
    // A plugin's oversized answer is cut by the host before it is returned or journaled.
    let (status, body) = server.post("/api/platforms/bigid/send", r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["message_id"].as_str().unwrap().len() <= 256,
        "{}",
        body.len()
    );
    // A scraper that asks for Prometheus' text format 0.0.4 gets it, and it parses too.
    let (status, text) = util::http(
        &server.addr,
        "GET",
        "/metrics",
        None,
        &[("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")],
    );
    assert_eq!(status, 200);
    assert!(
        !text.contains("# EOF") && text.contains("# TYPE hermes_sends_total counter"),
        "{text}"
    );
    let families = parse_metrics_with(&text, "prometheus_client.parser");
    assert!(families.iter().any(|f| f == "hermes_sends"), "{families:?}");
    let (_, text) = server.get("/metrics");
    let families = parse_metrics(&text);
    let unique: HashSet<&String> = families.iter().collect();
    assert_eq!(
        unique.len(),
        families.len(),
        "a family appears twice: {families:?}"
    );
    for name in [
        "hermes_sends",
        "hermes_send_seconds",
        "hermes_inbound",
        "hermes_loads",
        "hermes_load_seconds",
        "hermes_journal_errors",
        "hermes_journal_dropped",
        "hermes_journal_degraded",
        "hermes_resident_stale_libraries",
    ] {
        assert!(
            families.iter().any(|f| f == name),
            "{name} missing: {families:?}"
        );
    }
}

#[test]
fn an_sse_client_that_never_reads_is_told_it_lagged_and_pins_bounded_memory() {
    use std::io::{Read, Write};
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    // With `fsync` every send waits for its records: the journal's queue stays near empty and
    // what the server grows by is the SSE side's alone.
    let conf = config(&t, "durability = \"fsync\"", "[platforms.loopback]\n");
    let server = Server::start_config(&t, conf, &[]);
    let text = "z".repeat(60_000);
    let body = |i: usize| format!(r#"{{"chat_id":"c","text":"{i}-{text}"}}"#);
    // A reader that keeps up gets every message.
    let mut fast = util::Sse::connect(&server.addr);
    let mut send = |range: std::ops::RangeInclusive<usize>| {
        for i in range {
            let (status, answer) = server.post("/api/platforms/loopback/send", &body(i));
            assert_eq!(status, 200, "{answer}");
            let event = fast.next();
            assert!(
                event["text"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{i}-"))
            );
        }
    };
    // The same traffic twice, the second time with a client that never reads: what the server
    // grows by beyond the first round is what that client pins. 500 x 60 KB is far past the
    // kernel's socket buffers and the 4 MiB bound.
    send(1..=500);
    let first = util::rss_kib(&server.child.id().to_string());
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        slow,
        "GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    send(501..=1000);
    let grew = util::rss_kib(&server.child.id().to_string()).saturating_sub(first);
    assert!(
        grew < 12 * 1024,
        "the server grew by {grew} KiB with a client that never read 30 MB of events"
    );
    // The slow client, reading at last: what fit in its queue, then `lagged`, then the end.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("event: lagged"), "no lagged event");
    assert!(
        raw.trim_end().ends_with("0\r\n\r\n") || raw.trim_end().ends_with('0'),
        "the stream did not end"
    );
}

#[test]
fn shadow_copies_left_by_a_dead_process_are_removed_at_start() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    // What a killed server leaves: its folder, its lock file (nobody holds the lock) and a copy.
    let dead = t.shadow().join("p999999-dead");
    fs::create_dir_all(&dead).unwrap();
    fs::write(dead.join(".lock"), "").unwrap();
    fs::write(dead.join("libhermes_loopback-abc.so"), vec![0u8; 4096]).unwrap();
    let mut server = Server::start(&t, "[platforms.loopback]\n");
    assert!(!dead.exists(), "the dead process's folder is still there");
    assert!(
        server
            .log()
            .contains("removed shadow copies left by processes that died")
    );
    // A live server's folder is not touched by another process's start.
    let live: Vec<_> = fs::read_dir(t.shadow())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    let out = server.cli(&["plugin", "check", "loopback", "--start"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        live[0].exists(),
        "a `plugin check` removed the live server's folder"
    );
    assert!(server.terminate().success());
}

#[test]
fn a_stop_that_times_out_is_reported_as_that() {
    let t = TestDir::new();
    t.install("stuck", "fixture_panicky", 1);
    let mut server = Server::start(
        &t,
        "[platforms.stuck]\nhang_stop_ms = 3000\ncall_timeout_ms = 200\n",
    );
    let socket = t.path().join("state/control.sock");
    let answer = {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        write!(
            s,
            "POST /platforms/stuck/unload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    };
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        answer.contains("did not stop") && answer.contains("did not return within"),
        "{answer}"
    );
    assert!(!answer.contains("was_running"), "{answer}");
    let p = server.platform("stuck");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(server.terminate().success());
}

/// Waits until the journal at `path` holds at least `n` lines.
fn wait_lines(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < n {
        assert!(
            Instant::now() < deadline,
            "{} never held {n} lines",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_journal_rotated_under_traffic_loses_nothing_and_a_removed_one_comes_back() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let conf = config(&t, "flush_ms = 20", "[platforms.loopback]\n");
    let mut server = Server::start_config(&t, conf, &[]);
    let journal = t.path().join("state/journal.jsonl");
    let rotated = |n: u32| journal.with_extension(format!("jsonl.{n}"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(&server.addr, 4, Arc::clone(&stop));
    // logrotate's default `create` mode, twice: the file is renamed away under traffic.
    wait_lines(&journal, 100);
    fs::rename(&journal, rotated(1)).unwrap();
    wait_lines(&journal, 100);
    fs::rename(&journal, rotated(2)).unwrap();
    wait_lines(&journal, 100);
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .map(|(id, _)| id)
        .collect();
    // A third rotation after the traffic; then an operator's `rm` of the new file: the next
    // record recreates the path.
    // (With `flush`, an answer may precede its write: let the writer catch up first.)
    status_until(&server, |j| j["queued_bytes"] == 0);
    fs::rename(&journal, rotated(3)).unwrap();
    assert_eq!(server.send("loopback", "c", "before rm").0, 200);
    wait_lines(&journal, 2);
    fs::remove_file(&journal).unwrap();
    assert_eq!(server.send("loopback", "c", "after rm").0, 200);
    wait_lines(&journal, 2);
    // SIGUSR1 (as logrotate's postrotate may send) and `journal reopen` reopen on request.
    let reopens = status(&server)["journal"]["reopens"].as_u64().unwrap();
    assert!(reopens >= 4, "three renames and an rm: {reopens}");
    server.signal("USR1");
    status_until(&server, |j| j["reopens"].as_u64() > Some(reopens));
    assert!(server.cli(&["journal", "reopen"]).status.success());
    status_until(&server, |j| j["reopens"].as_u64() > Some(reopens + 1));
    assert!(server.terminate().success());
    let log = server.log();
    assert!(
        log.contains("renamed or replaced; reopened its path"),
        "{log}"
    );
    assert!(log.contains("reopened the journal as asked"), "{log}");
    let mut kept = outbound_ids(&journal_lines(&rotated(1)));
    kept.extend(outbound_ids(&journal_lines(&rotated(2))));
    kept.extend(outbound_ids(&journal_lines(&rotated(3))));
    let current = journal_lines(&journal);
    kept.extend(outbound_ids(&current));
    let missing: Vec<_> = acked.iter().filter(|id| !kept.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sends are in none of the files: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(current.iter().any(|l| l["text"] == "after rm"));
}

#[test]
fn a_config_replaced_by_a_fifo_is_refused_at_sighup_without_blocking() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let mut server = Server::start(&t, "[platforms.loopback]\n");
    fs::remove_file(&server.config).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&server.config)
            .status()
            .unwrap()
            .success()
    );
    server.signal("HUP");
    server.wait_log("config reload refused", 1);
    assert!(
        server.log().contains("not a regular file"),
        "{}",
        server.log()
    );
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.send("loopback", "c", "still here").0, 200);
    assert!(server.terminate().success());
}

#[test]
fn a_misspelt_platform_table_is_refused_naming_the_installed_ids() {
    let t = TestDir::new();
    t.install("irc", "hermes_irc", 1);
    t.install("loopback", "hermes_loopback", 1);
    let conf = config(&t, "", "[platforms.ircc]\nserver = \"127.0.0.1:6667\"\n");
    let log = serve_refused(&conf);
    assert!(
        log.contains("[platforms.ircc]: no plugin with id `ircc` is installed (did you mean `irc`?); installed: irc, loopback"),
        "{log}"
    );
    // A config reload that adds one is refused as a whole; the server serves on.
    let mut server = Server::start(&t, "[platforms.loopback]\n");
    let text = fs::read_to_string(&server.config).unwrap();
    fs::write(&server.config, format!("{text}\n[platforms.loopbak]\n")).unwrap();
    let out = server.cli(&["reload-config"]);
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("did you mean `loopback`?"), "{said}");
    assert_eq!(server.send("loopback", "c", "still").0, 200);
    assert!(server.terminate().success());
}

#[test]
fn plugin_reload_refuses_idle_unload_for_an_inbound_plugin_as_start_does() {
    let t = TestDir::new();
    t.install_copy("webhook", "hermes_webhook");
    fs::write(
        t.plugins().join("webhook/plugin.toml"),
        "[plugin]\nid = \"webhook\"\nname = \"W\"\nversion = \"0.0.1\"\napi = 1\nlibrary = \"hermes_webhook\"\ninbound = true\n",
    )
    .unwrap();
    let server = Server::start(&t, "[platforms.webhook]\n");
    let before = server.platform("webhook")["generation"].as_u64();
    let text = fs::read_to_string(&server.config).unwrap();
    fs::write(
        &server.config,
        text.replace(
            "[platforms.webhook]\n",
            "[platforms.webhook]\nidle_unload_secs = 5\n",
        ),
    )
    .unwrap();
    let out = server.cli(&["plugin", "reload", "webhook"]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("holds inbound connections"), "{said}");
    // The refusal is typed: a caller matches on its kind, not its words.
    let client = hermes_host::control::Client::new(
        &t.path().join("state/control.sock"),
        std::time::Duration::from_secs(30),
    );
    let refusal = client
        .blocking(client.reload("webhook"))
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refusal.kind,
        Some(hermes_host::reload::RefusalKind::Config),
        "{refusal:?}"
    );
    assert_eq!(refusal.serving_generation, before);
    assert_eq!(server.platform("webhook")["generation"].as_u64(), before);
}
