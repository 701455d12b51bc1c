//! Shared test helpers.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use hermes_host::{
    config::{Config, PlatformConfig},
    loader::EventSink,
    message::Inbound,
    registry::{Registry, RegistryOptions},
};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The debug target dir holding the plugin libraries.
pub(crate) fn target_debug() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("debug")
}

/// A built plugin library, e.g. `lib("hermes_loopback")`.
pub(crate) fn lib(name: &str) -> PathBuf {
    let path = target_debug().join(format!("lib{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first with `cargo build --workspace` (`make test` does)",
        path.display()
    );
    path
}

/// The second loopback build, reporting version `0.2.0-next` (`make build` makes it).
pub(crate) fn variant_lib() -> PathBuf {
    let path = target_debug()
        .parent()
        .unwrap()
        .join("variant/debug/libhermes_loopback.so");
    assert!(
        path.is_file(),
        "{} is missing: build it with `make build` (HERMES_LOOPBACK_VERSION=0.2.0-next cargo build -p hermes-loopback --target-dir target/variant)",
        path.display()
    );
    path
}

/// A plugin built against a modified copy of plugin-api (`make build` runs
/// scripts/abi-variants): `added_field` or `changed_type`.
pub(crate) fn abi_variant_lib(name: &str) -> PathBuf {
    let path = target_debug()
        .parent()
        .unwrap()
        .join(format!("variant/debug/libabi_variant_{name}.so"));
    assert!(
        path.is_file(),
        "{} is missing: build it with `make build` (scripts/abi-variants)",
        path.display()
    );
    path
}

/// Replaces `dest` with a copy of `src` the way cargo does: a new file beside it, then the old
/// name unlinked and the new file linked in (a new inode; watchers see Remove then Create).
pub(crate) fn replace_like_cargo(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("so.tmp-new");
    fs::copy(src, &tmp).unwrap();
    let _ = fs::remove_file(dest);
    fs::hard_link(&tmp, dest).unwrap();
    fs::remove_file(&tmp).unwrap();
}

/// Appends the `[capabilities]` of the shipped manifest of `plugins/<plugin>` to the manifests
/// of `ids`, installed under other ids by [`TestDir::install`].
/// Installs the adapter `plugin`'s own manifest (capabilities, limits, sandbox grants and all)
/// as each of `ids`; the library is found through `library_dirs`.
pub(crate) fn shipped_manifest(t: &TestDir, plugin: &str, ids: &[&str]) {
    let shipped = fs::read_to_string(root().join(format!("plugins/{plugin}/plugin.toml"))).unwrap();
    for id in ids {
        let dir = t.plugins().join(id);
        fs::create_dir_all(&dir).unwrap();
        let text = shipped.replacen(&format!("id = \"{plugin}\""), &format!("id = \"{id}\""), 1);
        fs::write(dir.join("plugin.toml"), text).unwrap();
    }
}

pub(crate) fn shipped_capabilities(t: &TestDir, plugin: &str, ids: &[&str]) {
    let shipped = fs::read_to_string(root().join(format!("plugins/{plugin}/plugin.toml"))).unwrap();
    let caps = &shipped[shipped
        .find("[capabilities]")
        .unwrap_or_else(|| panic!("{plugin} declares no capabilities"))..];
    for id in ids {
        let path = t.plugins().join(id).join("plugin.toml");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{text}\n{caps}")).unwrap();
    }
}

/// The `hermes-host` binary under test.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hermes-host"))
}

/// A test's own folder, removed when dropped.
pub(crate) struct TestDir {
    pub(crate) dir: tempfile::TempDir,
}

impl TestDir {
    pub(crate) fn new() -> Self {
        // Under target/, not /tmp: /tmp may be mounted noexec, and dlopen maps code.
        let base = target_debug().join("test-tmp");
        fs::create_dir_all(&base).unwrap();
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("t-")
                .tempdir_in(base)
                .unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }

    pub(crate) fn shadow(&self) -> PathBuf {
        self.path().join("state/shadow")
    }

