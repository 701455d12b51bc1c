//! Hostile peers: stand-in servers on loopback that speak just enough of a protocol to get an
//! adapter connected, then send what a broken or malicious server could (a stanza nested 20,000
//! deep, one that never ends, a 10 MB line, a 200 MB `/sync` answer). The gateway must stay up, refuse the input with a
//! log line naming the bound, and go on (the same connection, or a new one).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use crate::util::{Server, Sse, TestDir};

/// Reads from `stream` until what was read since the last call contains `marker`.
fn read_until(stream: &mut TcpStream, marker: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = stream.read(&mut buf).expect("the adapter talks");
        assert!(n > 0, "the adapter hung up before sending {marker:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Takes an XMPP client (`tls = "none"`) through SASL PLAIN and binding, up to its presence.
fn xmpp_handshake(stream: &mut TcpStream) {
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s' from='localhost' version='1.0'>";
    read_until(stream, "<stream:stream");
    write!(stream, "{header}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>").unwrap();
    read_until(stream, "</auth>");
    write!(
        stream,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    )
    .unwrap();
    read_until(stream, "<stream:stream");
    write!(stream, "{header}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>").unwrap();
    read_until(stream, "</iq>");
    write!(stream, "<iq type='result' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>hermes@localhost/hermes</jid></bind></iq>").unwrap();
    read_until(stream, "<presence/>");
}

fn chat(text: &str) -> String {
    format!(
        "<message from='mallory@localhost/x' to='hermes@localhost/hermes' type='chat' id='{text}'><body>{text}</body></message>"
    )
}

#[test]
fn an_xmpp_server_sending_deep_or_endless_stanzas_is_refused_and_the_gateway_serves_on() {
    let t = TestDir::new();
    t.install("xmpp", "hermes_xmpp", 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        // First connection: a message nested 20,000 elements deep (~140 KB); it used to
        // overflow the gateway's stack when the parsed tree was dropped.
        let (mut s, _) = listener.accept().unwrap();
        xmpp_handshake(&mut s);
        let _ = s.write_all(chat("before").as_bytes());
        let deep = format!("<message>{}", "<a>".repeat(20_000));
        let _ = s.write_all(deep.as_bytes());
        // Second: a stanza that never ends, 2 MiB of body text and counting.
        let (mut s, _) = listener.accept().unwrap();
        xmpp_handshake(&mut s);
        let _ = s.write_all(b"<message type='chat' from='m@localhost/x'><body>");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..32 {
            if s.write_all(&chunk).is_err() {
                break; // the adapter gave up on it
            }
        }
        // Third: an ordinary message, heard.
        let (mut s, _) = listener.accept().unwrap();
        xmpp_handshake(&mut s);
        s.write_all(chat("after").as_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // until the gateway stops
    });
    let server = Server::start(
        &t,
        &format!(
            "[platforms.xmpp]\njid = \"hermes@localhost\"\npassword = \"p\"\nserver = \"{addr}\"\ntls = \"none\"\nreconnect_max_ms = 500\n"
        ),
    );
    let mut sse = Sse::connect(&server.addr);
    sse.until("before");
    sse.until("after");
    let log = server.log();
    assert!(
        log.contains("nested over 64 elements deep"),
        "the deep stanza is named in the log:\n{log}"
    );
    assert!(
        log.contains("a stanza over 1048576 bytes"),
        "the endless stanza is named in the log:\n{log}"
    );
    assert_eq!(server.get("/health").0, 200);
    drop(server);
    peer.join().unwrap();
}

#[test]
fn an_irc_server_sending_a_10_mb_line_is_skipped_and_the_next_line_heard() {
    let t = TestDir::new();
    t.install("irc", "hermes_irc", 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        read_until(&mut s, "USER ");
        s.write_all(b":irc.test 001 hermes :Welcome\r\n").unwrap();
        s.write_all(b":m!m@h PRIVMSG #ops :").unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..160 {
            s.write_all(&chunk).unwrap(); // 10 MB, one line
        }
        s.write_all(b"\r\n:m!m@h PRIVMSG #ops :after\r\n").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let server = Server::start(
        &t,
        &format!(
            "[platforms.irc]\nserver = \"{addr}\"\nnick = \"hermes\"\nchannels = [\"#ops\"]\n"
        ),
    );
    let mut sse = Sse::connect(&server.addr);
    let (after, before) = sse.until("after");
    assert_eq!(after["chat_id"], "#ops");
    assert!(
        before.is_empty(),
        "the long line reached no one: {before:?}"
    );
    let log = server.log();
    assert!(
        log.contains("the server sent a line over 8703 bytes; skipped it"),
        "{log}"
    );
    drop(server);
    peer.join().unwrap();
}

/// Reads one HTTP request (head and `Content-Length` body); its request line, or `None` at EOF.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_owned)
}

#[test]
fn a_matrix_homeserver_sending_a_huge_sync_answer_is_refused_within_bounded_memory() {
    let t = TestDir::new();
    t.install("matrix", "hermes_matrix", 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let syncs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let syncs = std::sync::Arc::clone(&syncs);
        std::thread::spawn(move || {
            for mut s in listener.incoming().map_while(Result::ok) {
                let syncs = std::sync::Arc::clone(&syncs);
                std::thread::spawn(move || {
                    while let Some(line) = read_request(&mut s) {
                        if line.contains("/sync") {
                            syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            // 200 MB of one JSON string, announced and streamed.
                            let pad = 200usize << 20;
                            let _ = write!(
                                s,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"next_batch\":\"",
                                pad + 16
                            );
                            let chunk = vec![b'a'; 1 << 20];
                            for _ in 0..200 {
                                if s.write_all(&chunk).is_err() {
                                    return; // the adapter stopped reading
                                }
                            }
                            let _ = s.write_all(b"\"}");
                            return;
                        }
                        let body = r#"{"user_id":"@hermes:localhost","device_id":"D","access_token":"t","room_id":"!r:localhost"}"#;
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
    }
    let server = Server::start(
        &t,
        &format!(
            "[platforms.matrix]\nhomeserver = \"http://{addr}\"\nuser = \"@hermes:localhost\"\npassword = \"p\"\n"
        ),
    );
    // Three syncs: the first two were read and refused before the next was asked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while syncs.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = crate::util::rss_kib(&server.child.id().to_string());
    assert!(rss < 150 * 1024, "RSS {rss} KiB after a 200 MB sync answer");
    assert_eq!(server.get("/health").0, 200);
    let log = server.log();
    assert!(
        log.contains("the answer is over 16777216 bytes; refused"),
        "{log}"
    );
}
