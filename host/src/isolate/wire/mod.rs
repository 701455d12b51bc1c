//! The protocol between the gateway and an isolated plugin's child: serde types encoded with
//! postcard, each in one length-delimited frame (tokio-util's `LengthDelimitedCodec`: a 4-byte
//! big-endian length, then the bytes). One connection carries both directions; request ids let
//! the gateway's calls and the plugin's callbacks interleave.
//!
//! postcard is not self-describing, so JSON values (metadata) travel as JSON text, and no type
//! here skips fields when serialising.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

mod convert;

pub(crate) use convert::{health_from_wire, health_to_wire};

/// The largest frame either side accepts (a state snapshot is the largest thing sent).
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The codec both sides frame with.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Gateway to child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    /// A call; answered by [`FromChild::Reply`] with the same id.
    Call {
        /// Request id.
        id: u64,
        /// What to do.
        call: Call,
    },
    /// The gateway's answer to [`FromChild::Deliver`]: accepted, or refused with a reason.
    Delivered {
        /// The delivery's id.
        id: u64,
        /// `Err` reaches the plugin as `deliver`'s error.
        result: Result<(), String>,
    },
}

/// A call the gateway makes in the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// Open the library (a shadow copy in the child's own folder, claimed at its start), with
    /// every load-time check. Answered by [`Reply::Opened`].
    Open {
        /// The library file.
        path: String,
    },
    /// The plugin's `validate_config`.
    ValidateConfig {
        /// The config as JSON text.
        config_json: String,
        /// The call timeout.
        timeout_ms: u64,
    },
    /// Start an instance.
    Start(StartCall),
    /// Send a message.
    Send(WireOutbound),
    /// The plugin's health.
    Health,
    /// Benchmark support: `n` raw FFI `health` calls in one job; answered with their time.
    RawHealth {
        /// How many.
        n: u32,
    },
    /// Stop the instance (exporting state when asked); the library stays open.
    Stop {
        /// Call `export_state` first.
        export_state: bool,
        /// How long the drain and `stop` may take.
        timeout_ms: u64,
    },
    /// Unload the library and exit.
    Unload,
}

/// [`Call::Start`]'s arguments (the loader's `StartOptions` without the sink).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StartCall {
    /// The platform id.
    pub platform: String,
    /// The generation.
    pub generation: u64,
    /// The config as JSON text.
    pub config_json: String,
    /// Worker threads.
    pub workers: u32,
    /// The call timeout.
    pub call_timeout_ms: u64,
    /// The queue bound.
    pub max_queue: u64,
    /// The previous generation's state.
    pub state: Option<WireState>,
    /// The platform's own folder (empty: none).
    pub data_dir: String,
    /// The attachment cap told to the plugin.
    pub max_attachment_bytes: u64,
}

/// What [`Call::Open`] learnt of the library.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireOpened {
    /// The plugin's own version.
    pub version: String,
    /// Its plugin API level.
    pub level: u32,
    /// What the child's sandbox enforces.
    pub sandbox: crate::sandbox::Enforced,
}

/// [`crate::message::Attachment`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WireAttachment {
    /// File name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size.
    pub size: u64,
    /// Bytes.
    pub data: Vec<u8>,
    /// URL.
    pub url: Option<String>,
}

/// What level 1.1 adds to a message, both ways.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireMore {
    /// Kind.
    pub kind: crate::message::MessageKind,
    /// Thread.
    pub thread_id: Option<String>,
    /// Target.
    pub target_id: Option<String>,
    /// Emoji.
    pub emoji: Option<String>,
    /// Remove a reaction.
    pub remove: bool,
    /// Files.
    pub attachments: Vec<WireAttachment>,
}

/// Child to gateway.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromChild {
    /// The answer to [`ToChild::Call`] with the same id.
    Reply {
        /// Request id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// The plugin delivered an inbound message; answered by [`ToChild::Delivered`].
    Deliver {
        /// Delivery id.
        id: u64,
        /// The message (its `generation` says which instance delivered it).
        message: WireInbound,
    },
    /// The plugin logged a record.
    Log {
        /// The instance's generation.
        generation: u64,
        /// The ABI's level.
        level: u8,
        /// The plugin's target.
        target: String,
        /// The text.
        message: String,
    },
}

/// An answer from the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The library is open.
    Opened(Result<WireOpened, String>),
    /// `validate_config` or `start` returned.
    Done(Result<(), WireCallError>),
    /// `send` returned.
    Sent(Result<String, WireCallError>),
    /// `health` returned: status (0 healthy, 1 degraded, 2 unhealthy) and detail.
    Health(Result<(u8, String), WireCallError>),
    /// [`Call::RawHealth`]'s time, in nanoseconds.
    Timed(Result<u64, WireCallError>),
    /// The instance stopped.
    Stopped(Result<WireStopped, WireStopError>),
    /// The library is unloaded; the child exits after this frame.
    Unloaded(WireUnload),
}

