//! IRC and MQTT bridged by routes, end to end: ngircd, mosquitto and `hermes-host serve`; once
//! with both adapters in the gateway's process, once each in a strict sandbox of its own.

use crate::{
    peers::{IrcClient, Mosquitto, Ngircd},
    util::{self, Server, TestDir},
};

#[test]
fn an_irc_channel_and_an_mqtt_topic_bridged_by_routes() {
    let t = TestDir::new();
    for (id, lib) in [("irc", "hermes_irc"), ("mqtt", "hermes_mqtt")] {
        // As the adapters' own manifests say: inbound connections, so no sender by default.
        let dir = t.install(id, lib, 1);
        let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
        std::fs::write(
            dir.join("plugin.toml"),
            manifest.replacen("[plugin]\n", "[plugin]\ninbound = true\n", 1),
        )
        .unwrap();
    }
    bridge(&t, "");
}

/// The same bridge with each adapter in a child under `sandbox = "strict"`, granted only what
/// its shipped manifest's `[sandbox]` declares.
#[test]
fn irc_and_mqtt_bridge_in_strict_sandboxes_with_their_manifests_grants() {
    let t = TestDir::new();
    util::shipped_manifest(&t, "irc", &["irc"]);
    util::shipped_manifest(&t, "mqtt", &["mqtt"]);
    let server = bridge(&t, "isolation = \"process\"\nsandbox = \"strict\"\n");
    for id in ["irc", "mqtt"] {
        let status = server.platform(id);
        let sandbox = status["sandbox"].as_str().unwrap_or_default();
        assert!(
            sandbox.starts_with("strict") && !sandbox.contains("not enforced"),
            "{status}"
        );
    }
}

/// Runs the bridge with `keys` added to both platforms' tables; the server, for more checks.
fn bridge(t: &TestDir, keys: &str) -> Server {
    let irc = Ngircd::start(&t.path().join("ngircd"));
    let broker = Mosquitto::start(&t.path().join("mosquitto"));
    let mut watcher = IrcClient::connect(&irc.addr(), "watcher");
    watcher.join("#ops");
    let mut mallory = IrcClient::connect(&irc.addr(), "mallory");
    mallory.join("#ops");
    let mut from_irc = broker.subscribe("ops/irc");
    let server = Server::start(
        t,
        &format!(
            "[platforms.irc]\n{keys}server = \"{}\"\nnick = \"hermes\"\nchannels = [\"#ops\"]\nallowed_users = [\"watcher\"]\n\n\
             [platforms.mqtt]\n{keys}broker = \"{}\"\nsubscribe = [\"ops/chat\"]\nallow_all_users = true\n\n\
             [[routes]]\nfrom = {{ platform = \"irc\", chat = \"#ops\" }}\nto = [{{ platform = \"mqtt\", chat = \"ops/irc\" }}]\n\n\
             [[routes]]\nfrom = {{ platform = \"mqtt\", chat = \"ops/chat\" }}\nto = [{{ platform = \"irc\", chat = \"#ops\" }}]\n",
            irc.addr(),
            broker.addr()
        ),
    );
    watcher.expect(|l| l.starts_with(":hermes!") && l.contains("JOIN"));
    server.wait_platform("mqtt", |p| p["health"]["status"] == "healthy");

    // Only the allowed nick is bridged: mallory's line, said first, never reaches MQTT.
    mallory.say("PRIVMSG #ops :drop the database");
    mallory.say("PING :sync");
    mallory.expect(|l| l.contains("PONG"));
    watcher.say("PRIVMSG #ops :deploy finished");
    assert_eq!(
        from_irc.next(),
        ("ops/irc".to_owned(), "deploy finished".to_owned())
    );

    // The broker subscription is made right after connecting; publish until it is in place.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        broker.publish("ops/chat", "ack from mqtt");
        watcher.say("PING :sync");
        let line = watcher.expect(|l| {
            (l.starts_with(":hermes!") && l.contains("PRIVMSG #ops")) || l.contains("PONG")
        });
        if line.contains("PRIVMSG #ops") {
            assert!(line.ends_with(":<mqtt> ack from mqtt"), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing came over from MQTT"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("hermes_routed_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hermes_inbound_refused_total{platform=\"irc\"} 1"),
        "{metrics}"
    );
    server
}
