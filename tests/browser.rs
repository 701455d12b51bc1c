//! The status page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: the platform rows render, a send through the form comes back in the live tail,
//! and a screenshot is kept in the test's folder.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

use crate::util::{Server, TestDir};

/// A headless Chromium and one page in it, over the DevTools protocol.
struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    fn open(t: &TestDir, url: &str) -> Browser {
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!(
                "--user-data-dir={}",
                t.path().join("chromium").display()
            ))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (apt-get install chromium; make test installs it as root)");
        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let ws = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once("DevTools listening on ")
                    .map(|(_, u)| u.trim().to_owned())
            })
            .expect("chromium printed its DevTools address");
        let (socket, _) = tungstenite::connect(ws.as_str()).unwrap();
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap();
        loop {
            let Message::Text(text) = self.socket.read().unwrap() else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise): its value, or the exception.
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        match result["exceptionDetails"].is_null() {
            true => Ok(result["result"]["value"].clone()),
            false => Err(result),
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Evaluates `expression` until it is true (the page loads, renders and streams on its
    /// own; until it has loaded, the expression may throw).
    fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_eval(expression).ok() != Some(json!(true)) {
            assert!(Instant::now() < deadline, "never true: {expression}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_status_page_lists_platforms_and_sends_through_its_form_in_a_real_browser() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install("idle", "hermes_loopback", 1);
    let server = Server::start(&t, "[platforms.loopback]\nuser = \"echo\"\n");
    let mut page = Browser::open(&t, &format!("http://{}/", server.addr));

    // The rows come from /api/platforms: every installed plugin, with its state.
    page.wait_for("document.querySelectorAll('tr[data-platform]').length === 2");
    let rows = page.eval(
        "[...document.querySelectorAll('tr[data-platform]')].map(r => [...r.cells].slice(0, 3).map(c => c.textContent))",
    );
    assert_eq!(
        rows,
        json!([["idle", "registered", "0"], ["loopback", "running", "1"]])
    );

    // Where each platform runs: the loopback in the gateway's process, so not sandboxed.
    page.wait_for(
        "document.querySelector('tr[data-platform=loopback] td.sandbox').textContent === 'none'",
    );

    // A send through the form; the echo arrives in the live tail (the page reads /api/events).
    page.wait_for("document.getElementById('send-platform').options.length === 2");
    page.eval(
        "document.getElementById('send-platform').value = 'loopback';
         document.getElementById('send-chat').value = 'lobby';
         document.getElementById('send-text').value = 'hello from the browser';
         document.getElementById('send-form').requestSubmit(); true",
    );
    page.wait_for(
        "document.getElementById('send-result').textContent.startsWith('sent as lb-1-1')",
    );
    page.wait_for(
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('loopback/lobby  <echo>  hello from the browser'))",
    );

    // A queued edit the platform cannot carry (its manifest declares no edits) is a dead
    // letter at once: the live tail says so and the platform's row counts it.
    let (status, answer) = server.post_with(
        "/api/platforms/loopback/edit",
        r#"{"chat_id":"lobby","message_id":"lb-1-1","text":"fixed"}"#,
        &[("Prefer", "respond-async")],
    );
    assert_eq!(status, 202, "{answer}");
    page.wait_for(
        "[...document.querySelectorAll('#events li.delivery')].some(li => li.textContent.includes('loopback/lobby  delivery') && li.textContent.includes(' dead: '))",
    );
    page.wait_for(
        "document.querySelector('tr[data-platform=loopback] td.dead-letters').textContent === '1'",
    );

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(t.path().join("status-page.png"), png).unwrap();
}

#[test]
fn with_a_token_configured_the_status_page_asks_for_it() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let token = "correct-horse-battery-staple";
    let server = Server::start_config(
        &t,
        t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\napi_token = \"{token}\"\n\n[platforms.loopback]\n"
        )),
        &[],
    );
    let mut page = Browser::open(&t, &format!("http://{}/", server.addr));
    page.wait_for("getComputedStyle(document.getElementById('token-box')).display === 'block'");
    assert_eq!(
        page.eval("document.querySelectorAll('tr[data-platform]').length"),
        json!(0)
    );
    page.eval(&format!(
        "document.getElementById('token').value = '{token}';
         document.getElementById('token-form').requestSubmit(); true"
    ));
    page.wait_for("document.querySelectorAll('tr[data-platform]').length === 1");
    page.wait_for("getComputedStyle(document.getElementById('token-box')).display === 'none'");
}

/// Serves one blank page on its own port (another origin than the gateway's) until the test
/// ends; its address.
fn other_origin() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut head = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut head);
            let page = "<!doctype html><title>elsewhere</title>";
            let _ = std::io::Write::write_all(
                &mut s,
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

#[test]
fn a_page_on_another_origin_cannot_send_through_the_gateway() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let server = Server::start(&t, "[platforms.loopback]\n");
    let mut page = Browser::open(&t, &format!("http://{}/", other_origin()));
    page.wait_for("document.title === 'elsewhere'");
    // What a hostile page can do without a preflight: a text/plain POST (its answer is opaque
    // to the page, but the request is made), and a form-encoded one.
    let url = format!("http://{}/api/platforms/loopback/send", server.addr);
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let sent = page.eval(&format!(
            "fetch('{url}', {{ method: 'POST', mode: 'no-cors', headers: {{ 'Content-Type': '{content_type}' }},
               body: JSON.stringify({{ chat_id: 'c', text: 'forged' }}) }}).then(() => true, () => false)"
        ));
        assert_eq!(sent, json!(true), "the request reached the gateway");
    }
    // A JSON POST needs a preflight, which the gateway never grants: it fails in the page.
    let sent = page.eval(&format!(
        "fetch('{url}', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }},
           body: JSON.stringify({{ chat_id: 'c', text: 'forged' }}) }}).then(() => true, () => false)"
    ));
    assert_eq!(sent, json!(false));
    // Records keep their order: once a send of ours is in the journal, a forged one before it
    // would be too.
    assert_eq!(server.send("loopback", "c", "ours").0, 200);
    let journal = t.path().join("state/journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if text.contains("\"ours\"") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "our send never reached the journal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!text.contains("forged"), "{text}");
}

#[test]
fn the_live_tail_keeps_the_newest_500_messages() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let server = Server::start(&t, "[platforms.loopback]\nuser = \"echo\"\n");
    let mut page = Browser::open(&t, &format!("http://{}/", server.addr));
    page.wait_for("document.querySelectorAll('tr[data-platform]').length === 1");
    // The tail is connected once an echo shows in it.
    assert_eq!(server.send("loopback", "c", "first").0, 200);
    page.wait_for("document.getElementById('events').textContent.includes('first')");
    // In batches the page keeps up with, however loaded the machine: a subscriber that falls
    // too far behind is dropped (`lagged`), which another test covers.
    for batch in 0..13 {
        for i in batch * 40..(batch + 1) * 40 {
            assert_eq!(server.send("loopback", "c", &format!("m{i}")).0, 200);
        }
        page.wait_for(&format!(
            "document.getElementById('events').firstElementChild.textContent.endsWith('m{}')",
            (batch + 1) * 40 - 1
        ));
    }
    assert_eq!(
        page.eval("document.getElementById('events').childElementCount"),
        json!(500)
    );
}
