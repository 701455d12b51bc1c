//! The MQTT adapter: a send publishes to a topic; messages on subscribed topics arrive inbound.
//!
//! Config (`[platforms.mqtt]`):
//! - `broker = "host:port"` (required), `subscribe = ["chat/#", ...]` (topic filters);
//! - `client_id` (default `hermes-<pid>`), `username`, `password` (or `MQTT_PASSWORD`),
//!   `qos = 1` (0, 1 or 2), `keep_alive_secs = 30`, `reconnect_max_ms = 10000`,
//!   `queue = 1000` (requests buffered towards the broker);
//! - `max_packet_bytes = 1048576`: the largest MQTT packet sent or read (1 KiB to 256 MiB).
//!   MQTT 3.1.1 has no way for a broker to say its own limit (mosquitto's `message_size_limit`,
//!   unlimited by default): set this to the broker's. A send whose packet would be larger is
//!   refused (an error naming both sizes, not retryable), never queued and lost. A packet from
//!   the broker past it ends the connection (rumqttc cannot skip one), and the log names the
//!   bound; a retained message that large on a subscribed topic would repeat that at every
//!   connect, so the limit should not be below what publishers may send.
//!
//! - `payload = "text"` (default: a publish is the text alone) or `"json"` (the message with its
//!   kind, ids, reply, thread, reaction and attachment URLs: [`payload`]).
//!
//! A chat id is a topic; an inbound message's user is `mqtt` (MQTT 3.1.1 carries no sender; a
//! JSON payload may name one) and its metadata holds `qos` and `retain`. One thread drives the connection (rumqttc's own
//! current-thread runtime): it resubscribes after every connect (clean sessions) and reconnects
//! with backoff. While disconnected, sends fail at once with a retryable error. A send is
//! accepted once the client queued the publish for the connected broker.
//!
//! Several gateways can share one broker's traffic with shared subscriptions: subscribe to
//! `$share/<group>/<filter>` and the broker hands each message to one member of the group.

mod payload;

pub use payload::Payload;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hermes_plugin_api::{
    Health, HealthStatus, Host, OutboundMessage, Plugin, SendError, SendReceipt,
};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;

/// `[platforms.mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port`.
    pub broker: String,
    /// Topic filters to subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// The client id; `hermes-<pid>` when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; `MQTT_PASSWORD` when absent.
    #[serde(default)]
    pub password: Option<String>,
    /// QoS of publishes and subscriptions.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Keep-alive interval.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// The longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Requests buffered towards the broker.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The largest packet sent or read.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// `text` (default) or `json`: the text alone, or the message with its kind as JSON.
    #[serde(default)]
    pub payload: Payload,
}

/// The largest `max_packet_bytes` accepted: MQTT's own limit is 256 MiB.
const MAX_PACKET_LIMIT: usize = 256 << 20;

fn default_max_packet() -> usize {
    1 << 20
}

