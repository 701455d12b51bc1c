//! Real peers for the adapter tests: ngircd and mosquitto from Debian's packages, started on
//! free loopback ports in the test's own folder and killed when dropped, and a raw IRC client.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A free TCP port on 127.0.0.1 (bound, then released for the peer to take).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str, log: &Path) {
    wait_listening_for(port, what, log, Duration::from_secs(10));
}

/// [`wait_listening`] with a limit of `within`.
fn wait_listening_for(port: u16, what: &str, log: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn need(binary: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(binary);
    assert!(
        path.exists(),
        "{binary} is missing: install Debian's {package} package (.ci/run does)"
    );
    path
}

/// A peer server process on a loopback port, killed when dropped.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    /// Starts the process in `dir` on `port` and returns once it listens.
    spawn: fn(&Path, u16) -> Child,
}

impl Daemon {
    fn start(dir: &Path, port: u16, spawn: fn(&Path, u16) -> Child) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let child = spawn(dir, port);
        Daemon {
            child: Some(child),
            port,
            dir: dir.to_owned(),
            spawn,
        }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (the adapter sees its connection drop).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM, as a service manager would (it saves what it persists).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.child = Some((self.spawn)(&self.dir, self.port));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An ngircd server.
pub(crate) struct Ngircd(Daemon);

impl std::ops::Deref for Ngircd {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Ngircd {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Ngircd {
    pub(crate) fn start(dir: &Path) -> Ngircd {
        Ngircd(Daemon::start(dir, free_port(), Self::spawn))
    }

    /// Runs ngircd on `port`, configured with `dir/ngircd.conf` (TLS too after `start_tls`).
    fn spawn(dir: &Path, port: u16) -> Child {
        let binary = need("/usr/sbin/ngircd", "ngircd");
        let conf = dir.join("ngircd.conf");
        std::fs::write(
            &conf,
            format!(
                "[Global]\nName = irc.hermes.test\nInfo = hermes test server\nListen = 127.0.0.1\nPorts = {port}\nMotdPhrase = \"hermes test\"\n\
                 [Limits]\nMaxConnectionsIP = 0\nPingTimeout = 5\nPongTimeout = 5\n[Options]\nDNS = no\nIdent = no\nPAM = no\n{}",
                tls_section(dir)
            ),
        )
        .unwrap();
        let log = dir.join("ngircd.log");
        let child = Command::new(binary)
            .args(["-n", "-f"])
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "ngircd", &log);
        child
    }

    /// Starts ngircd with a TLS port too, its certificate signed by a CA made for the test;
    /// returns the server, the TLS address and the CA's PEM file.
    pub(crate) fn start_tls(dir: &Path) -> (Ngircd, String, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let tls_port = free_port();
        test_certificates(dir, "127.0.0.1", "IP:127.0.0.1");
        std::fs::write(dir.join("tls-port"), tls_port.to_string()).unwrap();
        let server = Ngircd::start(dir);
        wait_listening(tls_port, "ngircd (TLS)", &dir.join("ngircd.log"));
        (server, format!("127.0.0.1:{tls_port}"), dir.join("ca.pem"))
    }
}

/// A CA made for the test (`dir/ca.pem`) and a server certificate it signed (`dir/server.pem`,
/// key `dir/server.key`) for `cn` with the subject alternative names `san`.
fn test_certificates(dir: &Path, cn: &str, san: &str) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hermes test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={cn}"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// The `[SSL]` section when `start_tls` prepared certificates in `dir`.
fn tls_section(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join("tls-port")) {
        Ok(port) => format!(
            "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {port}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
        Err(_) => String::new(),
    }
}

/// A raw IRC client speaking in the tests.
pub(crate) struct IrcClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub(crate) nick: String,
}

impl IrcClient {
    /// Connects and registers as `nick`.
    pub(crate) fn connect(addr: &str, nick: &str) -> IrcClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut client = IrcClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            nick: nick.to_owned(),
        };
        client.say(&format!("NICK {nick}"));
        client.say(&format!("USER {nick} 0 * :test client"));
        client.expect(|l| l.contains(" 001 "));
        client
    }

    pub(crate) fn say(&mut self, line: &str) {
        write!(self.writer, "{line}\r\n").unwrap();
    }

    /// Joins `channel` and waits for the end of the names list.
    pub(crate) fn join(&mut self, channel: &str) {
        self.say(&format!("JOIN {channel}"));
        self.expect(|l| l.contains(" 366 "));
    }

    /// Reads lines (answering PING) until one satisfies `want`; returns it.
    pub(crate) fn expect(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("an IRC line within 15 s");
            assert!(n > 0, "the IRC server closed the test client's connection");
            let line = line.trim_end().to_owned();
            if let Some(token) = line.strip_prefix("PING ") {
                self.say(&format!("PONG {token}"));
                continue;
            }
            if want(&line) {
                return line;
            }
        }
    }
}

/// A mosquitto broker.
pub(crate) struct Mosquitto(Daemon);

