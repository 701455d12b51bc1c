//! Files by HTTP upload (XEP-0363), as Prosody's `mod_http_file_share` serves it: the send asks
//! the upload service (`upload_service` in the config) for a slot, PUTs the bytes to the slot's
//! URL with the headers it names, and sends the slot's GET URL in a message with an out-of-band
//! data element (XEP-0066), which clients show as the file. A file that comes as a URL is sent
//! the same way without the upload. Inbound, an `<x xmlns='jabber:x:oob'>` URL becomes an
//! attachment.
//!
//! The slot request travels on the session's connection; the send waits for its answer (up to
//! the connect timeout), matched by the IQ id ([`Iqs`]).

use std::{
    collections::HashMap,
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

use hermes_plugin_api::Attachment;

use crate::{
    Shared,
    xml::{Element, escape},
};

/// Answers to IQs a send is waiting for, by id.
#[derive(Default)]
pub(crate) struct Iqs {
    pending: Mutex<HashMap<String, Option<Element>>>,
    arrived: Condvar,
}

impl Iqs {
    /// Takes `stanza` if it answers an IQ a send waits for.
    pub(crate) fn answer(&self, stanza: &Element) -> bool {
        let Some(id) = stanza.attr("id") else {
            return false;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(id) {
            Some(slot) => {
                *slot = Some(stanza.clone());
                self.arrived.notify_all();
                true
            }
            None => false,
        }
    }

    /// Queues `iq` (whose id is `id`) on the connection and waits for its answer.
    fn ask(
        &self,
        shared: &Shared,
        id: &str,
        iq: String,
        timeout: Duration,
    ) -> Result<Element, String> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(id.to_owned(), None);
        shared
            .outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(iq);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Some(answer)) = pending.get(id) {
                let answer = answer.clone();
                pending.remove(id);
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                pending.remove(id);
                return Err(format!(
                    "no answer to the upload slot request within {} ms",
                    timeout.as_millis()
                ));
            }
            pending = self
                .arrived
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Where a file was put: the URL to share.
pub(crate) fn upload(
    shared: &Shared,
    iqs: &Iqs,
    service: &str,
    file: &Attachment,
    id: &str,
    timeout: Duration,
) -> Result<String, String> {
    let iq = format!(
        "<iq type='get' id='{}' to='{}'><request xmlns='urn:xmpp:http:upload:0' filename='{}' size='{}' content-type='{}'/></iq>",
        escape(id),
        escape(service),
        escape(&file.name),
        file.data.len(),
        escape(&file.mime)
    );
    let answer = iqs.ask(shared, id, iq, timeout)?;
    if answer.attr("type") != Some("result") {
        let why = answer
            .child("error")
            .and_then(|e| e.children.first())
            .map_or("refused", |c| c.local_name());
        return Err(format!(
            "{service} refused an upload slot for `{}`: {why}",
            file.name
        ));
    }
    let slot = answer
        .child("slot")
        .ok_or("the upload slot answer has no <slot/>")?;
    let put = slot
        .child("put")
        .and_then(|p| p.attr("url"))
        .ok_or("the slot has no PUT URL")?;
    let get = slot
        .child("get")
        .and_then(|g| g.attr("url"))
        .ok_or("the slot has no GET URL")?;
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut request = agent.put(put).set("Content-Type", &file.mime);
    // Only the headers XEP-0363 allows the service to ask for.
    for header in slot
        .child("put")
        .map(|p| p.children.as_slice())
        .unwrap_or_default()
    {
        if let Some(name) = header.attr("name")
            && matches!(
                name.to_ascii_lowercase().as_str(),
                "authorization" | "cookie" | "expires"
            )
        {
            request = request.set(name, header.text.trim());
        }
    }
    request
        .send_bytes(&file.data)
        .map_err(|e| format!("uploading `{}`: {e}", file.name))?;
    Ok(get.to_owned())
}

/// The message sharing `url` (a file called `name`) out of band.
pub(crate) fn oob_message(to: &str, type_: &str, id: &str, url: &str) -> String {
    format!(
        "<message to='{}' type='{type_}' id='{}'><body>{}</body><x xmlns='jabber:x:oob'><url>{}</url></x></message>",
        escape(to),
        escape(id),
        escape(url),
        escape(url)
    )
}

/// The attachment an inbound `<x xmlns='jabber:x:oob'>` names.
pub(crate) fn oob_attachment(stanza: &Element) -> Option<Attachment> {
    let url = stanza.child("x")?.child("url")?.text.trim().to_owned();
    if url.is_empty() {
        return None;
    }
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("file")
        .to_owned();
    Some(Attachment {
        name,
        mime: "application/octet-stream".into(),
        size: 0,
        data: Vec::new(),
        url: Some(url),
    })
}
