//! Abusive clients of the public API: connections that sit idle after a request, bodies that
//! trickle, requests for another host or from another origin. Each must leave `/health` and
//! real requests answering, and be refused in the documented words.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::util::{self, Server, TestDir};

/// A server with a small connection limit (the lock-out needs only that many attackers).
fn limited(t: &TestDir, extra: &str) -> Server {
    t.install("loopback", "hermes_loopback", 1);
    Server::start_config(
        t,
        t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\nmax_connections = 8\n{extra}\n\n[platforms.loopback]\n"
        )),
        &[],
    )
}

/// Reads one response's head and its `Content-Length` body from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "the connection closed");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn idle_keep_alive_connections_are_evicted_at_the_limit() {
    let t = TestDir::new();
    let server = limited(&t, "");
    // Eight clients take every slot with a request each, then sit on their connections.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        idle.push(s);
    }
    // Newcomers get in: each closes the connection idle the longest.
    for i in 0..6 {
        let (status, body) = server.get("/health");
        assert_eq!(status, 200, "newcomer {i}: {body}");
    }
    let (status, body) = server.send("loopback", "c", "in");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn slow_bodies_time_out_and_cannot_lock_out_health() {
    let t = TestDir::new();
    let server = limited(&t, "body_read_timeout_ms = 2000");
    // Eight clients announce a body and trickle it (one byte now, nothing after).
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "POST /api/platforms/loopback/send HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
            server.addr
        )
        .unwrap();
        slow.push(s);
    }
    // They hold no slot that a real request needs.
    for i in 0..20 {
        let (status, body) = server.get("/health");
        assert_eq!(status, 200, "probe {i}: {body}");
    }
    // One that is not evicted is answered 408 (the JSON error) once its time is up.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /api/platforms/loopback/send HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        server.addr
    )
    .unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 408, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 2s"),
        "{v}"
    );
    assert_eq!(v["retryable"], true);
}

#[test]
fn requests_for_another_host_or_from_another_origin_are_refused() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let server = Server::start(&t, "[platforms.loopback]\n");
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let send = |headers: &[(&str, &str)], content_type: Option<&str>| {
        let mut all = headers.to_vec();
        if let Some(ct) = content_type {
            all.push(("Content-Type", ct));
        }
        raw_post(&server.addr, &all)
    };
    // DNS rebinding: the page's own name in Host.
    let (status, body) = send(&[("Host", &format!("evil.example:{port}"))], None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Host header \\\"evil.example"), "{body}");
    // A script on another origin.
    let (status, body) = send(&[("Origin", "http://evil.example")], None);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("origin \\\"http://evil.example\\\""),
        "{body}"
    );
    let (status, _) = send(&[("Origin", "null")], None);
    assert_eq!(status, 403);
    // A form's or text/plain body, which needs no preflight.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (status, body) = send(&[], Some(ct));
        assert_eq!(status, 415, "{ct}: {body}");
    }
    // The gateway's own names and origin.
    for host in [format!("localhost:{port}"), server.addr.clone()] {
        let origin = format!("http://{host}");
        let (status, body) = send(&[("Host", &host), ("Origin", &origin)], None);
        assert_eq!(status, 200, "{host}: {body}");
    }
    // Health is checked the same way (a rebinding page learns nothing), and passes by name.
    let (status, _) = util::http(
        &server.addr,
        "GET",
        "/health",
        None,
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403);
}

#[test]
fn with_a_token_other_origins_need_it_and_allowed_hosts_are_honoured() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let token = "0123456789abcdef0123";
    let server = Server::start_config(
        &t,
        t.config(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\napi_token = \"{token}\"\nallowed_hosts = [\"hermes.test\"]\n\n[platforms.loopback]\n"
        )),
        &[],
    );
    let bearer = format!("Bearer {token}");
    let (status, body) = raw_post(
        &server.addr,
        &[
            ("Host", "hermes.test"),
            ("Origin", "https://dashboard.example"),
            ("Authorization", &bearer),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw_post(
        &server.addr,
        &[("Host", "other.test"), ("Authorization", &bearer)],
    );
    assert_eq!(status, 403);
}

/// A send with `headers` (a `Host` and `Content-Type` of the test's own unless given).
fn raw_post(addr: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let body = r#"{"chat_id":"c","text":"x"}"#;
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut request =
        String::from("POST /api/platforms/loopback/send HTTP/1.1\r\nConnection: close\r\n");
    if !has("Host") {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("Content-Type") {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut s)
}

/// `GET /api/idle`'s count of SSE subscribers.
fn sse_clients(server: &Server) -> u64 {
    let (status, body) = server.get("/api/idle");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["sse_clients"]
        .as_u64()
        .unwrap()
}

fn wait_sse_clients(server: &Server, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sse_clients(server) != n {
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} SSE clients"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ten_thousand_idle_sse_clients_share_one_copy_of_each_event() {
    const CLIENTS: usize = 10_000;
    // This test holds CLIENTS sockets itself.
    util::raise_nofile();
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let server = Server::start(&t, "[platforms.loopback]\n");
    let pid = server.child.id().to_string();
    let before = util::rss_kib(&pid);
    // Clients that subscribe and never read, with small receive buffers (the kernel's memory
    // is not what this test measures).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let clients: Vec<std::net::TcpStream> = runtime.block_on(async {
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            (&stream).write_all(request.as_bytes()).unwrap();
            clients.push(stream);
        }
        clients
    });
    wait_sse_clients(&server, CLIENTS as u64);
    let subscribed = util::rss_kib(&pid);
    // 300 messages of 30 KB: 9 MB of events, 90 GB if each client had its own copy.
    let text = "z".repeat(30_000);
    for i in 0..300 {
        let (status, body) = server.send("loopback", "c", &format!("{i} {text}"));
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.get("/health").0, 200);
    let peak = util::rss_kib(&pid);
    drop(clients);
    wait_sse_clients(&server, 0);
    let after = util::rss_kib(&pid);
    eprintln!(
        "RSS KiB: {before} at start, {subscribed} with {CLIENTS} SSE clients, {peak} after 300 x 30 KB, {after} once they left"
    );
    // Each client costs its connection and queue, not a copy of the events.
    assert!(
        peak.saturating_sub(before) < 512 * 1024,
        "RSS grew {} KiB with {CLIENTS} idle SSE clients",
        peak - before
    );
}
