//! The IRC adapter against a real ngircd, with a raw IRC client speaking in the channel.

use std::{sync::Arc, time::Duration};

use hermes_host::{
    loader::{CallError, Instance, Library},
    message::{HealthStatus, Outbound},
};

use crate::{
    peers::{IrcClient, Ngircd},
    util::{self, Recorder, TestDir},
};

fn start(t: &TestDir, config: serde_json::Value, recorder: &Arc<Recorder>) -> Instance {
    util::start_plugin(t, "hermes_irc", "irc", config, recorder.clone())
}

fn stop(instance: Instance) {
    util::stop_clean(instance, &["irc-conn"]);
}

#[test]
fn irc_relays_privmsg_both_ways_and_splits_long_lines() {
    let t = TestDir::new();
    let server = Ngircd::start(&t.path().join("ngircd"));
    let mut watcher = IrcClient::connect(&server.addr(), "watcher");
    watcher.join("#ops");
    let recorder = Recorder::new();
    let irc = start(
        &t,
        serde_json::json!({ "server": server.addr(), "nick": "hermes", "channels": ["#ops"], "send_interval_ms": 50 }),
        &recorder,
    );
    watcher.expect(|l| l.starts_with(":hermes!") && l.contains("JOIN"));
    assert!(util::wait_health(&irc, HealthStatus::Healthy).starts_with("registered as hermes"));

    watcher.say("PRIVMSG #ops :hello bot");
    watcher.say("PRIVMSG hermes :psst");
    let inbound = recorder.wait_for(2);
    assert_eq!(
        (
            inbound[0].chat_id.as_str(),
            inbound[0].user.as_str(),
            inbound[0].text.as_str()
        ),
        ("#ops", "watcher", "hello bot")
    );
    assert_eq!(
        (inbound[1].chat_id.as_str(), inbound[1].text.as_str()),
        ("watcher", "psst")
    );

    irc.send(&Outbound::new("#ops", "hello humans")).unwrap();
    assert!(
        watcher
            .expect(|l| l.contains("PRIVMSG #ops"))
            .ends_with(":hello humans")
    );

    let long: String = (0..300)
        .map(|i| format!("w{i} "))
        .collect::<String>()
        .trim_end()
        .to_owned();
    irc.send(&Outbound::new("#ops", long.clone())).unwrap();
    let mut received = Vec::new();
    while received.join(" ").len() < long.len() {
        let line = watcher.expect(|l| l.contains("PRIVMSG #ops"));
        assert!(
            line.len() + 2 <= 512,
            "a relayed line is {} bytes",
            line.len() + 2
        );
        received.push(line.split_once(" :").unwrap().1.to_owned());
    }
    assert!(received.len() > 1);
    assert_eq!(received.join(" "), long);

    // A burst beyond the pacing budget: all arrive, in order.
    for i in 0..10 {
        irc.send(&Outbound::new("watcher", format!("n{i}")))
            .unwrap();
    }
    for i in 0..10 {
        let line = watcher.expect(|l| l.contains("PRIVMSG watcher"));
        assert!(line.ends_with(&format!(":n{i}")), "{line}");
    }
    stop(irc);
    watcher.expect(|l| l.starts_with(":hermes!") && l.contains("QUIT"));
}

#[test]
fn irc_takes_another_nick_when_its_own_is_in_use() {
    let t = TestDir::new();
    let server = Ngircd::start(&t.path().join("ngircd"));
    let mut squatter = IrcClient::connect(&server.addr(), "hermes");
    squatter.join("#ops");
    let recorder = Recorder::new();
    let irc = start(
        &t,
        serde_json::json!({ "server": server.addr(), "nick": "hermes", "channels": ["#ops"] }),
        &recorder,
    );
    squatter.expect(|l| l.starts_with(":hermes_!") && l.contains("JOIN"));
    assert!(util::wait_health(&irc, HealthStatus::Healthy).starts_with("registered as hermes_"));
    stop(irc);
}

#[test]
fn irc_reports_the_server_gone_fails_sends_fast_and_reconnects() {
    let t = TestDir::new();
    let mut server = Ngircd::start(&t.path().join("ngircd"));
    let recorder = Recorder::new();
    let irc = start(
        &t,
        serde_json::json!({ "server": server.addr(), "nick": "hermes", "channels": ["#ops"], "reconnect_max_ms": 500 }),
        &recorder,
    );
    util::wait_health(&irc, HealthStatus::Healthy);

    server.kill();
    let detail = util::wait_health(&irc, HealthStatus::Unhealthy);
    assert!(detail.contains("not connected"), "{detail}");
    let e = irc.send(&Outbound::new("#ops", "anyone?")).unwrap_err();
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

    server.restart();
    let mut watcher = IrcClient::connect(&server.addr(), "watcher");
    watcher.join("#ops");
    assert!(util::wait_health(&irc, HealthStatus::Healthy).contains("(connection 2)"));
    // Rejoined: its message reaches the channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        irc.send(&Outbound::new("#ops", "back")).unwrap();
        watcher.say("NAMES #ops");
        let names = watcher.expect(|l| l.contains(" 353 ") || l.contains(" 366 "));
        if names.contains("hermes") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rejoined #ops");
    }
    assert!(
        watcher
            .expect(|l| l.contains("PRIVMSG #ops"))
            .ends_with(":back")
    );
    stop(irc);
}

