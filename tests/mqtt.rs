//! The MQTT adapter against a real mosquitto, with mosquitto_pub and mosquitto_sub.

use std::{sync::Arc, time::Duration};

use hermes_host::{
    loader::{CallError, Instance, Library},
    message::{HealthStatus, Outbound},
};

use crate::{
    peers::Mosquitto,
    util::{self, Recorder, TestDir},
};

fn start(t: &TestDir, config: serde_json::Value, recorder: &Arc<Recorder>) -> Instance {
    util::start_plugin(t, "hermes_mqtt", "mqtt", config, recorder.clone())
}

fn stop(instance: Instance) {
    util::stop_clean(instance, &["mqtt-conn", "tokio"]);
}

#[test]
fn mqtt_publishes_sends_and_delivers_subscribed_topics() {
    let t = TestDir::new();
    let broker = Mosquitto::start(&t.path().join("mosquitto"));
    let recorder = Recorder::new();
    let mqtt = start(
        &t,
        serde_json::json!({ "broker": broker.addr(), "subscribe": ["in/#"], "client_id": "hermes-test" }),
        &recorder,
    );
    assert!(util::wait_health(&mqtt, HealthStatus::Healthy).contains("(connection 1)"));

    // The subscription is made right after CONNACK; publish until the first message arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.messages().is_empty() {
        broker.publish("in/probe", "probe");
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = recorder.messages().len();
    broker.publish("in/a", "hello gateway");
    let inbound = recorder.wait_for(before + 1);
    let last = inbound.last().unwrap();
    assert_eq!(
        (
            last.chat_id.as_str(),
            last.user.as_str(),
            last.text.as_str()
        ),
        ("in/a", "mqtt", "hello gateway")
    );
    assert_eq!(last.metadata["qos"], 1);

    let mut sub = broker.subscribe("out/#");
    mqtt.send(&Outbound::new("out/x", "hi broker")).unwrap();
    assert_eq!(sub.next(), ("out/x".to_owned(), "hi broker".to_owned()));
    let e = mqtt.send(&Outbound::new("out/#", "x")).unwrap_err();
    assert!(
        matches!(
            e,
            CallError::Plugin {
                retryable: false,
                ..
            }
        ),
        "{e}"
    );
    stop(mqtt);
}

