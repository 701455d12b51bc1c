//! The webhook adapter against an HTTP server in the test: formats, retries, 429, signatures.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hermes_host::{
    loader::{CallError, Instance, Library},
    message::Outbound,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    peers::free_port,
    util::{self, Recorder, TestDir},
};

/// A request the target server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    body: serde_json::Value,
    at: Instant,
}

/// An HTTP server answering each path from a script of `(status, extra header)`; the last entry
/// repeats.
struct Target {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Target {
    fn start(script: Vec<(&'static str, Vec<(u16, &'static str)>)>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header == "\r\n" {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let mut seen = log.lock().unwrap();
                let n = seen.iter().filter(|s: &&Seen| s.path == path).count();
                seen.push(Seen {
                    path: path.clone(),
                    body: serde_json::from_slice(&body).unwrap_or_default(),
                    at: Instant::now(),
                });
                drop(seen);
                let answers = &script
                    .iter()
                    .find(|(p, _)| *p == path)
                    .expect("scripted path")
                    .1;
                let (status, header) = answers[n.min(answers.len() - 1)];
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n{header}\r\nok"
                );
            }
        });
        Target { addr, seen }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

fn start(t: &TestDir, config: serde_json::Value, recorder: &Arc<Recorder>) -> Instance {
    util::start_plugin(t, "hermes_webhook", "webhook", config, recorder.clone())
}

fn stop(instance: Instance) {
    util::stop_clean(instance, &["webhook-in"]);
}

#[test]
fn webhook_posts_each_format_retries_and_honours_retry_after() {
    let t = TestDir::new();
    let server = Target::start(vec![
        ("/slack", vec![(200, "")]),
        ("/mm", vec![(200, "")]),
        ("/discord", vec![(204, "")]),
        ("/flaky", vec![(503, ""), (502, ""), (200, "")]),
        ("/limited", vec![(429, "Retry-After: 1\r\n"), (200, "")]),
        ("/bad", vec![(400, "")]),
        ("/down", vec![(500, "")]),
    ]);
    let url = |p: &str| format!("http://{}{p}", server.addr);
    let config = serde_json::json!({
        "max_retries": 2,
        "targets": [
            { "chat": "ops", "url": url("/slack"), "format": "slack" },
            { "chat": "team", "url": url("/mm"), "format": "mattermost", "username": "hermes" },
            { "chat": "game", "url": url("/discord"), "format": "discord", "username": "hermes" },
            { "chat": "flaky", "url": url("/flaky"), "format": "slack" },
            { "chat": "limited", "url": url("/limited"), "format": "slack" },
            { "chat": "bad", "url": url("/bad"), "format": "slack" },
            { "chat": "down", "url": url("/down"), "format": "slack" },
        ],
    });
    let webhook = start(&t, config, &Recorder::new());
    for chat in ["ops", "team", "game"] {
        webhook
            .send(&Outbound::new(chat, format!("to {chat}")))
            .unwrap();
    }
    assert_eq!(
        server.seen("/slack")[0].body,
        serde_json::json!({ "text": "to ops" })
    );
    assert_eq!(
        server.seen("/mm")[0].body,
        serde_json::json!({ "text": "to team", "username": "hermes" })
    );
    assert_eq!(
        server.seen("/discord")[0].body,
        serde_json::json!({ "content": "to game", "username": "hermes" })
    );

    webhook.send(&Outbound::new("flaky", "eventually")).unwrap();
    assert_eq!(server.seen("/flaky").len(), 3, "503, 502, then 200");

    webhook.send(&Outbound::new("limited", "patience")).unwrap();
    let limited = server.seen("/limited");
    assert_eq!(limited.len(), 2);
    assert!(
        limited[1].at.duration_since(limited[0].at) >= Duration::from_secs(1),
        "Retry-After ignored"
    );

    let e = webhook.send(&Outbound::new("bad", "x")).unwrap_err();
    assert!(
        matches!(
            &e,
            CallError::Plugin {
                retryable: false,
                ..
            }
        ) && e.to_string().contains("HTTP 400"),
        "{e}"
    );
    assert_eq!(server.seen("/bad").len(), 1, "a 4xx is not retried");

    let e = webhook.send(&Outbound::new("down", "x")).unwrap_err();
    assert!(
        matches!(
            &e,
            CallError::Plugin {
                retryable: true,
                ..
            }
        ) && e.to_string().contains("gave up after 3 attempts"),
        "{e}"
    );
    assert_eq!(server.seen("/down").len(), 3);

    let e = webhook.send(&Outbound::new("nowhere", "x")).unwrap_err();
    assert!(
        e.to_string()
            .contains("no webhook target for chat \"nowhere\""),
        "{e}"
    );
    stop(webhook);
}

