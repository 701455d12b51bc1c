//! The harness's own tests: deliveries, logs and state across a reload; logs routed per
//! test thread; a leaked plugin thread named at `stop`.

use super::*;
use crate::{Plugin, SendReceipt, abi};

#[derive(serde::Deserialize)]
struct Config {}

struct Noisy {
    host: Host,
}

impl Plugin for Noisy {
    type Config = Config;

    fn start(_: Config, host: Host, previous: Option<State>) -> Result<Self, String> {
        host.log(
            abi::LOG_INFO,
            "noisy",
            &format!("started, previous {previous:?}"),
        );
        Ok(Noisy { host })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let echo = InboundMessage::new(message.chat_id, "n", message.text, "1");
        self.host.deliver(&echo).map_err(SendError::retryable)?;
        Ok(SendReceipt {
            message_id: "1".into(),
        })
    }

    fn export_state(&self) -> Option<State> {
        Some(State {
            schema: 3,
            bytes: b"s".to_vec(),
        })
    }

    fn stop(self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn the_harness_records_deliveries_and_logs_and_hands_state_to_the_next_generation() {
    let first = Harness::<Noisy>::start(serde_json::json!({})).unwrap();
    first.send_text("c", "hi").unwrap();
    assert_eq!(first.delivered()[0].text, "hi");
    assert_eq!(first.logs()[0].message, "started, previous None");
    let second = first.reload(serde_json::json!({})).unwrap();
    assert_eq!(second.generation(), 2);
    assert!(second.logs()[0].message.contains("schema: 3"));
    assert!(Harness::<Noisy>::start(serde_json::json!({ "x": 1 })).is_ok());
    assert!(Harness::<Noisy>::start(serde_json::json!([1])).is_err());
}

/// Logs through `tracing` (the plugin's own copy, forwarded by the glue's subscriber).
struct Traced;

impl Plugin for Traced {
    type Config = Config;

    fn start(_: Config, _: Host, _: Option<State>) -> Result<Self, String> {
        Ok(Traced)
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        tracing::info!(text = %message.text, "sent");
        Ok(SendReceipt {
            message_id: message.text,
        })
    }

    fn stop(self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn each_harness_gets_the_tracing_events_of_its_own_calls_across_parallel_threads() {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let harness = Harness::<Traced>::start(serde_json::json!({})).unwrap();
                for n in 0..50 {
                    harness.send_text("c", &format!("t{t}-{n}")).unwrap();
                }
                let logs = harness.logs();
                let mine = format!("text=t{t}-");
                assert_eq!(logs.len(), 50, "{logs:?}");
                assert!(logs.iter().all(|l| l.message.contains(&mine)), "{logs:?}");
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Starts a thread in `start` and never joins it.
struct Leaky;

impl Plugin for Leaky {
    type Config = Config;

    fn start(_: Config, _: Host, _: Option<State>) -> Result<Self, String> {
        std::thread::Builder::new()
            .name("leaky-worker".into())
            .spawn(|| std::thread::sleep(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Leaky)
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        Ok(SendReceipt {
            message_id: message.text,
        })
    }

    fn stop(self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn stop_names_a_thread_the_plugin_leaked_when_tests_run_one_at_a_time() {
    if !one_test_at_a_time() || thread_ids().is_none() {
        // Threads of tests running beside it could not be told from the plugin's.
        return;
    }
    let error = Harness::<Leaky>::start(serde_json::json!({}))
        .unwrap()
        .stop()
        .unwrap_err();
    assert!(error.contains("leaky-worker"), "{error}");
    // A plugin that joins its threads stops cleanly.
    let clean = Harness::<Noisy>::start(serde_json::json!({})).unwrap();
    assert!(clean.stop().is_ok());
}
