//! The client-server API calls the adapter makes, over ureq (blocking, rustls), each with its
//! errors sorted into retryable (the homeserver is away, overloaded or rate-limiting) and not.

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

/// The most bytes of an answer read from the homeserver; a larger one is refused (a `/sync`
/// answer is the only one that grows with what others do: the server holds it to its
/// timeline limits, so a larger one is a broken or hostile server).
pub(crate) const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// Reads an answer's JSON, at most [`MAX_ANSWER_BYTES`] of it (serde_json bounds its nesting).
fn read_json(response: ureq::Response) -> Result<Value, String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_ANSWER_BYTES {
        return Err(format!(
            "the answer is over {MAX_ANSWER_BYTES} bytes; refused"
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, for logs and the plugin's errors.
    pub message: String,
    /// A retry may succeed (network, 5xx, 429).
    pub retryable: bool,
    /// `M_LIMIT_EXCEEDED`: wait this long first.
    pub retry_after: Option<Duration>,
    /// The access token is not (or no longer) valid.
    pub unauthorized: bool,
}

/// The homeserver, and who we are on it.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pub(crate) token: Option<String>,
}

/// What a login gave.
#[derive(Debug, Clone)]
pub struct Session {
    /// `@user:server`.
    pub user_id: String,
    /// The device, kept across restarts so the server does not pile up devices.
    pub device_id: String,
    /// The access token.
    pub access_token: String,
}

/// A request's body.
enum Body<'a> {
    None,
    Json(&'a Value),
    /// Bytes and their content type.
    Bytes(&'a [u8], &'a str),
}

/// A path segment, percent-encoded.
pub(crate) fn segment(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

impl Client {
    /// A client of `homeserver` (its base URL); calls time out after `timeout`.
    pub fn new(homeserver: &str, timeout: Duration) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(timeout)
                .build(),
            base: homeserver.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// One call: `method` on `/_matrix/client/v3{path}`, `body` as JSON when given.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}/_matrix/client/v3{path}", self.base);
        let body = match body {
            Some(json) => Body::Json(json),
            None => Body::None,
        };
        self.request(method, &url, path, body, timeout)
    }

    /// Uploads a file to the media repository: its `mxc://` URI.
    pub fn upload(&self, name: &str, mime: &str, bytes: &[u8]) -> Result<String, ApiError> {
        let path = format!("/upload?filename={}", segment(name));
        let url = format!("{}/_matrix/media/v3{path}", self.base);
        let answer = self.request("POST", &url, &path, Body::Bytes(bytes, mime), None)?;
        answer["content_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError {
                message: format!("upload of {name}: the homeserver gave no content_uri"),
                retryable: false,
                retry_after: None,
                unauthorized: false,
            })
    }

    /// Where an `mxc://server/id` URI can be downloaded (with the access token, on homeservers
    /// that require authenticated media); `None` for another URI.
    pub fn download_url(base: &str, mxc: &str) -> Option<String> {
        let (server, id) = mxc.strip_prefix("mxc://")?.split_once('/')?;
        Some(format!(
            "{}/_matrix/client/v1/media/download/{}/{}",
            base.trim_end_matches('/'),
            segment(server),
            segment(id)
        ))
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        path: &str,
        body: Body<'_>,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let mut request = self.agent.request(method, url);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let result = match body {
            Body::Json(body) => request.send_json(body),
            Body::Bytes(bytes, mime) => request.set("Content-Type", mime).send_bytes(bytes),
            Body::None => request.call(),
        };
        match result {
            Ok(response) => read_json(response).map_err(|e| ApiError {
                message: format!("{method} {path}: unreadable answer: {e}"),
                retryable: true,
                retry_after: None,
                unauthorized: false,
            }),
            Err(ureq::Error::Status(status, response)) => {
                let body: Value = read_json(response).unwrap_or(Value::Null);
                let code = body["errcode"].as_str().unwrap_or("").to_owned();
                let error = body["error"].as_str().unwrap_or("").to_owned();
                Err(ApiError {
                    message: format!("{method} {path}: {status} {code} {error}")
                        .trim_end()
                        .to_owned(),
                    retryable: status == 429 || status >= 500,
                    retry_after: (code == "M_LIMIT_EXCEEDED")
                        .then(|| body["retry_after_ms"].as_u64())
                        .flatten()
                        .map(Duration::from_millis),
                    unauthorized: status == 401 || code == "M_UNKNOWN_TOKEN",
                })
            }
            Err(e) => Err(ApiError {
                message: format!("{method} {path}: {e}"),
                retryable: true,
                retry_after: None,
                unauthorized: false,
            }),
        }
    }

    /// Password login, on `device_id` when one is known.
    pub fn login(
        &mut self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
    ) -> Result<Session, ApiError> {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
            "initial_device_display_name": "hermes-host",
        });
        if let Some(device) = device_id {
            body["device_id"] = json!(device);
        }
        let answer = self.call("POST", "/login", Some(&body), None)?;
        let session = Session {
            user_id: answer["user_id"].as_str().unwrap_or(user).to_owned(),
            device_id: answer["device_id"].as_str().unwrap_or_default().to_owned(),
            access_token: answer["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        self.token = Some(session.access_token.clone());
        Ok(session)
    }

    /// Who an access token belongs to.
    pub fn whoami(&mut self, token: &str) -> Result<Session, ApiError> {
        self.token = Some(token.to_owned());
        let answer = self.call("GET", "/account/whoami", None, None)?;
        Ok(Session {
            user_id: answer["user_id"].as_str().unwrap_or_default().to_owned(),
            device_id: answer["device_id"].as_str().unwrap_or_default().to_owned(),
            access_token: token.to_owned(),
        })
    }

    /// Joins a room by id or alias; its room id.
    pub fn join(&self, room: &str) -> Result<String, ApiError> {
        let answer = self.call(
            "POST",
            &format!("/join/{}", segment(room)),
            Some(&json!({})),
            None,
        )?;
        Ok(answer["room_id"].as_str().unwrap_or(room).to_owned())
    }

    /// The room id an alias names.
    pub fn resolve(&self, alias: &str) -> Result<String, ApiError> {
        let answer = self.call(
            "GET",
            &format!("/directory/room/{}", segment(alias)),
            None,
            None,
        )?;
        answer["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError {
                message: format!("{alias}: the homeserver gave no room id"),
                retryable: false,
                retry_after: None,
                unauthorized: false,
            })
    }

    /// Sends `content` as an event of `event_type` under transaction id `txn`: the same `txn`
    /// on a retry never posts twice. The event id.
    pub fn send_event(
        &self,
        room_id: &str,
        event_type: &str,
        txn: &str,
        content: &Value,
    ) -> Result<String, ApiError> {
        let path = format!(
            "/rooms/{}/send/{}/{}",
            segment(room_id),
            segment(event_type),
            segment(txn)
        );
        let answer = self.call("PUT", &path, Some(content), None)?;
        Ok(answer["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// One request of a send ([`crate::events::Request`]) in `room`, under transaction id
    /// `txn`: the event id it made. A file's bytes are uploaded first; a file given by an
    /// `mxc://` URL is sent as it is, by another URL as a link in text.
    pub(crate) fn perform(
        &self,
        room: &str,
        txn: &str,
        request: &crate::events::Request,
    ) -> Result<String, ApiError> {
        use crate::events::{Request, file_content};
        match request {
            Request::Event {
                event_type,
                content,
            } => self.send_event(room, event_type, txn, content),
            Request::Redact { event_id } => self.redact(room, event_id, txn),
            Request::File(file) => {
                let mxc = match &file.url {
                    Some(url) if url.starts_with("mxc://") => url.clone(),
                    Some(url) => {
                        let body = format!("{}: {url}", file.name);
                        let content = serde_json::json!({ "msgtype": "m.text", "body": body });
                        return self.send_event(room, "m.room.message", txn, &content);
                    }
                    None => self.upload(&file.name, &file.mime, &file.data)?,
                };
                self.send_event(room, "m.room.message", txn, &file_content(file, &mxc))
            }
        }
    }

    /// Redacts `event_id` under transaction id `txn`. The redaction's event id.
    pub fn redact(&self, room_id: &str, event_id: &str, txn: &str) -> Result<String, ApiError> {
        let path = format!(
            "/rooms/{}/redact/{}/{}",
            segment(room_id),
            segment(event_id),
            segment(txn)
        );
        let answer = self.call("PUT", &path, Some(&serde_json::json!({})), None)?;
        Ok(answer["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// One `/sync`: from `since` (none: the current state, whose timeline is not delivered),
    /// waiting up to `timeout` for something new.
    pub fn sync(&self, since: Option<&str>, timeout: Duration) -> Result<Value, ApiError> {
        let mut path = format!("/sync?timeout={}", timeout.as_millis());
        if let Some(since) = since {
            path.push_str(&format!("&since={}", segment(since)));
        }
        self.call("GET", &path, None, Some(timeout + Duration::from_secs(10)))
    }
}
