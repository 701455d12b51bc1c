//! The Debian package, installed into this machine as an operator would: `cargo deb` builds it
//! from the debug build (`--profile dev`), `dpkg -i` installs it, the installed binary finds
//! `/etc/hermes/hermes.toml` and the adapters under `/usr/lib/hermes/plugins` by itself, serves
//! a send through the loopback, and `dpkg --purge` takes everything away again.
//!
//! It changes the machine, so it needs root (CI runs as root) and runs alone: `make test` runs
//! it after the other tests (`cargo nextest run -E 'test(/^package::/)'`), and the main run
//! leaves it out, so no other test sees the installed plugins.

use std::{path::Path, process::Command, time::Duration};

use crate::util::{self, TestDir};

const PACKAGE: &str = "hermes-host";

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installed `hermes-host`, run as an operator would: in a folder of their own, no
/// `--config`, none of the search path's variables.
fn installed(work: &Path, args: &[&str]) -> Command {
    let mut command = util::outside_checkout(Path::new("/usr/bin/hermes-host"), work, args);
    command.env("HOME", work);
    command
}

#[test]
fn package_installs_serves_a_send_and_purges() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: installing a package needs root (CI runs as root)");
        return;
    }
    let t = TestDir::new();
    let deb = t.path().join("hermes-host.deb");
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(util::root())
        .args([
            "deb",
            "-p",
            PACKAGE,
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--output",
        ])
        .arg(&deb)
        .output()
        .expect("cargo");
    assert!(
        built.status.success(),
        "cargo deb (install it with `cargo install cargo-deb`; `make test-deps` does): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    // Left over from an interrupted run: start clean.
    let _ = run("dpkg", &["--purge", PACKAGE]);
    ok(&run("dpkg", &["-i", deb.to_str().unwrap()]), "dpkg -i");
    let purge = scopeguard(|| {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    });

    for file in [
        "/usr/bin/hermes-host",
        "/etc/hermes/hermes.toml",
        "/lib/systemd/system/hermes-host.service",
        "/usr/lib/hermes/plugins/loopback/libhermes_loopback.so",
        "/usr/lib/hermes/plugins/irc/plugin.toml",
        "/usr/share/doc/hermes-host/operations.md",
    ] {
        assert!(Path::new(file).exists(), "{file} not installed");
    }
    assert!(Path::new("/var/lib/hermes").is_dir(), "no state folder");
    // The unit as systemd reads it: ExecStart's binary there, and not one warning (an unknown
    // or misspelt directive is only a warning, which systemd then ignores).
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/hermes-host.service"],
    );
    ok(&verify, "systemd-analyze verify");
    let warnings = String::from_utf8_lossy(&verify.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify: {warnings}"
    );
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    let out = installed(&work, &["plugin", "list", "--json"])
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&ok(&out, "plugin list")).unwrap();
    for id in ["loopback", "irc", "mqtt", "webhook", "xmpp", "matrix"] {
        let plugin = list
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {list:?}"));
        assert_eq!(plugin["from"]["origin"], "system", "{plugin}");
        assert_eq!(plugin["from"]["dir"], "/usr/lib/hermes/plugins", "{plugin}");
    }
    // The installed config's loopback table: configured.
    assert!(
        list.iter()
            .any(|p| p["id"] == "loopback" && p["configured"] == true)
    );

    // Serve with the installed config; READY comes over the notify socket, as under systemd.
    let notify = t.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let server = installed(&work, &["serve"])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    let mut server = KillOnDrop(Some(server));
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
    let out = installed(
        &work,
        &["send", "loopback", "lobby", "hello from the package"],
    )
    .output()
    .unwrap();
    let sent = ok(&out, "hermes-host send");
    assert!(sent.contains("loopback"), "{sent}");
    // SIGTERM: a clean stop, which writes the journal out.
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = server.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "serve ended with {status}");
    let journal = std::fs::read_to_string("/var/lib/hermes/journal.jsonl").unwrap_or_default();
    assert!(
        journal.contains("hello from the package"),
        "the journal under /var/lib/hermes: {journal}"
    );

    drop(purge);
    for gone in [
        "/usr/bin/hermes-host",
        "/etc/hermes",
        "/usr/lib/hermes",
        "/var/lib/hermes",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after the purge");
    }
}

/// Kills the server if the test ends before it stopped it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `f` when dropped (also when the test panics), so the machine is left as found.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