#[test]
fn mqtt_reports_the_broker_gone_fails_sends_fast_and_resubscribes() {
    let t = TestDir::new();
    let mut broker = Mosquitto::start(&t.path().join("mosquitto"));
    let recorder = Recorder::new();
    let mqtt = start(
        &t,
        serde_json::json!({ "broker": broker.addr(), "subscribe": ["in/#"], "reconnect_max_ms": 300 }),
        &recorder,
    );
    util::wait_health(&mqtt, HealthStatus::Healthy);

    broker.kill();
    let detail = util::wait_health(&mqtt, HealthStatus::Unhealthy);
    assert!(detail.contains("not connected"), "{detail}");
    let started = std::time::Instant::now();
    let e = mqtt.send(&Outbound::new("out/x", "anyone?")).unwrap_err();
    assert!(
        matches!(
            e,
            CallError::Plugin {
                retryable: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the send hung");

    broker.restart();
    assert!(util::wait_health(&mqtt, HealthStatus::Healthy).contains("(connection 2)"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.messages().is_empty() {
        broker.publish("in/again", "resubscribed");
        assert!(std::time::Instant::now() < deadline, "never resubscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(recorder.messages()[0].chat_id, "in/again");
    stop(mqtt);
}

#[test]
fn mqtt_config_errors_name_the_key() {
    let t = TestDir::new();
    let library = Library::open(&util::lib("hermes_mqtt"), &t.shadow()).unwrap();
    let timeout = Duration::from_secs(5);
    for (config, key) in [
        (r#"{"broker":"nohost"}"#, "`broker`"),
        (r#"{}"#, "missing field `broker`"),
        (
            r#"{"broker":"h:1883","subscribe":["a/#/b"]}"#,
            "`subscribe`",
        ),
        (r#"{"broker":"h:1883","qos":3}"#, "`qos`"),
        (
            r#"{"broker":"h:1883","max_packet_bytes":10}"#,
            "`max_packet_bytes`",
        ),
        (r#"{"broker":"h:1883","password":"p"}"#, "`password`"),
        (
            r#"{"broker":"h:1883","topic":"x"}"#,
            "unknown field `topic`",
        ),
    ] {
        let e = library.validate_config(config, timeout).unwrap_err();
        assert!(e.to_string().contains(key), "{config}: {e}");
    }
    library
        .validate_config(
            r#"{"broker":"h:1883","subscribe":["$share/gw/chat/#"]}"#,
            timeout,
        )
        .unwrap();
    assert!(library.unload().clean());
}

#[test]
fn mqtt_carries_large_messages_both_ways_and_refuses_what_its_limit_cannot() {
    let t = TestDir::new();
    let broker = Mosquitto::start(&t.path().join("mosquitto"));
    // A retained 20 KB message waits on a subscribed topic (past rumqttc's default 10 KiB
    // packet limit, it used to drop every connection as it arrived).
    let big = "r".repeat(20_000);
    broker.publish_retained("in/retained", &big);
    let recorder = Recorder::new();
    let mqtt = start(
        &t,
        serde_json::json!({ "broker": broker.addr(), "subscribe": ["in/#"] }),
        &recorder,
    );
    let inbound = recorder.wait_for(1);
    assert_eq!(inbound[0].text.len(), 20_000);
    assert_eq!(inbound[0].metadata["retain"], true);
    assert!(util::wait_health(&mqtt, HealthStatus::Healthy).contains("(connection 1)"));

    // A 60 KB send is published whole.
    let mut sub = broker.subscribe("out/#");
    let text = "s".repeat(60_000);
    mqtt.send(&Outbound::new("out/big", &text)).unwrap();
    assert_eq!(sub.next(), ("out/big".to_owned(), text));
    assert!(util::wait_health(&mqtt, HealthStatus::Healthy).contains("(connection 1)"));
    stop(mqtt);

    // With a small limit, a send past it is an error, not a 200 that is never published.
    let small = start(
        &t,
        serde_json::json!({ "broker": broker.addr(), "max_packet_bytes": 2048 }),
        &recorder,
    );
    util::wait_health(&small, HealthStatus::Healthy);
    let e = small
        .send(&Outbound::new("out/big", "s".repeat(4096)))
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Plugin { retryable: false, message, .. } if message.contains("limit is 2048 (`max_packet_bytes`)")),
        "{e}"
    );
    small.send(&Outbound::new("out/small", "fits")).unwrap();
    stop(small);
}

#[test]
fn mqtt_json_payloads_carry_every_kind_both_ways() {
    let t = TestDir::new();
    let broker = Mosquitto::start(&t.path().join("mosquitto"));
    let recorder = Recorder::new();
    let mqtt = start(
        &t,
        serde_json::json!({ "broker": broker.addr(), "subscribe": ["in/#"], "payload": "json" }),
        &recorder,
    );
    util::wait_health(&mqtt, HealthStatus::Healthy);
    let mut sub = broker.subscribe("out/#");
    let edit = Outbound {
        kind: hermes_host::message::MessageKind::Edit,
        target_id: Some("mqtt-out-1".into()),
        ..Outbound::new("out/x", "fixed")
    };
    let sent = mqtt.send(&edit).unwrap();
    let (topic, payload) = sub.next();
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(topic, "out/x");
    assert_eq!(
        payload,
        serde_json::json!({ "kind": "edit", "message_id": sent.message_id, "text": "fixed", "target_id": "mqtt-out-1" })
    );

    // A reaction published as JSON arrives as one; plain text stays a message.
    let reaction = r#"{"kind":"reaction","message_id":"p-9","target_id":"mqtt-out-1","emoji":"👍","user":"ann"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.messages().is_empty() {
        broker.publish("in/a", reaction);
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = &recorder.messages()[0];
    assert_eq!(got.kind, hermes_host::message::MessageKind::Reaction);
    assert_eq!(
        (
            got.emoji.as_deref(),
            got.target_id.as_deref(),
            got.user.as_str(),
            got.message_id.as_str()
        ),
        (Some("👍"), Some("mqtt-out-1"), "ann", "p-9")
    );
    stop(mqtt);
}