/// [`crate::message::PluginState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireState {
    /// The plugin's schema.
    pub schema: u32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// [`crate::message::Outbound`], metadata as JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireOutbound {
    /// Chat.
    pub chat_id: String,
    /// Text.
    pub text: String,
    /// Reply-to.
    pub reply_to: Option<String>,
    /// Metadata, a JSON object as text.
    pub metadata_json: String,
    /// Kind, thread, target, emoji, files.
    pub more: WireMore,
    /// The client's key.
    pub idempotency_key: Option<String>,
}

/// [`crate::message::Inbound`], metadata as JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireInbound {
    /// Chat.
    pub chat_id: String,
    /// User.
    pub user: String,
    /// Text.
    pub text: String,
    /// The platform's id.
    pub message_id: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Metadata, a JSON object as text.
    pub metadata_json: String,
    /// Reply-to.
    pub reply_to: Option<String>,
    /// Kind, thread, target, emoji, files.
    pub more: WireMore,
    /// The delivering instance's generation.
    pub generation: u64,
}

/// [`crate::loader::CallError`], call names as text.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireCallError {
    /// The plugin's error.
    Plugin {
        /// The call.
        call: String,
        /// Its message.
        message: String,
        /// Retryable.
        retryable: bool,
        /// The plugin's retry-after.
        retry_after_ms: Option<u32>,
    },
    /// Timed out.
    Timeout {
        /// The call.
        call: String,
        /// After.
        after_ms: u64,
    },
    /// Every worker stuck.
    Unhealthy,
    /// Dropped from the queue.
    Expired {
        /// The call.
        call: String,
        /// Waited.
        waited_ms: u64,
    },
    /// Queue full.
    QueueFull {
        /// The bound.
        capacity: u64,
    },
    /// Stopped, or never started.
    Stopped,
}

/// [`crate::loader::Stopped`] without the library, which stays in the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireStopped {
    /// Exported state.
    pub state: Option<WireState>,
    /// An error from `export_state` or `stop`.
    pub error: Option<WireCallError>,
}

/// [`crate::loader::StopError`].
#[derive(Debug, Serialize, Deserialize)]
pub enum WireStopError {
    /// A call still runs.
    Busy,
    /// Already stopped.
    AlreadyStopped,
    /// `stop` timed out.
    StopTimedOut {
        /// After.
        after_ms: u64,
    },
}

/// [`crate::loader::UnloadReport`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WireUnload {
    /// The copy.
    pub shadow_path: String,
    /// `dlclose` ran.
    pub closed: bool,
    /// Gone from the child's maps.
    pub unmapped: Option<bool>,
    /// The copy was deleted.
    pub shadow_deleted: bool,
    /// Why not.
    pub detail: Option<String>,
}

/// One frame of `value`, ready to write.
pub(crate) fn encode<T: Serialize>(value: &T) -> std::io::Result<BytesMut> {
    let bytes = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    let mut out = BytesMut::with_capacity(bytes.len() + 4);
    codec().encode(Bytes::from(bytes), &mut out)?;
    Ok(out)
}

/// Reads frames from a blocking stream (the gateway's side, on its reader thread).
pub(crate) struct FrameReader<R> {
    inner: R,
    codec: LengthDelimitedCodec,
    buffer: BytesMut,
}

impl<R: Read> FrameReader<R> {
    /// Frames from `inner`.
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            codec: codec(),
            buffer: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next message; `Ok(None)` at the end of the stream.
    pub(crate) fn read_frame<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                return postcard::from_bytes(&frame)
                    .map(Some)
                    .map_err(std::io::Error::other);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{loader::CallError, message::Outbound};

    #[test]
    fn frames_round_trip_through_the_codec() {
        let call = ToChild::Call {
            id: 7,
            call: Call::Send(WireOutbound::from(&Outbound::new("#ops", "hé"))),
        };
        let mut bytes = encode(&call).unwrap().to_vec();
        bytes.extend(
            encode(&ToChild::Delivered {
                id: 8,
                result: Err("stale".into()),
            })
            .unwrap(),
        );
        let mut reader = FrameReader::new(&bytes[..]);
        match reader.read_frame::<ToChild>().unwrap() {
            Some(ToChild::Call {
                id: 7,
                call: Call::Send(m),
            }) => assert_eq!(Outbound::from(m), Outbound::new("#ops", "hé")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reader.read_frame::<ToChild>().unwrap(),
            Some(ToChild::Delivered { id: 8, result: Err(e) }) if e == "stale"
        ));
        assert!(reader.read_frame::<ToChild>().unwrap().is_none());
    }

    #[test]
    fn call_errors_keep_their_kind() {
        let e = CallError::Timeout {
            call: "send",
            after: Duration::from_millis(30),
        };
        assert_eq!(CallError::from(WireCallError::from(&e)), e);
    }
}
