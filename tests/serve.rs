//! `serve`: the public API router called directly, and the real binary end to end.

use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

use axum::{body::Body, http::Request};
use hermes_host::{config::Config, gateway::Gateway, registry::EntryState};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::util::{self, Server, Sse, TestDir};

/// Calls the router once: `(status, JSON body)`.
async fn call(
    gateway: &Arc<Gateway>,
    method: &str,
    uri: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = hermes_host::api::app(Arc::clone(gateway))
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// `POST /api/platforms/{platform}/send` through the router.
async fn send(
    gateway: &Arc<Gateway>,
    platform: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    call(
        gateway,
        "POST",
        &format!("/api/platforms/{platform}/send"),
        body,
        token,
    )
    .await
}

fn gateway(t: &TestDir, extra: &str) -> Arc<Gateway> {
    let config = Config::load(&t.config(extra)).unwrap();
    Gateway::new(config, false).unwrap().0
}

#[tokio::test]
async fn the_api_lists_50_plugins_without_loading_and_a_send_loads_exactly_one() {
    let t = TestDir::new();
    for i in 0..50 {
        t.install(&format!("p{i:02}"), "hermes_loopback", 1);
    }
    let gateway = gateway(&t, "[platforms.p00]\n");
    let (status, list) = call(&gateway, "GET", "/api/platforms", "", None).await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 50);
    for p in list {
        for key in ["id", "name", "state", "generation", "version", "configured"] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
    }
    let (status, one) = call(&gateway, "GET", "/api/platforms/p07", "", None).await;
    assert_eq!((status, one["state"].as_str()), (200, Some("registered")));
    assert_eq!(gateway.registry.loads(), 0);

    let (status, sent) = send(&gateway, "p07", r#"{"chat_id":"c","text":"hi"}"#, None).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["platform"], "p07");
    assert_eq!(sent["generation"], 1);
    assert_eq!(gateway.registry.loads(), 1);
    let running: Vec<_> = gateway
        .registry
        .list()
        .into_iter()
        .filter(|s| s.state == EntryState::Running)
        .map(|s| s.id)
        .collect();
    assert_eq!(running, ["p07"]);
    gateway.registry.shutdown();
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    t.install_bytes("broken", b"garbage");
    let gateway = gateway(&t, "");
    let (status, e) = send(&gateway, "loopback", r#"{"chat_id":"c"}"#, None).await;
    assert_eq!(status, 422);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("missing field `text`"),
        "{e}"
    );
    let (status, e) = send(&gateway, "loopback", r#"{"chat_id":"","text":"x"}"#, None).await;
    assert_eq!(status, 422);
    assert!(e["error"].as_str().unwrap().contains("`chat_id`"), "{e}");
    // Fields past the inbound bounds: 422, not a 503 that a client retries for ever.
    let long = serde_json::json!({ "chat_id": "c".repeat(2000), "text": "x" }).to_string();
    let (status, e) = send(&gateway, "loopback", &long, None).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["retryable"], false);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("field `chat_id` is 2000 bytes; at most 1024"),
        "{e}"
    );
    let meta =
        serde_json::json!({ "chat_id": "c", "text": "x", "metadata": { "k": "v".repeat(20_000) } })
            .to_string();
    let (status, e) = send(&gateway, "loopback", &meta, None).await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("`metadata`"), "{e}");
    let (status, e) = send(&gateway, "loopback", "not json", None).await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("not JSON (line 1, column 2): expected ident"),
        "{e}"
    );
    let (status, e) = send(&gateway, "loopback", r#"{"chat_id":1,"text":"x"}"#, None).await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("field `chat_id`: invalid type: integer"),
        "{e}"
    );
    let (status, e) = send(
        &gateway,
        "loopback",
        r#"{"chat_id":"c","text":"x","metadata":[]}"#,
        None,
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("field `metadata`"),
        "{e}"
    );
    let (status, _) = send(&gateway, "nope", r#"{"chat_id":"c","text":"x"}"#, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&gateway, "GET", "/api/platforms/nope", "", None).await;
    assert_eq!(status, 404);
    // Every error is the documented JSON, axum's own answers included.
    let big = format!(
        r#"{{"chat_id":"c","text":"{}"}}"#,
        "x".repeat(hermes_host::api::SEND_BODY_LIMIT)
    );
    for (method, uri, body, want) in [
        ("POST", "/api/platforms/loopback/send", big.as_str(), 413),
        ("GET", "/api/platforms/loopback/send", "", 405),
        ("GET", "/no/such/route", "", 404),
        ("GET", "/api/warmup_wait?timeout_ms=abc", "", 400),
    ] {
        let (status, e) = call(&gateway, method, uri, body, None).await;
        assert_eq!(status, want, "{method} {uri}: {e}");
        assert!(
            e["error"].as_str().is_some_and(|m| !m.is_empty()) && e["retryable"] == false,
            "{method} {uri}: {e}"
        );
    }

    // A text the loopback cannot echo (over the inbound cap): the plugin's permanent refusal.
    let long = format!(r#"{{"chat_id":"c","text":"{}"}}"#, "x".repeat(100 * 1024));
    let (status, e) = send(&gateway, "loopback", &long, None).await;
    assert_eq!(status, 502, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("over the host's limit of 65536"),
        "{e}"
    );
    assert_eq!(e["retryable"], false);

    // A platform whose load fails: 503 naming the platform and where to look, never a path or
    // a loader message; the error is on the entry; the rest serves.
    let (status, e) = send(&gateway, "broken", r#"{"chat_id":"c","text":"x"}"#, None).await;
    assert_eq!(status, 503, "{e}");
    // Retryable: a failed load is tried again a second later (a rebuilt library loads).
    assert_eq!(e["retryable"], true, "{e}");
    let text = e["error"].as_str().unwrap();
    assert!(
        text.contains("platform `broken` is unavailable: it failed to load")
            && text.contains("plugin check broken"),
        "{e}"
    );
    assert!(
        !text.contains('/') && !text.contains("not a plugin library"),
        "{e}"
    );
    let (_, detail) = call(&gateway, "GET", "/api/platforms/broken", "", None).await;
    assert_eq!(detail["state"], "failed");
    assert!(
        detail["error"]
            .as_str()
            .unwrap()
            .contains("not a plugin library")
    );
    let (status, _) = send(&gateway, "loopback", r#"{"chat_id":"c","text":"x"}"#, None).await;
    assert_eq!(status, 200);
    gateway.registry.shutdown();
}

#[tokio::test]
async fn a_token_guards_every_route_but_health() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    const TOKEN: &str = "s3cret-token-0123";
    let gateway = gateway(&t, &format!("[server]\napi_token = \"{TOKEN}\"\n"));
    assert_eq!(call(&gateway, "GET", "/health", "", None).await.0, 200);
    for uri in [
        "/api/platforms",
        "/api/platforms/loopback",
        "/api/idle",
        "/metrics",
    ] {
        assert_eq!(call(&gateway, "GET", uri, "", None).await.0, 401, "{uri}");
        assert_eq!(
            call(&gateway, "GET", uri, "", Some("wrong")).await.0,
            401,
            "{uri}"
        );
        assert_eq!(
            call(&gateway, "GET", uri, "", Some(&format!("{TOKEN}!")))
                .await
                .0,
            401,
            "{uri}"
        );
    }
    let (status, body) = call(&gateway, "GET", "/api/platforms", "", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    // The scheme is case-insensitive.
    let request = Request::builder()
        .uri("/api/platforms")
        .header("authorization", format!("bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = hermes_host::api::app(Arc::clone(&gateway))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A short token is refused when the config is read.
    let short = Config::load(&t.config("[server]\napi_token = \"s3cret\"\n")).unwrap_err();
    assert!(
        short
            .to_string()
            .contains("key `server.api_token`: at least 16 characters"),
        "{short}"
    );
    let (status, _) = send(&gateway, "loopback", r#"{"chat_id":"c","text":"x"}"#, None).await;
    assert_eq!(status, 401);
    assert_eq!(gateway.registry.loads(), 0);
}

#[test]
fn only_the_configured_library_is_mapped_in_the_server() {
    let t = TestDir::new();
    for i in 0..50 {
        t.install(&format!("p{i:02}"), "hermes_loopback", 1);
    }
    let server = Server::start(&t, "[platforms.p03]\n");
    let shadow = t
        .shadow()
        .canonicalize()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        server.mapped(&shadow).len(),
        1,
        "{:?}",
        server.mapped(&shadow)
    );
    let (status, body) = server.get("/api/platforms");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len(),
        50
    );
    assert_eq!(server.mapped(&shadow).len(), 1);
    let (status, body) = server.post("/api/platforms/p41/send", r#"{"chat_id":"c","text":"x"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.mapped(&shadow).len(), 2);
    let (_, detail) = server.get("/api/platforms/p41");
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(
        (detail["state"].as_str(), detail["generation"].as_u64()),
        (Some("running"), Some(1))
    );
    assert_eq!(detail["health"]["status"], "healthy");
}

#[test]
fn a_send_echoes_to_sse_and_the_journal_and_a_route_delivers_once() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let mut server = Server::start(
        &t,
        "[platforms.loopback]\n\n[[routes]]\nfrom = { platform = \"loopback\", chat = \"lobby\" }\nto = [{ platform = \"loopback\", chat = \"archive\" }, { platform = \"loopback\", chat = \"lobby\" }]\n",
    );
    let mut sse = Sse::connect(&server.addr);
    let (status, body) = server.post(
        "/api/platforms/loopback/send",
        r#"{"chat_id":"lobby","text":"hello"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();

    let echo = sse.next();
    assert_eq!(echo["platform"], "loopback");
    assert_eq!(echo["chat_id"], "lobby");
    assert_eq!(echo["text"], "hello");
    assert_eq!(echo["message_id"], sent["message_id"]);
    for key in ["user", "timestamp"] {
        assert!(echo.get(key).is_some(), "{key} missing: {echo}");
    }
    let routed = sse.next();
    assert_eq!(
        (routed["chat_id"].as_str(), routed["text"].as_str()),
        (Some("archive"), Some("hello"))
    );

    // A marker message proves nothing else came in between: the route delivered once, the
    // routed echo was not routed again, and the source was not a target of itself.
    server.post(
        "/api/platforms/loopback/send",
        r#"{"chat_id":"marker","text":"end"}"#,
    );
    let next = sse.next();
    assert_eq!(next["chat_id"], "marker", "unexpected extra event: {next}");

    assert!(server.terminate().success());
    let journal = std::fs::read_to_string(t.path().join("state/journal.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str, chat: &str| {
        lines
            .iter()
            .filter(|l| l["kind"] == kind && l["chat_id"] == chat)
            .count()
    };
    assert_eq!(count("outbound", "lobby"), 1, "{journal}");
    assert_eq!(count("inbound", "lobby"), 1, "{journal}");
    assert_eq!(count("routed", "archive"), 1, "{journal}");
    assert_eq!(count("inbound", "archive"), 1, "{journal}");
    assert_eq!(count("outbound", "marker"), 1, "{journal}");
}

#[test]
fn the_control_socket_is_private_and_status_goes_through_it() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    let config = t.config("[server]\ncontrol_socket = \"state/control.sock\"\n");
    let out = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no hermes-host server is running")
            && stderr.contains("state/control.sock"),
        "{stderr}"
    );

    let mut server = Server::start(&t, "[platforms.loopback]\n");
    let socket = t.path().join("state/control.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(t.path().join("state"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let status = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&server.config)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("resident stale libraries 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("loopback") && l.contains("running")),
        "{text}"
    );

    let send = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&server.config)
        .args(["send", "loopback", "room", "hi there"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&send.stdout)
            .contains("sent lb-1-1 through loopback (generation 1)")
    );

    // A second server on the same socket is refused; the first keeps its socket.
    let second = t.run(&["serve"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another hermes-host server is running")
    );

    assert!(server.terminate().success());
    assert!(!socket.exists(), "the socket was not removed");
}

#[test]
fn a_stale_socket_is_replaced() {
    let t = TestDir::new();
    t.install("loopback", "hermes_loopback", 1);
    std::fs::create_dir_all(t.path().join("state")).unwrap();
    // A socket file nobody listens on, as a killed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(t.path().join("state/control.sock")).unwrap());
    let mut server = Server::start(&t, "");
    assert!(server.log().contains("replaced a stale control socket"));
    assert!(server.terminate().success());
}

#[test]
fn bad_config_and_an_unguarded_public_address_refuse_to_start() {
    let t = TestDir::new();
    t.config("[platforms.loopback]\nstart = \"sometime\"\n");
    let out = t.run(&["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("hermes.toml: key `platforms.loopback.start`"),
        "{stderr}"
    );

    t.config("[server]\nlisten = \"0.0.0.0:0\"\n");
    let out = t.run(&["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("key `server.api_token`: required when `server.listen` (0.0.0.0:0) is not a loopback address"), "{stderr}");
}

#[test]
fn sigterm_with_sends_in_flight_completes_every_accepted_send() {
    let t = TestDir::new();
    t.install("slow", "fixture_panicky", 1);
    let mut server = Server::start(&t, "[platforms.slow]\nworkers = 16\nhang_send_ms = 1500\n");
    let addr = server.addr.clone();
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                util::http(
                    &addr,
                    "POST",
                    "/api/platforms/slow/send",
                    Some(&format!(r#"{{"chat_id":"c","text":"m{i}"}}"#)),
                    &[],
                )
            })
        })
        .collect();
    // Wait until all 16 sends are inside the plugin. (Read from the list: /api/idle also counts
    // the HTTP requests, and the detail endpoint would queue a health call of its own.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, list) = server.get("/api/platforms");
        let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        if list[0]["in_flight"].as_u64().unwrap_or(0) >= 16 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sends never all arrived: {list:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let exit = server.terminate();
    for sender in senders {
        let (status, body) = sender.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(exit.success(), "{}", server.log());
    let journal = std::fs::read_to_string(t.path().join("state/journal.jsonl")).unwrap();
    assert_eq!(
        journal
            .lines()
            .filter(|l| l.contains("\"outbound\""))
            .count(),
        16,
        "{journal}"
    );
}

#[test]
fn background_platforms_warm_up_and_idle_ones_unload_and_come_back() {
    let t = TestDir::new();
    t.install("warm", "hermes_loopback", 1);
    t.install("lazy", "hermes_loopback", 1);
    let server = Server::start(
        &t,
        "[platforms.warm]\nstart = \"background\"\n\n[platforms.lazy]\nstart = \"on_demand\"\nidle_unload_secs = 1\n",
    );
    let (status, warm) = server.get("/api/warmup_wait?timeout_ms=10000");
    assert_eq!(status, 200, "{warm}");
    let warm: serde_json::Value = serde_json::from_str(&warm).unwrap();
    assert_eq!(warm["status"], "completed");
    assert_eq!(warm["platforms"][0]["state"], "running");
    assert_eq!(warm["progress"], "1/1");
    assert_eq!(warm["completed"], serde_json::json!(["warm"]));
    assert_eq!(warm["pending"], serde_json::json!([]));
    assert!(
        server.log().contains("warm-up completed"),
        "{}",
        server.log()
    );
    let state = |id: &str| {
        let (_, body) = server.get(&format!("/api/platforms/{id}"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            body["state"].as_str().unwrap().to_owned(),
            body["generation"].as_u64().unwrap(),
        )
    };
    assert_eq!(state("lazy"), ("registered".to_owned(), 0));

    let (_, profile) = server.get("/api/startup_profile");
    let profile: serde_json::Value = serde_json::from_str(&profile).unwrap();
    let phases: Vec<&str> = profile["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["config", "discover", "listen", "eager_start"]);
    let platforms = profile["platforms"].as_array().unwrap();
    let warm = platforms.iter().find(|p| p["id"] == "warm").unwrap();
    assert!(
        warm["load_ms"].as_f64().unwrap() <= warm["ms"].as_f64().unwrap(),
        "{warm}"
    );
    assert!(
        profile["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "warm" && p["mode"] == "background")
    );

    assert_eq!(
        server
            .post("/api/platforms/lazy/send", r#"{"chat_id":"c","text":"x"}"#)
            .0,
        200
    );
    assert_eq!(state("lazy"), ("running".to_owned(), 1));
    // No traffic for idle_unload_secs: the platform is stopped and unloaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state("lazy").0 != "unloaded" {
        assert!(
            std::time::Instant::now() < deadline,
            "never unloaded: {}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let shadow = t
        .shadow()
        .canonicalize()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(server.mapped(&shadow).len(), 1, "only `warm` stays mapped");
    assert_eq!(
        server
            .post("/api/platforms/lazy/send", r#"{"chat_id":"c","text":"y"}"#)
            .0,
        200
    );
    assert_eq!(state("lazy"), ("running".to_owned(), 2));

    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hermes_sends_total{platform=\"lazy\",result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hermes_loads_total{platform=\"lazy\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hermes_resident_stale_libraries 0"),
        "{metrics}"
    );
    let (_, idle) = server.get("/api/idle");
    let idle: serde_json::Value = serde_json::from_str(&idle).unwrap();
    assert_eq!(idle["in_flight"], 0, "{idle}");
    assert!(idle["seconds_since_activity"].as_f64().is_some());
    // Traffic just now: busy for the default quiet period (60 s), idle with none.
    assert_eq!(idle["idle"], false, "{idle}");
    assert!(
        idle["busy"][0].as_str().unwrap().starts_with("traffic"),
        "{idle}"
    );
    let idle_now = |server: &Server| {
        let (_, idle) = server.get("/api/idle?quiet_secs=0");
        serde_json::from_str::<serde_json::Value>(&idle).unwrap()
    };
    assert_eq!(idle_now(&server)["idle"], true);
    // An SSE client keeps the gateway busy.
    let sse = util::Sse::connect(&server.addr);
    let idle = idle_now(&server);
    assert_eq!(idle["idle"], false, "{idle}");
    assert_eq!(idle["busy"], serde_json::json!(["1 SSE clients connected"]));
    drop(sse);
    let (status, e) = server.get("/api/idle?quiet_secs=soon");
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("\"error\""), "{e}");
}

#[test]
fn idle_unload_is_refused_for_a_plugin_that_holds_inbound_connections() {
    let t = TestDir::new();
    let dir = t.install("listener", "hermes_loopback", 1);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap() + "inbound = true\n";
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n[platforms.listener]\nidle_unload_secs = 5\n",
    );
    let out = t.run(&["serve"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "[platforms.listener] idle_unload_secs: `listener` holds inbound connections"
        ),
        "{stderr}"
    );
}

#[test]
fn plugin_logs_reach_the_host_log_under_their_platform() {
    let t = TestDir::new();
    t.install("busy", "fixture_threaded", 1);
    let mut server = Server::start(&t, "[platforms.busy]\nthreads = 1\n");
    assert!(server.terminate().success());
    let log = server.log();
    let started = log
        .lines()
        .find(|l| l.contains("threaded fixture started"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        started.contains("platform=\"busy\"") || started.contains("platform=busy"),
        "{started}"
    );
    assert!(log.contains("threaded fixture stopped"), "{log}");
}

#[test]
fn the_gateway_is_not_idle_while_a_platform_starts() {
    let t = TestDir::new();
    t.install("slow", "fixture_panicky", 1);
    let server = Server::start(
        &t,
        "[platforms.slow]\nstart = \"on_demand\"\nhang_start_ms = 3000\ncall_timeout_ms = 60000\n",
    );
    // A load through the control socket, in the background.
    let loader = {
        let (bin, config) = (util::bin(), server.config.clone());
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .arg("--config")
                .arg(config)
                .args(["plugin", "reload", "slow"])
                .output()
                .unwrap()
        })
    };
    server.wait_platform("slow", |p| p["state"] == "starting");
    let (_, idle) = server.get("/api/idle?quiet_secs=0");
    let idle: serde_json::Value = serde_json::from_str(&idle).unwrap();
    assert_eq!(idle["idle"], false, "{idle}");
    assert!(
        idle["busy"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "platform `slow` is starting"),
        "{idle}"
    );
    assert!(loader.join().unwrap().status.success());
}

#[test]
fn log_format_json_writes_one_object_a_line_with_the_platform_at_its_top_level() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let server = Server::start_with(&t, "[platforms.lb]\n", &["--log-format", "json"]);
    assert_eq!(server.send("lb", "c", "hi").0, 200);
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "ready" && l["level"] == "INFO"),
        "{log}"
    );
    assert!(lines.iter().any(|l| l["platform"] == "lb"), "{log}");
}

#[test]
fn the_notify_protocol_says_ready_reloading_and_stopping_and_pings_the_watchdog() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    // The service manager's side: a datagram socket the test owns.
    let path = t.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let until = |want: &str| loop {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.lines().any(|l| l == want) {
            return message;
        }
    };
    let mut server = Server::start_env(
        &t,
        "[platforms.lb]\n",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = until("READY=1");
    assert!(ready.contains("STATUS=1 of 1 platforms running"), "{ready}");
    assert_eq!(server.get("/health").0, 200);
    until("WATCHDOG=1");
    until("WATCHDOG=1");

    // SIGHUP: RELOADING with the monotonic clock, then READY again.
    server.signal("HUP");
    let reloading = until("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    until("READY=1");

    assert!(server.terminate().success());
    until("STOPPING=1");
}

/// A gateway that stops answering stops pinging, so systemd's watchdog restarts it: stopped
/// (SIGSTOP) for well over a period, it sends nothing; let go (SIGCONT), the pings resume.
#[test]
fn the_watchdog_is_not_pinged_while_the_gateway_does_not_answer() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let path = t.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let server = Server::start_env(
        &t,
        "[platforms.lb]\n",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let next = |within: std::time::Duration| -> Option<String> {
        socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let second = std::time::Duration::from_secs(10);
    let ping = |m: &str| m.lines().any(|l| l == "WATCHDOG=1");
    while !ping(&next(second).expect("a ping within 10 s")) {}
    server.signal("STOP");
    // Pings already queued in the socket before the stop are read first.
    while let Some(m) = next(std::time::Duration::from_millis(50)) {
        assert!(ping(&m), "{m}");
    }
    // Five periods (the watchdog pings every 100 ms): nothing from a stopped gateway.
    assert_eq!(next(std::time::Duration::from_millis(500)), None);
    server.signal("CONT");
    assert!(ping(&next(second).expect("pings again after SIGCONT")));
}

#[test]
fn a_socket_passed_by_systemd_socket_activate_is_served() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let config = t.config(
        "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_socket = \"state/control.sock\"\n\n[platforms.lb]\n",
    );
    let activate = std::path::Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "/usr/bin/systemd-socket-activate is missing: install Debian's systemd package (.ci/run does)"
    );
    let port = crate::peers::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = KillOnDrop(
        std::process::Command::new(activate)
            .args(["-l", &addr])
            .arg(util::bin())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(std::process::Stdio::piped())
            .stderr(fs_err(&t))
            .spawn()
            .unwrap(),
    );
    // systemd-socket-activate listens at once and starts the gateway at the first connection,
    // which waits in the backlog until the gateway accepts it.
    let mut listening = false;
    for _ in 0..500 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            listening = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(listening, "systemd-socket-activate never listened");
    let (status, body) = util::http(
        &addr,
        "POST",
        "/api/platforms/lb/send",
        Some(r#"{"chat_id":"c","text":"activated"}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(ready.contains(&format!("http://{addr}")), "{ready}");
    let status = std::process::Command::new(util::bin())
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = status["pid"].as_u64().unwrap();
    assert_eq!(
        pid,
        u64::from(child.0.id()),
        "the gateway runs in the activating process"
    );
}

/// A child process killed (and reaped) when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fs_err(t: &TestDir) -> std::fs::File {
    std::fs::File::create(t.path().join("activate.log")).unwrap()
}