    /// Installs a plugin folder with a manifest for `library` (a built library's name); the
    /// library itself is found through `library_dirs` unless `copy_library` puts it inside.
    pub(crate) fn install(&self, id: &str, library: &str, api: u32) -> PathBuf {
        let dir = self.plugins().join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("plugin.toml"),
            format!(
                "[plugin]\nid = \"{id}\"\nname = \"Test {id}\"\nversion = \"0.0.1\"\napi = {api}\nlibrary = \"{library}\"\n"
            ),
        )
        .unwrap();
        dir
    }

    /// Installs plugin `id` with a private copy of the built library `library` in its folder
    /// (so a test can replace it); returns the copy's path.
    pub(crate) fn install_copy(&self, id: &str, library: &str) -> PathBuf {
        let dir = self.install(id, library, 1);
        let copy = dir.join(format!("lib{library}.so"));
        fs::copy(lib(library), &copy).unwrap();
        copy
    }

    /// Installs a plugin whose library file is `bytes`, inside its folder.
    pub(crate) fn install_bytes(&self, id: &str, bytes: &[u8]) -> PathBuf {
        let library = format!("custom_{}", id.replace('-', "_"));
        let dir = self.install(id, &library, 1);
        fs::write(dir.join(format!("lib{library}.so")), bytes).unwrap();
        dir
    }

    /// Runs `hermes-host --config <this dir>/hermes.toml <args>` to its end (writing a default
    /// config first when there is none).
    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        let config = self.path().join("hermes.toml");
        if !config.exists() {
            self.config("");
        }
        std::process::Command::new(bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run hermes-host")
    }

    /// A config file in this dir with `extra` appended; plugins from `plugins/`, libraries
    /// from the build's debug dir.
    pub(crate) fn config(&self, extra: &str) -> PathBuf {
        let path = self.path().join("hermes.toml");
        fs::write(
            &path,
            format!(
                "[plugins]\ndirs = [\"plugins\"]\nlibrary_dirs = [{:?}]\nstate_dir = \"state\"\n\n{extra}",
                target_debug().display().to_string()
            ),
        )
        .unwrap();
        path
    }

    /// A registry over this dir's plugins, with `platforms` as `[platforms.<id>]` TOML.
    pub(crate) fn registry(&self, platforms: &str, sink: Arc<dyn EventSink>) -> Registry {
        let config = Config::load(&self.config(platforms)).unwrap();
        Registry::discover(
            &config.plugins.dirs,
            RegistryOptions::from_config(&config, sink),
        )
    }
}

/// A platform config with the given plugin keys (TOML).
pub(crate) fn platform(toml_keys: &str) -> PlatformConfig {
    let table: toml::Table = toml::from_str(toml_keys).unwrap();
    PlatformConfig {
        plugin: table,
        ..PlatformConfig::default()
    }
}

/// An event sink that records inbound messages and lets a test wait for them.
#[derive(Default)]
pub(crate) struct Recorder {
    messages: Mutex<Vec<Inbound>>,
    arrived: Condvar,
}

impl EventSink for Recorder {
    fn inbound(&self, message: Inbound) -> Result<(), String> {
        self.messages.lock().unwrap().push(message);
        self.arrived.notify_all();
        Ok(())
    }
}

impl Recorder {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    /// Waits until `n` messages arrived (panics after 10 s: the event never came).
    pub(crate) fn wait_for(&self, n: usize) -> Vec<Inbound> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut messages = self.messages.lock().unwrap();
        while messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} messages arrived",
                messages.len()
            );
            messages = self.arrived.wait_timeout(messages, left).unwrap().0;
        }
        messages.clone()
    }

    pub(crate) fn messages(&self) -> Vec<Inbound> {
        self.messages.lock().unwrap().clone()
    }
}

/// Mapped files of this process whose path contains `needle`.
pub(crate) fn mapped_containing(needle: &str) -> Vec<PathBuf> {
    hermes_host::loader::mapped_files()
        .expect("/proc/self/maps")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(needle))
        .collect()
}

/// Files in `dir` and its subfolders (0 when it does not exist), not counting the shadow
/// folders' `.lock` files.
pub(crate) fn file_count(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => file_count(&e.path()),
            _ if e.file_name() == ".lock" => 0,
            _ => 1,
        })
        .sum()
}

