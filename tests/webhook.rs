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
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) body: serde_json::Value,
    pub(crate) at: Instant,
}

/// An HTTP server answering each path from a script of `(status, extra header)`; the last entry
/// repeats.
pub(crate) struct Target {
    pub(crate) addr: String,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
}

impl Target {
    pub(crate) fn start(script: Vec<(&'static str, Vec<(u16, &'static str)>)>) -> Target {
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

    pub(crate) fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

pub(crate) fn start(t: &TestDir, config: serde_json::Value, recorder: &Arc<Recorder>) -> Instance {
    util::start_plugin(t, "hermes_webhook", "webhook", config, recorder.clone())
}

pub(crate) fn stop(instance: Instance) {
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

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `v1` headers for `body` POSTed to `path` at `timestamp`.
pub(crate) fn signed_at(
    secret: &str,
    timestamp: u64,
    path: &str,
    body: &str,
) -> [(String, String); 2] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\nPOST\n{path}\n{body}").as_bytes());
    [
        ("X-Hermes-Timestamp".into(), timestamp.to_string()),
        (
            "X-Hermes-Signature".into(),
            format!("v1={}", hex::encode(mac.finalize().into_bytes())),
        ),
    ]
}

/// POSTs `body` to `path` with `headers`: the status and the answer.
pub(crate) fn post(
    addr: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (u16, String) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    util::http(addr, "POST", path, Some(body), &headers)
}

fn listener(t: &TestDir, secret: &str, recorder: &Arc<Recorder>) -> (Instance, String) {
    let port = free_port();
    let webhook = start(
        t,
        serde_json::json!({ "listen": format!("127.0.0.1:{port}"), "secret": secret }),
        recorder,
    );
    (webhook, format!("127.0.0.1:{port}"))
}

#[test]
fn webhook_inbound_delivers_only_correctly_signed_fresh_requests_once() {
    let t = TestDir::new();
    let secret = "a-shared-secret-of-some-length";
    let recorder = Recorder::new();
    let (webhook, addr) = listener(&t, secret, &recorder);
    let body = r#"{"text":"disk full on db1","user":"alertmanager"}"#;
    let signed = signed_at(secret, now_secs(), "/hooks/alerts", body);

    let (status, _) = post(&addr, "/hooks/alerts", body, &signed);
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

    // (path, body, headers, the reason the answer gives)
    type Refusal<'a> = (&'a str, &'a str, Vec<(String, String)>, &'a str);
    let refusals: Vec<Refusal<'_>> = vec![
        // The same request again: a replay.
        ("/hooks/alerts", body, signed.to_vec(), "seen already"),
        // Its signature on another chat, or over another body.
        (
            "/hooks/other",
            body,
            signed.to_vec(),
            "bad X-Hermes-Signature",
        ),
        (
            "/hooks/alerts",
            r#"{"text":"rm -rf /"}"#,
            signed.to_vec(),
            "bad X-Hermes-Signature",
        ),
        // Signed right, but outside the window.
        (
            "/hooks/alerts",
            body,
            signed_at(secret, now_secs() - 600, "/hooks/alerts", body).to_vec(),
            "outside the 300 s window",
        ),
        (
            "/hooks/alerts",
            body,
            signed_at(
                "another-secret-entirely!",
                now_secs(),
                "/hooks/alerts",
                body,
            )
            .to_vec(),
            "bad X-Hermes-Signature",
        ),
        ("/hooks/alerts", body, vec![], "missing X-Hermes-Signature"),
        // The body-only signature of earlier versions.
        (
            "/hooks/alerts",
            body,
            vec![("X-Hermes-Signature".into(), "sha256=00".into())],
            "no longer accepted",
        ),
    ];
    for (path, body, headers, why) in refusals {
        let (status, answer) = post(&addr, path, body, &headers);
        assert_eq!(status, 401, "{path} {why}: {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    let (status, _) = post(&addr, "/elsewhere", body, &[]);
    assert_eq!(status, 404);
    let junk = "not json";
    let (status, _) = post(
        &addr,
        "/hooks/alerts",
        junk,
        &signed_at(secret, now_secs(), "/hooks/alerts", junk),
    );
    assert_eq!(status, 400);

    // Only the one good request was delivered.
    let good_again = r#"{"text":"marker"}"#;
    let (status, _) = post(
        &addr,
        "/hooks/alerts",
        good_again,
        &signed_at(secret, now_secs(), "/hooks/alerts", good_again),
    );
    assert_eq!(status, 204);
    let inbound = recorder.wait_for(2);
    assert_eq!(inbound.len(), 2);
    assert_eq!(
        (inbound[1].text.as_str(), inbound[1].user.as_str()),
        ("marker", "webhook")
    );
    stop(webhook);
}

#[test]
fn webhook_listener_bounds_heads_and_serves_around_slow_clients() {
    let t = TestDir::new();
    let secret = "a-shared-secret-of-some-length";
    let recorder = Recorder::new();
    let (webhook, addr) = listener(&t, secret, &recorder);
    // One header line that never ends: refused at 16 KiB, not read into memory for ever.
    let mut endless = std::net::TcpStream::connect(&addr).unwrap();
    endless
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    endless
        .write_all(b"POST /hooks/a HTTP/1.1\r\nX-Junk: ")
        .unwrap();
    let chunk = vec![b'j'; 64 * 1024];
    for _ in 0..16 {
        if endless.write_all(&chunk).is_err() {
            break; // the listener answered and closed
        }
    }
    let mut answer = String::new();
    let _ = endless.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // Clients that trickle their heads, more of them than the listener serves at once.
    let mut slow = Vec::new();
    for _ in 0..80 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /hooks/a HTTP/1.1\r\n").unwrap();
        slow.push(s);
    }
    // A signed request gets in at once all the same.
    let body = r#"{"text":"through"}"#;
    let started = Instant::now();
    let (status, answer) = post(
        &addr,
        "/hooks/a",
        body,
        &signed_at(secret, now_secs(), "/hooks/a", body),
    );
    assert_eq!(status, 204, "{answer}");
    assert_eq!(recorder.wait_for(1)[0].text, "through");
    eprintln!(
        "a signed request beside 80 trickling clients: {:?}",
        started.elapsed()
    );
    drop(slow);
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