/// The size of the PUBLISH packet for `topic` and `payload`: fixed header (type, and a
/// remaining length of up to 4 bytes), topic length and topic, packet id (QoS 1 and 2).
fn publish_packet_len(topic: &str, payload: usize, qos: u8) -> usize {
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

fn default_qos() -> u8 {
    1
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_max() -> u64 {
    10_000
}
fn default_queue() -> usize {
    1000
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[derive(Debug, Default, Clone)]
struct Status {
    connected: bool,
    connections: u64,
    last_error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    status: Mutex<Status>,
}

/// A running MQTT instance.
pub struct Mqtt {
    config: Config,
    client: Client,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    sent: AtomicU64,
}

fn split_broker(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("`broker`: {broker:?} must be host:port"))?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0);
    match (host.is_empty(), port) {
        (false, Some(port)) => Ok((host.trim_matches(['[', ']']).to_owned(), port)),
        _ => Err(format!(
            "`broker`: {broker:?} must be host:port with a port 1-65535"
        )),
    }
}

impl Mqtt {
    /// A snapshot of what the connection thread reports.
    fn status(&self) -> Status {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why sends fail and health is down while not connected.
    fn disconnected(&self, status: Status) -> String {
        let why = status.last_error.unwrap_or_else(|| "connecting".into());
        format!("not connected to {}: {why}", self.config.broker)
    }
}

impl Plugin for Mqtt {
    type Config = Config;

    fn validate_config(config: &Config) -> Result<(), String> {
        split_broker(&config.broker)?;
        if let Some(bad) = config.subscribe.iter().find(|f| !rumqttc::valid_filter(f)) {
            return Err(format!("`subscribe`: {bad:?} is not a valid topic filter"));
        }
        if config.qos > 2 {
            return Err(format!("`qos`: {} must be 0, 1 or 2", config.qos));
        }
        if config.password.is_some() && config.username.is_none() {
            return Err("`password`: needs `username`".into());
        }
        if config.keep_alive_secs < 5 {
            return Err("`keep_alive_secs`: at least 5".into());
        }
        if config.queue == 0 {
            return Err("`queue`: at least 1".into());
        }
        if !(1024..=MAX_PACKET_LIMIT).contains(&config.max_packet_bytes) {
            return Err(format!(
                "`max_packet_bytes`: {} is out of range (1024 to {MAX_PACKET_LIMIT})",
                config.max_packet_bytes
            ));
        }
        Ok(())
    }

    fn start(
        config: Config,
        host: Host,
        _previous: Option<hermes_plugin_api::State>,
    ) -> Result<Self, String> {
        let (broker_host, port) = split_broker(&config.broker)?;
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hermes-{}", std::process::id()));
        let mut options = MqttOptions::new(client_id, broker_host, port);
        options.set_keep_alive(Duration::from_secs(config.keep_alive_secs));
        options.set_clean_session(true);
        options.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
        let password = config
            .password
            .clone()
            .or_else(|| std::env::var("MQTT_PASSWORD").ok());
        if let Some(user) = &config.username {
            options.set_credentials(user.clone(), password.unwrap_or_default());
        }
        let (client, connection) = Client::new(options, config.queue);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
        });
        let thread = {
            let (config, shared, client) = (config.clone(), Arc::clone(&shared), client.clone());
            std::thread::Builder::new()
                .name("mqtt-conn".into())
                .spawn(move || drive(connection, &client, &config, &shared, host))
                .map_err(|e| format!("cannot start the connection thread: {e}"))?
        };
        Ok(Mqtt {
            config,
            client,
            shared,
            thread: Some(thread),
            sent: AtomicU64::new(0),
        })
    }

    fn send(&self, message: OutboundMessage) -> Result<SendReceipt, SendError> {
        let topic = message.chat_id.as_str();
        if !rumqttc::valid_topic(topic) || topic.is_empty() {
            return Err(SendError::permanent(format!(
                "{topic:?} is not a topic one can publish to"
            )));
        }
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("mqtt-out-{n}");
        let bytes =
            payload::encode(&message, &id, self.config.payload).map_err(SendError::permanent)?;
        let packet = publish_packet_len(topic, bytes.len(), self.config.qos);
        if packet > self.config.max_packet_bytes {
            return Err(SendError::permanent(format!(
                "the message makes an MQTT packet of {packet} bytes; the limit is {} (`max_packet_bytes`)",
                self.config.max_packet_bytes
            )));
        }
        let status = self.status();
        if !status.connected {
            return Err(SendError::retryable(self.disconnected(status)));
        }
        self.client
            .try_publish(topic, qos(self.config.qos), false, bytes)
            .map_err(|e| SendError::retryable(format!("publish to {topic}: {e}")))?;
        Ok(SendReceipt { message_id: id })
    }

    fn health(&self) -> Health {
        let status = self.status();
        if status.connected {
            Health {
                status: HealthStatus::Healthy,
                detail: format!(
                    "connected to {} (connection {})",
                    self.config.broker, status.connections
                ),
            }
        } else {
            Health::unhealthy(self.disconnected(status))
        }
    }

    fn stop(mut self) -> Result<(), String> {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.client.try_disconnect();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| "the connection thread panicked".to_owned())?;
        }
        Ok(())
    }
}

/// Drives the connection until stopped: events in, resubscribe on connect, backoff on errors.
fn drive(
    mut connection: rumqttc::Connection,
    client: &Client,
    config: &Config,
    shared: &Shared,
    host: Host,
) {
    let tick = Duration::from_millis(100);
    let max = Duration::from_millis(config.reconnect_max_ms.max(200));
    let mut backoff = Duration::from_millis(200);
    let mut received = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        match connection.recv_timeout(tick) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                backoff = Duration::from_millis(200);
                for filter in &config.subscribe {
                    if let Err(e) = client.try_subscribe(filter.clone(), qos(config.qos)) {
                        tracing::warn!(filter = %filter, "subscribe failed: {e}");
                    }
                }
                let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                status.connected = true;
                status.connections += 1;
                status.last_error = None;
                tracing::info!(broker = %config.broker, "connected");
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                received += 1;
                let mut inbound = payload::decode(
                    &publish.payload,
                    &publish.topic,
                    &format!("mqtt-in-{}-{received}", host.generation()),
                    config.payload,
                );
                inbound
                    .metadata
                    .insert("qos".into(), (publish.qos as u8).into());
                inbound
                    .metadata
                    .insert("retain".into(), publish.retain.into());
                if let Err(e) = host.deliver(&inbound) {
                    tracing::warn!("the host refused an inbound message: {e}");
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                {
                    let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                    status.connected = false;
                    status.last_error = Some(e.to_string());
                }
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                if matches!(
                    e,
                    rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                        rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
                    ))
                ) {
                    tracing::warn!(
                        broker = %config.broker,
                        max_packet_bytes = config.max_packet_bytes,
                        "the broker sent a packet over max_packet_bytes ({}); dropped the connection",
                        config.max_packet_bytes
                    );
                }
                tracing::warn!(broker = %config.broker, "connection error: {e}; retrying in {backoff:?}");
                let until = Instant::now() + backoff;
                while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(max);
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Let the DISCONNECT go out if we are connected; bounded.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_))
            | Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
    shared
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .connected = false;
}

hermes_plugin_api::export_plugin!(Mqtt);