/// The resident memory of process `pid` (`"self"` for this one), in KiB.
pub(crate) fn rss_kib(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The names of this process's threads.
pub(crate) fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Open fds and threads of this process, to check that a run of cycles leaked neither.
pub(crate) struct ProcessCounts {
    fds: usize,
    threads: usize,
}

impl ProcessCounts {
    pub(crate) fn take() -> Self {
        ProcessCounts {
            fds: fd_count(),
            threads: thread_names().len(),
        }
    }

    /// Panics if fds or threads grew since `take`.
    pub(crate) fn assert_no_growth(&self) {
        let fds = fd_count();
        assert!(fds <= self.fds, "fds grew from {} to {fds}", self.fds);
        let threads = thread_names();
        assert!(
            threads.len() <= self.threads,
            "threads grew from {}: {threads:?}",
            self.threads
        );
    }
}

/// Replaces every occurrence of `from` with `to` (same length) in `bytes`; returns the count.
pub(crate) fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}

/// A running `hermes-host serve`, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: std::process::Child,
    pub(crate) addr: String,
    pub(crate) config: PathBuf,
    pub(crate) stderr: PathBuf,
}

impl Server {
    /// Starts `serve` on `t`'s config (a free loopback port, the control socket and journal in
    /// `state/`) with `extra` appended, and waits for its ready line.
    pub(crate) fn start(t: &TestDir, extra: &str) -> Server {
        Server::start_with(t, extra, &[])
    }

