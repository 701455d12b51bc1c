//! The control socket's client, for the CLI: HTTP/1.1 over the Unix socket with hyper, and
//! answers as the server's own types ([`ReloadOutcome`], [`SendOk`], [`ServerStatus`]...).
//!
//! A request that the server refuses gives `Ok(Err(Refusal))`: the server's error text, the
//! HTTP status and whether retrying may help. `Err(ClientError)` is reserved for not reaching
//! a server, or an answer that is not what the server sends.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request,
    body::Bytes,
    header::{CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{HotReloadOverview, ServerStatus};
use crate::{
    gateway::SendOk, gateway::reconfigure::ConfigChange, hotreload::WatchStatus, message::Outbound,
    reload::ReloadOutcome,
};

/// Why the CLI could not talk to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no hermes-host server is running (nothing answers on the control socket {}; start one with `hermes-host serve`)", .0.display())]
    NotRunning(PathBuf),
    /// The socket could not be reached or read.
    #[error("control socket {}: {}", .0.display(), .1)]
    Io(PathBuf, #[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("control socket {}: {}", .0.display(), .1)]
    Http(PathBuf, #[source] hyper::Error),
    /// No whole answer within the time limit.
    #[error("control socket {}: no answer within {} s", .0.display(), .1.as_secs())]
    TimedOut(PathBuf, Duration),
    /// The answer is not what the server sends for this request.
    #[error("control socket {}: unexpected answer (HTTP {status}): {detail}", socket.display())]
    Unexpected {
        /// The socket.
        socket: PathBuf,
        /// The HTTP status.
        status: u16,
        /// What did not fit.
        detail: String,
    },
    /// The server refused a request that it always answers (status, hot-reload status).
    #[error("control socket {}: {}", .0.display(), .1)]
    Refused(PathBuf, Refusal),
}

/// The server's refusal: its `{"error", "retryable"}` answer and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct Refusal {
    /// The HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What the server says.
    pub error: String,
    /// Whether the same request may succeed later.
    #[serde(default)]
    pub retryable: bool,
    /// For a refused reload: the generation still serving.
    #[serde(default)]
    pub serving_generation: Option<u64>,
    /// For a refused reload: what refused it.
    #[serde(default)]
    pub kind: Option<crate::reload::RefusalKind>,
}

/// A request's answer: the server's result, or its refusal.
pub type Answer<T> = Result<T, Refusal>;

/// A client of one control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of `socket`; each request gets `timeout` for its whole exchange.
    pub fn new(socket: &Path, timeout: Duration) -> Client {
        Client {
            socket: socket.to_owned(),
            timeout,
        }
    }

    /// Runs `request` on a runtime of its own: the CLI's commands are blocking.
    pub fn blocking<T>(
        &self,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io(self.socket.clone(), e))?
            .block_on(request)
    }

    /// The server and every platform.
    pub async fn status(&self) -> Result<ServerStatus, ClientError> {
        self.always(Method::GET, "/status").await
    }

    /// Every watched or reloaded plugin's hot-reload status.
    pub async fn hotreload_status(&self) -> Result<HotReloadOverview, ClientError> {
        self.always(Method::GET, "/hotreload").await
    }

    /// Sends `message` through `platform`.
    pub async fn send(
        &self,
        platform: &str,
        message: &Outbound,
    ) -> Result<Answer<SendOk>, ClientError> {
        let path = format!("/platforms/{}/send", percent_encoded(platform));
        self.request(Method::POST, &path, Some(message)).await
    }

    /// The reload transaction for `platform`.
    pub async fn reload(&self, platform: &str) -> Result<Answer<ReloadOutcome>, ClientError> {
        let path = format!("/platforms/{}/reload", percent_encoded(platform));
        self.request(Method::POST, &path, None::<&()>).await
    }

    /// Re-reads hermes.toml, applied or refused as a whole.
    /// Asks the server to reopen its journal's path; answers the journal's status.
    pub async fn journal_reopen(
        &self,
    ) -> Result<Answer<crate::journal::JournalStatus>, ClientError> {
        self.request(Method::POST, "/journal/reopen", None::<&()>)
            .await
    }

    /// Asks the server to re-read its config.
    pub async fn reload_config(&self) -> Result<Answer<ConfigChange>, ClientError> {
        self.request(Method::POST, "/config/reload", None::<&()>)
            .await
    }

    /// Starts (`on`) or stops watching `platform`'s library.
    pub async fn hotreload(
        &self,
        platform: &str,
        on: bool,
    ) -> Result<Answer<WatchStatus>, ClientError> {
        let path = format!("/platforms/{}/hotreload", percent_encoded(platform));
        let method = if on { Method::POST } else { Method::DELETE };
        self.request(method, &path, None::<&()>).await
    }

    /// A request whose refusal is an error of the exchange.
    async fn always<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        self.request(method, path, None::<&()>)
            .await?
            .map_err(|refusal| ClientError::Refused(self.socket.clone(), refusal))
    }

    /// One request: the answer as `T` on success, the server's [`Refusal`] otherwise.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Answer<T>, ClientError> {
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::TimedOut(self.socket.clone(), self.timeout))??;
        let unexpected = |detail: String| ClientError::Unexpected {
            socket: self.socket.clone(),
            status,
            detail,
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map(Ok)
                .map_err(|e| unexpected(e.to_string()));
        }
        let mut refusal: Refusal = serde_json::from_slice(&bytes)
            .map_err(|e| unexpected(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
        refusal.status = status;
        Ok(Err(refusal))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(u16, Bytes), ClientError> {
        let socket = || self.socket.clone();
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(socket())
                }
                _ => ClientError::Io(socket(), e),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(socket(), e))?;
        let connection = tokio::spawn(connection);
        let body = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| ClientError::Unexpected {
                socket: socket(),
                status: 0,
                detail: format!("request body: {e}"),
            })?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "hermes")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Unexpected {
                socket: socket(),
                status: 0,
                detail: format!("request: {e}"),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(socket(), e))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(socket(), e))?
            .to_bytes();
        drop(sender);
        connection.abort();
        Ok((status, bytes))
    }
}

/// Percent-encodes everything but unreserved characters: ids go into a URL path.
pub(crate) fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