impl std::ops::Deref for Mosquitto {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Mosquitto {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Mosquitto {
    pub(crate) fn start(dir: &Path) -> Mosquitto {
        Mosquitto(Daemon::start(dir, free_port(), Self::spawn))
    }

    /// Runs mosquitto on `port`, configured with `dir/mosquitto.conf`.
    fn spawn(dir: &Path, port: u16) -> Child {
        let binary = need("/usr/sbin/mosquitto", "mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nuser root\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("mosquitto.err")).unwrap())
            .spawn()
            .unwrap();
        wait_listening(port, "mosquitto", &dir.join("mosquitto.err"));
        child
    }

    /// `mosquitto_pub -t topic -m message`.
    pub(crate) fn publish(&self, topic: &str, message: &str) {
        self.publish_with(topic, message, &[]);
    }

    /// `mosquitto_pub -t topic -m message -r`: kept by the broker for later subscribers.
    pub(crate) fn publish_retained(&self, topic: &str, message: &str) {
        self.publish_with(topic, message, &["-r"]);
    }

    fn publish_with(&self, topic: &str, message: &str, extra: &[&str]) {
        let status = Command::new(need("/usr/bin/mosquitto_pub", "mosquitto-clients"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                topic,
                "-m",
                message,
                "-q",
                "1",
            ])
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Subscribes with `mosquitto_sub` and returns once the broker acknowledged it.
    pub(crate) fn subscribe(&self, topic: &str) -> Subscriber {
        self.subscribe_as(topic, None)
    }

    /// [`Mosquitto::subscribe`] with a persistent session under client id `id` (`-c -i id`):
    /// the broker keeps the subscription, and the QoS 1 messages that arrive while the client
    /// is away, for its return (across a broker restart too: persistence is on).
    pub(crate) fn subscribe_as(&self, topic: &str, id: Option<&str>) -> Subscriber {
        // Line-buffered (a pipe would hold the output back); `-W 30` ends it after 30 s, so a
        // message that never comes fails the test instead of hanging it.
        let port = self.port.to_string();
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(need("/usr/bin/mosquitto_sub", "mosquitto-clients"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                topic,
                "-v",
                "-d",
                "-q",
                "1",
                "-W",
                "30",
            ])
            .args(id.map_or(vec![], |id| vec!["-c", "-i", id]))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sub = Subscriber {
            reader: BufReader::new(child.stdout.take().unwrap()),
            child,
            early: std::collections::VecDeque::new(),
        };
        // A persistent session's waiting messages may come before the SUBACK: kept for next().
        loop {
            let line = sub.read_until(|_| true);
            if line.contains("SUBACK") {
                break;
            }
            if is_message(&line) {
                sub.early.push_back(line);
            }
        }
        sub
    }
}

/// A running `mosquitto_sub -v -d`.
pub(crate) struct Subscriber {
    child: Child,
    reader: BufReader<std::process::ChildStdout>,
    early: std::collections::VecDeque<String>,
}

/// Whether a line of `mosquitto_sub -v -d` is a message (`topic payload`), not its debug talk.
fn is_message(line: &str) -> bool {
    !line.starts_with("Client ") && !line.starts_with("Subscribed ") && !line.is_empty()
}

impl Subscriber {
    fn read_until(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "mosquitto_sub ended"
            );
            if want(line.trim_end()) {
                return line.trim_end().to_owned();
            }
        }
    }