    /// As [`Server::start`], with extra `serve` arguments (`--dev`).
    pub(crate) fn start_with(t: &TestDir, extra: &str, args: &[&str]) -> Server {
        let config = t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[journal]\nflush_ms = 20\n\n{extra}"
        ));
        Server::start_config(t, config, args)
    }

    /// Starts `serve` on the config file `config` (which sets its own listen address) and waits
    /// for its ready line.
    pub(crate) fn start_config(t: &TestDir, config: PathBuf, args: &[&str]) -> Server {
        Server::start_wrapped(t, config, args, &[])
    }

    /// As [`Server::start_config`], run through `wrapper` (e.g. `prlimit --nofile=1024`), which
    /// must exec the server in its own process.
    pub(crate) fn start_wrapped(
        t: &TestDir,
        config: PathBuf,
        args: &[&str],
        wrapper: &[&str],
    ) -> Server {
        Server::launch(t, config, args, wrapper, &[])
    }

    /// As [`Server::start`], with `env` added to the server's environment.
    pub(crate) fn start_env(t: &TestDir, extra: &str, env: &[(&str, &str)]) -> Server {
        let config = t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n{extra}"
        ));
        Server::launch(t, config, &[], &[], env)
    }

    fn launch(
        t: &TestDir,
        config: PathBuf,
        args: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let stderr = t.path().join("serve.log");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => std::process::Command::new(bin()),
        };
        let mut child = command
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "info", "serve"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let Some(addr) = line
            .strip_prefix("hermes-host ready: http://")
            .and_then(|r| r.split_whitespace().next())
        else {
            let _ = child.kill();
            panic!(
                "serve did not start: {line:?}\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let addr = addr.to_owned();
        Server {
            child,
            addr,
            config,
            stderr,
        }
    }

    /// Sends SIGKILL and waits for the exit.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends the server `signal` (`HUP`, `USR1`, `TERM`...).
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// The files mapped in the server process whose path contains `needle`.
    pub(crate) fn mapped(&self, needle: &str) -> Vec<String> {
        let maps = fs::read_to_string(format!("/proc/{}/maps", self.child.id())).unwrap();
        let mut files: Vec<String> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5).map(str::to_owned))
            .filter(|p| p.contains(needle))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, "GET", path, None, &[])
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(&self.addr, "POST", path, Some(body), &[])
    }

    /// POSTs `body` as JSON to `path`, which must answer 200: its JSON answer.
    pub(crate) fn post_ok(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, answer) = self.post(path, &body.to_string());
        assert_eq!(status, 200, "{path}: {answer}");
        serde_json::from_str(&answer).unwrap()
    }

    /// A POST with extra headers.
    pub(crate) fn post_with(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        http(&self.addr, "POST", path, Some(body), headers)
    }

    /// Runs `hermes-host --config <this server's config> <args>`.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `POST /api/platforms/{platform}/send` of `text` to `chat`: the status and the JSON answer.
    pub(crate) fn send(&self, platform: &str, chat: &str, text: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.post(
            &format!("/api/platforms/{platform}/send"),
            &serde_json::json!({ "chat_id": chat, "text": text }).to_string(),
        );
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// `GET /api/platforms/{id}` as JSON.
    pub(crate) fn platform(&self, id: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/api/platforms/{id}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the server's log has `needle` `n` times (panics after 10 s).
    pub(crate) fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `GET /api/platforms/{id}` until `done` holds (panics after 10 s).
    pub(crate) fn wait_platform(
        &self,
        id: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = self.platform(id);
            if done(&p) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting on {id}: {p}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 exchange: `(status, body)`; handles chunked bodies.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, body, headers);
    (status, body)
}

/// [`http`], with the response's head (status line and headers) too.
pub(crate) fn http_full(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    (status, head.to_owned(), body)
}

/// An open `GET /api/events` stream.
pub(crate) struct Sse {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Sse {
    /// Connects and waits for the response head (the subscription exists from then on).
    pub(crate) fn connect(addr: &str) -> Sse {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event's JSON (panics after the read timeout: the event never came).
    /// The next event whose text is `text`, and every event before it.
    pub(crate) fn until(&mut self, text: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let mut before = Vec::new();
        loop {
            let event = self.next();
            if event["text"] == text {
                return (event, before);
            }
            before.push(event);
        }
    }

    /// The next event from `platform` of `kind` (`message`, `edit`...), skipping others.
    pub(crate) fn next_kind(&mut self, platform: &str, kind: &str) -> serde_json::Value {
        loop {
            let event = self.next();
            if event["platform"] == platform && event["kind"] == kind {
                return event;
            }
        }
    }

    pub(crate) fn next(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("an SSE event within 10 s");
            assert!(n > 0, "the SSE stream ended");
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
    }
}

/// Loads the built library `lib` from `t`'s shadow dir and starts it as generation 1.
pub(crate) fn start_plugin(
    t: &TestDir,
    lib_name: &str,
    platform: &str,
    config: serde_json::Value,
    sink: Arc<dyn EventSink>,
) -> hermes_host::loader::Instance {
    hermes_host::loader::Library::open(&lib(lib_name), &t.shadow())
        .unwrap()
        .start(hermes_host::loader::StartOptions {
            call_timeout: Duration::from_secs(20),
            ..hermes_host::loader::StartOptions::new(platform, 1, config.to_string(), sink)
        })
        .unwrap()
}

/// Polls the instance's health until it is `want`; returns the detail (panics after 15 s).
pub(crate) fn wait_health(
    instance: &hermes_host::loader::Instance,
    want: hermes_host::message::HealthStatus,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = instance.health().unwrap();
        if health.status == want {
            return health.detail;
        }
        assert!(Instant::now() < deadline, "health stayed {health:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the instance and unloads its library: no error, nothing left mapped, and none of the
/// threads named `threads` left running.
pub(crate) fn stop_clean(instance: hermes_host::loader::Instance, threads: &[&str]) {
    let stopped = instance.stop(false, Duration::from_secs(10)).unwrap();
    assert_eq!(stopped.error, None);
    let report = stopped.library.unload();
    assert!(report.clean(), "{report:?}");
    let names = thread_names();
    assert!(
        !names
            .iter()
            .any(|n| threads.iter().any(|t| n.starts_with(t))),
        "plugin threads left: {names:?}"
    );
}

/// Raises this (test) process's soft open-file limit to the hard one, for tests that hold
/// thousands of sockets themselves.
pub(crate) fn raise_nofile() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// `program <args>` as an operator runs an installed binary: in `work`, with none of the
/// variables the config, plugin and state search reads inherited from the test's environment.
pub(crate) fn outside_checkout(
    program: &Path,
    work: &Path,
    args: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.current_dir(work).args(args);
    for var in [
        "HERMES_CONFIG",
        "HERMES_PLUGIN_PATH",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "STATE_DIRECTORY",
    ] {
        command.env_remove(var);
    }
    command
}