#[test]
fn irc_answers_ping_and_keeps_its_connection() {
    let t = TestDir::new();
    let server = Ngircd::start(&t.path().join("ngircd"));
    let recorder = Recorder::new();
    let irc = start(
        &t,
        serde_json::json!({ "server": server.addr(), "nick": "hermes" }),
        &recorder,
    );
    util::wait_health(&irc, HealthStatus::Healthy);
    // ngircd pings an idle client every 5 s and drops it 5 s later without a PONG.
    let mut watcher = IrcClient::connect(&server.addr(), "watcher");
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < deadline {
        watcher.say("ISON hermes");
        let ison = watcher.expect(|l| l.contains(" 303 "));
        assert!(ison.ends_with(":hermes"), "the adapter was dropped: {ison}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(util::wait_health(&irc, HealthStatus::Healthy).contains("(connection 1)"));
    stop(irc);
}

#[test]
fn irc_config_errors_name_the_key() {
    let t = TestDir::new();
    let library = Library::open(&util::lib("hermes_irc"), &t.shadow()).unwrap();
    let timeout = Duration::from_secs(5);
    let e = library
        .validate_config(r#"{"server":"nohost","nick":"x"}"#, timeout)
        .unwrap_err();
    assert!(e.to_string().contains("`server`"), "{e}");
    let e = library
        .validate_config(r#"{"server":"h:6667"}"#, timeout)
        .unwrap_err();
    assert!(e.to_string().contains("missing field `nick`"), "{e}");
    let e = library
        .validate_config(r#"{"server":"h:6667","nick":"9x"}"#, timeout)
        .unwrap_err();
    assert!(e.to_string().contains("`nick`"), "{e}");
    let e = library
        .validate_config(
            r#"{"server":"h:6667","nick":"x","channels":["ops"]}"#,
            timeout,
        )
        .unwrap_err();
    assert!(e.to_string().contains("`channels`"), "{e}");
    let e = library
        .validate_config(r#"{"server":"h:6667","nick":"x","colour":1}"#, timeout)
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    // A value of the wrong type names its key.
    let e = library
        .validate_config(r#"{"server":"h:6667","nick":"x","burst":"fast"}"#, timeout)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("key `burst`: invalid type: string \"fast\", expected u32"),
        "{e}"
    );
    library
        .validate_config(
            r#"{"server":"irc.example:6697","nick":"x","tls":true}"#,
            timeout,
        )
        .unwrap();
    assert!(library.unload().clean());
}

#[test]
fn irc_over_tls_verifies_the_server_against_the_configured_ca() {
    let t = TestDir::new();
    let (server, tls_addr, ca) = Ngircd::start_tls(&t.path().join("ngircd"));
    let mut watcher = IrcClient::connect(&server.addr(), "watcher");
    watcher.join("#sec");
    let recorder = Recorder::new();
    let config = serde_json::json!({ "server": tls_addr, "nick": "hermes", "channels": ["#sec"], "tls": true, "tls_ca_file": ca });
    let irc = start(&t, config, &recorder);
    watcher.expect(|l| l.starts_with(":hermes!") && l.contains("JOIN"));
    irc.send(&Outbound::new("#sec", "over tls")).unwrap();
    assert!(
        watcher
            .expect(|l| l.contains("PRIVMSG #sec"))
            .ends_with(":over tls")
    );
    watcher.say("PRIVMSG #sec :and back");
    assert_eq!(recorder.wait_for(1)[0].text, "and back");
    stop(irc);

    // Without the CA, the server's certificate is refused: never registered.
    let config = serde_json::json!({ "server": tls_addr, "nick": "hermes2", "tls": true, "reconnect_max_ms": 500 });
    let untrusted = start(&t, config, &recorder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = untrusted.health().unwrap();
        if health.detail.contains("certificate") || health.detail.contains("UnknownIssuer") {
            break;
        }
        assert_ne!(health.status, HealthStatus::Healthy);
        assert!(std::time::Instant::now() < deadline, "{health:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(untrusted);
}