    /// The next message as `(topic, payload)`.
    pub(crate) fn next(&mut self) -> (String, String) {
        let line = match self.early.pop_front() {
            Some(line) => line,
            None => self.read_until(is_message),
        };
        let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
        (topic.to_owned(), payload.to_owned())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prosody server for the domain `localhost` (MUC service `conference.localhost`), its
/// certificate signed by a CA made for the test, with its own config and data folder; the
/// second field is the port of its HTTP file share.
pub(crate) struct Prosody(Daemon, u16);

impl std::ops::Deref for Prosody {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Prosody {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Prosody {
    /// Starts Prosody with `users` (name, password) registered; the CA's PEM file is
    /// `dir/ca.pem`.
    pub(crate) fn start(dir: &Path, users: &[(&str, &str)]) -> Prosody {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        test_certificates(dir, "localhost", "DNS:localhost,DNS:conference.localhost");
        let port = free_port();
        // HTTP for the file share (XEP-0363 upload.localhost), on a port of its own.
        let http = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("prosody.cfg.lua"),
            format!(
                "pidfile = \"{d}/prosody.pid\"\ndata_path = \"{d}/data\"\ndaemonize = false\nrun_as_root = true\n\
                 log = {{ {{ levels = {{ min = \"info\" }}, to = \"file\", filename = \"{d}/prosody.log\" }} }}\n\
                 interfaces = {{ \"127.0.0.1\" }}\nc2s_ports = {{ {port} }}\ns2s_ports = {{ }}\nhttp_ports = {{ {http} }}\nhttp_interfaces = {{ \"127.0.0.1\" }}\nhttps_ports = {{ }}\nc2s_direct_tls_ports = {{ }}\n\
                 http_external_url = \"http://127.0.0.1:{http}/\"\n\
                 modules_enabled = {{ \"roster\"; \"saslauth\"; \"tls\"; \"disco\"; \"ping\"; \"posix\" }}\nmodules_disabled = {{ \"s2s\" }}\n\
                 authentication = \"internal_hashed\"\nc2s_require_encryption = true\n\
                 ssl = {{ certificate = \"{d}/server.pem\"; key = \"{d}/server.key\" }}\n\
                 VirtualHost \"localhost\"\nComponent \"conference.localhost\" \"muc\"\n    muc_room_locking = false\n\
                 Component \"upload.localhost\" \"http_file_share\"\n    http_file_share_size_limit = 10485760\n    http_host = \"127.0.0.1\"\n"
            ),
        )
        .unwrap();
        let prosodyctl = need("/usr/bin/prosodyctl", "prosody");
        for (user, password) in users {
            let out = Command::new(&prosodyctl)
                .arg("--config")
                .arg(dir.join("prosody.cfg.lua"))
                .args(["register", user, "localhost", password])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "prosodyctl register {user}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Prosody(Daemon::start(dir, port, Self::spawn), http)
    }

    /// The port of its HTTP file share (XEP-0363 uploads go there).
    pub(crate) fn http_port(&self) -> u16 {
        self.1
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let binary = need("/usr/bin/prosody", "prosody");
        let log = dir.join("prosody.log");
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.join("prosody.cfg.lua"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "prosody", &log);
        child
    }
}

/// A Synapse homeserver (`localhost`, SQLite) from the virtual environment `make test` makes
/// under the target dir (`scripts/test-deps`), with its own config, data and users. The signing
/// key is a fixed test key (the server federates with nothing), so nothing is generated per test.
pub(crate) struct Synapse(Daemon);

impl std::ops::Deref for Synapse {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Synapse {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

/// The virtual environment holding Synapse.
fn synapse_venv() -> PathBuf {
    let venv = crate::util::target_debug()
        .parent()
        .unwrap()
        .join("synapse-venv");
    assert!(
        venv.join("bin/synapse_homeserver").exists(),
        "{} has no Synapse: `make test` installs it (scripts/test-deps: python3 -m venv, pip install matrix-synapse)",
        venv.display()
    );
    venv
}

impl Synapse {
    /// Starts Synapse with `users` (name, password) registered.
    pub(crate) fn start(dir: &Path, users: &[(&str, &str)]) -> Synapse {
        Synapse::start_limited(dir, users, "{per_second: 1000, burst_count: 1000}")
    }

    /// [`Synapse::start`] with `message_limit` as its `rc_message` (the rate limit on sending
    /// messages; the others stay out of the way).
    pub(crate) fn start_limited(
        dir: &Path,
        users: &[(&str, &str)],
        message_limit: &str,
    ) -> Synapse {
        std::fs::create_dir_all(dir).unwrap();
        let venv = synapse_venv();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("signing.key"),
            "ed25519 a_test aGVybWVzLXRlc3Qtc2lnbmluZy1rZXktMzJieXRlcyE\n",
        )
        .unwrap();
        let limit = "{per_second: 1000, burst_count: 1000}";
        std::fs::write(
            dir.join("homeserver.yaml"),
            format!(
                "server_name: localhost\npid_file: {d}/homeserver.pid\n\
                 listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    tls: false\n    x_forwarded: false\n    resources:\n      - names: [client]\n        compress: false\n\
                 database:\n  name: sqlite3\n  args:\n    database: {d}/homeserver.db\n\
                 media_store_path: {d}/media\nsigning_key_path: {d}/signing.key\n\
                 registration_shared_secret: test-shared-secret\nmacaroon_secret_key: test-macaroon-secret\nform_secret: test-form-secret\n\
                 report_stats: false\ntrusted_key_servers: []\nsuppress_key_server_warning: true\n\
                 rc_message: {message_limit}\nrc_login:\n  address: {limit}\n  account: {limit}\n  failed_attempts: {limit}\n\
                 rc_joins:\n  local: {limit}\n  remote: {limit}\nrc_invites:\n  per_room: {limit}\n  per_user: {limit}\n"
            ),
        )
        .unwrap();
        let server = Synapse(Daemon::start(dir, port, Self::spawn));
        for (user, password) in users {
            let out = Command::new(venv.join("bin/register_new_matrix_user"))
                .args(["-u", user, "-p", password, "--no-admin", "-c"])
                .arg(dir.join("homeserver.yaml"))
                .arg(server.url())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "register_new_matrix_user {user}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let log = dir.join("synapse.log");
        let child = Command::new(synapse_venv().join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.join("homeserver.yaml"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_listening_for(port, "synapse", &log, Duration::from_secs(60));
        child
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr())
    }
}