#[test]
fn webhook_retries_stop_at_their_budget() {
    let t = TestDir::new();
    // Always 429 with a 1 s Retry-After: ten retries would take ten seconds.
    let server = Target::start(vec![("/slow", vec![(429, "Retry-After: 1\r\n")])]);
    let config = serde_json::json!({
        "max_retries": 10,
        "timeout_ms": 500,
        "retry_budget_ms": 1500,
        "targets": [{ "chat": "slow", "url": format!("http://{}/slow", server.addr), "format": "slack" }],
    });
    let webhook = start(&t, config, &Recorder::new());
    let e = webhook.send(&Outbound::new("slow", "x")).unwrap_err();
    assert!(e.retryable(), "{e}");
    assert!(e.to_string().contains("1500 ms retry budget"), "{e}");
    // The first attempt, one wait of 1 s, the second: the third would pass the budget.
    assert_eq!(server.seen("/slow").len(), 2);
    stop(webhook);
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhook_inbound_delivers_only_correctly_signed_bodies() {
    let t = TestDir::new();
    let port = free_port();
    let secret = "a-shared-secret-of-some-length";
    let recorder = Recorder::new();
    let webhook = start(
        &t,
        serde_json::json!({ "listen": format!("127.0.0.1:{port}"), "secret": secret }),
        &recorder,
    );
    let addr = format!("127.0.0.1:{port}");
    let body = r#"{"text":"disk full on db1","user":"alertmanager"}"#;

    let (status, _) = util::http(
        &addr,
        "POST",
        "/hooks/alerts",
        Some(body),
        &[("X-Hermes-Signature", &sign(secret, body))],
    );
    assert_eq!(status, 204);
    let inbound = recorder.wait_for(1);
    assert_eq!(
        (
            inbound[0].chat_id.as_str(),
            inbound[0].user.as_str(),
            inbound[0].text.as_str()
        ),
        ("alerts", "alertmanager", "disk full on db1")
    );

    let forged = r#"{"text":"rm -rf /","user":"alertmanager"}"#;
    let (status, _) = util::http(
        &addr,
        "POST",
        "/hooks/alerts",
        Some(forged),
        &[("X-Hermes-Signature", &sign(secret, body))],
    );
    assert_eq!(status, 401);
    let (status, _) = util::http(
        &addr,
        "POST",
        "/hooks/alerts",
        Some(body),
        &[(
            "X-Hermes-Signature",
            &sign("another-secret-entirely!", body),
        )],
    );
    assert_eq!(status, 401);
    let (status, _) = util::http(&addr, "POST", "/hooks/alerts", Some(body), &[]);
    assert_eq!(status, 401);
    let (status, _) = util::http(&addr, "POST", "/elsewhere", Some(body), &[]);
    assert_eq!(status, 404);
    let junk = "not json";
    let (status, _) = util::http(
        &addr,
        "POST",
        "/hooks/alerts",
        Some(junk),
        &[("X-Hermes-Signature", &sign(secret, junk))],
    );
    assert_eq!(status, 400);

    // Only the one good request was delivered.
    let good_again = r#"{"text":"marker"}"#;
    util::http(
        &addr,
        "POST",
        "/hooks/alerts",
        Some(good_again),
        &[("X-Hermes-Signature", &sign(secret, good_again))],
    );
    let inbound = recorder.wait_for(2);
    assert_eq!(inbound.len(), 2);
    assert_eq!(
        (inbound[1].text.as_str(), inbound[1].user.as_str()),
        ("marker", "webhook")
    );
    stop(webhook);
}

#[test]
fn webhook_config_errors_name_the_key() {
    let t = TestDir::new();
    let library = Library::open(&util::lib("hermes_webhook"), &t.shadow()).unwrap();
    let timeout = Duration::from_secs(5);
    for (config, key) in [
        (r#"{"listen":"127.0.0.1:9000"}"#, "`secret`"),
        (r#"{"listen":"nowhere"}"#, "`listen`"),
        (
            r#"{"targets":[{"chat":"a","url":"ftp://x/y","format":"slack"}]}"#,
            "`targets[0].url`",
        ),
        (
            r#"{"targets":[{"chat":"a","url":"https://x/y","format":"teams"}]}"#,
            "unknown variant `teams`",
        ),
        (
            r#"{"targets":[{"chat":"a","url":"https://x/y","format":"slack"},{"chat":"a","url":"https://x/z","format":"slack"}]}"#,
            "`targets[1].chat`",
        ),
    ] {
        let e = library.validate_config(config, timeout).unwrap_err();
        assert!(e.to_string().contains(key), "{config}: {e}");
    }
    assert!(library.unload().clean());
}
