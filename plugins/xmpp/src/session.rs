//! The connection thread: connect, STARTTLS, authenticate, bind, join rooms, then read stanzas,
//! answer pings and write what sends queued; reconnect with backoff when the server goes away.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use base64::Engine;
use hermes_adapter_net::Conn;
use hermes_plugin_api::Host;

use crate::{
    Config, Jid, Shared, Tls,
    kinds::{self, ReactionSets},
    upload::Iqs,
    xml::{Element, Item, Stream, escape},
};

/// How often the thread wakes to check the queue and the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// How long the server has for each step of the handshake.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A whitespace keepalive after this long without writing.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Runs until `shared.stop`: connects, serves a session, reconnects with backoff.
pub(crate) fn run(config: &Config, shared: &Shared, iqs: &Iqs, host: Host) {
    let mut backoff = Duration::from_millis(500);
    let max = Duration::from_millis(config.reconnect_max_ms.max(500));
    while !shared.stop.load(Ordering::Acquire) {
        let mut session = Session {
            config,
            shared,
            iqs,
            host: &host,
            stream: Stream::default(),
            connected: false,
            reactions: ReactionSets::default(),
        };
        let reason = session.run().err().unwrap_or_else(|| "stopped".into());
        if session.connected {
            backoff = Duration::from_millis(500);
        }
        {
            let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.online = false;
            status.last_error = Some(reason.clone());
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!(reason = %reason, retry_ms = backoff.as_millis() as u64, "xmpp connection ended; reconnecting");
        let until = Instant::now() + backoff;
        while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(TICK);
        }
        backoff = (backoff * 2).min(max);
    }
}

struct Session<'a> {
    config: &'a Config,
    shared: &'a Shared,
    /// IQ answers a send waits for (upload slots).
    iqs: &'a Iqs,
    host: &'a Host,
    stream: Stream,
    /// The session got as far as binding.
    connected: bool,
    /// Each sender's last set of reactions per message (XEP-0444 sends the whole set).
    reactions: ReactionSets,
}

impl Session<'_> {
    fn run(&mut self) -> Result<(), String> {
        let jid = Jid::parse(&self.config.jid).ok_or("invalid jid")?;
        let address = self.config.address(&jid);
        let mut conn = connect(&address, self.config.connect_timeout_ms)?;
        let mut features = self.open(&mut conn, &jid.domain)?;
        if self.config.tls == Tls::Starttls {
            if features.child("starttls").is_none() {
                return Err(format!(
                    "{address} does not offer STARTTLS (tls = \"starttls\" requires it)"
                ));
            }
            write(
                &mut conn,
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            )?;
            let answer = self.stanza(&mut conn)?;
            if answer.local_name() != "proceed" {
                return Err(format!("STARTTLS refused by {address}"));
            }
            let Conn::Plain(tcp) = conn else {
                return Err("TLS twice".into());
            };
            conn = upgrade(tcp, self.config, &jid.domain)?;
            self.stream.restart();
            features = self.open(&mut conn, &jid.domain)?;
        }
        self.authenticate(&mut conn, &jid, &features)?;
        self.stream.restart();
        self.open(&mut conn, &jid.domain)?;
        let resource = jid.resource.clone().unwrap_or_else(|| "hermes".into());
        write(
            &mut conn,
            &format!(
                "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{}</resource></bind></iq>",
                escape(&resource)
            ),
        )?;
        let bound = loop {
            let iq = self.stanza(&mut conn)?;
            if iq.local_name() == "iq" && iq.attr("id") == Some("bind1") {
                if iq.attr("type") != Some("result") {
                    return Err("the server refused to bind a resource".into());
                }
                break iq
                    .child("bind")
                    .and_then(|b| b.child("jid"))
                    .map(|j| j.text.clone())
                    .unwrap_or_else(|| format!("{}/{resource}", jid.bare()));
            }
        };
        write(&mut conn, "<presence/>")?;
        let nick = self.nick(&jid);
        for room in &self.config.rooms {
            write(
                &mut conn,
                &format!(
                    "<presence to='{}/{}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
                    escape(room),
                    escape(&nick)
                ),
            )?;
        }
        self.connected = true;
        {
            let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            status.online = true;
            status.connections += 1;
            status.bound = bound.clone();
            status.last_error = None;
        }
        tracing::info!(jid = %bound, rooms = self.config.rooms.len(), "xmpp online");
        self.serve(&mut conn, &nick)
    }

    fn nick(&self, jid: &Jid) -> String {
        self.config
            .nick
            .clone()
            .unwrap_or_else(|| jid.local.clone())
    }

    /// Opens our stream and reads the server's header and features.
    fn open(&mut self, conn: &mut Conn, domain: &str) -> Result<Element, String> {
        write(
            conn,
            &format!(
                "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
                escape(domain)
            ),
        )?;
        match self.item(conn)? {
            Item::Opened(_) => {}
            other => {
                return Err(format!(
                    "expected the server's stream header, got {other:?}"
                ));
            }
        }
        let features = self.stanza(conn)?;
        if features.local_name() != "features" {
            return Err(format!("expected stream features, got <{}>", features.name));
        }
        Ok(features)
    }

    /// SASL PLAIN: only over TLS, or to a loopback server with `tls = "none"` (checked in
    /// `validate_config`).
    fn authenticate(
        &mut self,
        conn: &mut Conn,
        jid: &Jid,
        features: &Element,
    ) -> Result<(), String> {
        let offered: Vec<String> = features
            .child("mechanisms")
            .map(|m| m.children.iter().map(|c| c.text.clone()).collect())
            .unwrap_or_default();
        if !offered.iter().any(|m| m == "PLAIN") {
            return Err(format!(
                "the server offers no SASL mechanism this adapter speaks (PLAIN); it offers {offered:?}"
            ));
        }
        let password = self.config.password.as_deref().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{password}", jid.local));
        write(
            conn,
            &format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            ),
        )?;
        let answer = self.stanza(conn)?;
        match answer.local_name() {
            "success" => Ok(()),
            _ => Err(format!(
                "authentication as {} failed: {}",
                jid.bare(),
                answer
                    .children
                    .first()
                    .map_or("no reason given", |c| c.local_name())
            )),
        }
    }

    /// The next item, waiting up to [`STEP_TIMEOUT`].
    fn item(&mut self, conn: &mut Conn) -> Result<Item, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(item) = self.stream.next_item()? {
                return Ok(item);
            }
            if Instant::now() > deadline || self.shared.stop.load(Ordering::Acquire) {
                return Err("the server did not answer in time".into());
            }
            self.fill(conn)?;
        }
    }

    /// The next stanza during the handshake; a stream error or close ends the session.
    fn stanza(&mut self, conn: &mut Conn) -> Result<Element, String> {
        match self.item(conn)? {
            Item::Stanza(s) if s.local_name() == "error" && s.name.starts_with("stream") => {
                Err(stream_error(&s))
            }
            Item::Stanza(s) => Ok(s),
            Item::Closed => Err("the server closed the stream".into()),
            Item::Opened(_) => Err("the server opened a second stream".into()),
        }
    }

    /// Reads what the socket has (nothing after a [`TICK`] is no error).
    fn fill(&mut self, conn: &mut Conn) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        match conn.read(&mut buf) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.stream.push(&buf[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("reading: {e}")),
        }
    }

    /// The session proper: stanzas in, queued stanzas out, until stop or an error.
    fn serve(&mut self, conn: &mut Conn, nick: &str) -> Result<(), String> {
        let mut last_write = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                let _ = write(conn, "<presence type='unavailable'/></stream:stream>");
                return Ok(());
            }
            loop {
                let next = self
                    .shared
                    .outgoing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                let Some(stanza) = next else { break };
                if let Err(e) = write(conn, &stanza) {
                    // Written again after the reconnect: an accepted message is not dropped.
                    self.shared
                        .outgoing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_front(stanza);
                    return Err(e);
                }
                last_write = Instant::now();
            }
            if last_write.elapsed() > KEEPALIVE {
                write(conn, " ")?;
                last_write = Instant::now();
            }
            self.fill(conn)?;
            while let Some(item) = self.stream.next_item()? {
                match item {
                    Item::Stanza(s) => self.handle(conn, &s, nick)?,
                    Item::Closed => return Err("the server closed the stream".into()),
                    Item::Opened(_) => {}
                }
            }
        }
    }

    fn handle(&mut self, conn: &mut Conn, stanza: &Element, nick: &str) -> Result<(), String> {
        match stanza.local_name() {
            "message" => self.message(stanza, nick),
            "iq" if matches!(stanza.attr("type"), Some("result" | "error"))
                && self.iqs.answer(stanza) => {}
            "iq" => {
                let (id, from) = (stanza.attr("id").unwrap_or(""), stanza.attr("from"));
                let to = from.map_or(String::new(), |f| format!(" to='{}'", escape(f)));
                match stanza.attr("type") {
                    Some("get") if stanza.child("ping").is_some() => {
                        write(
                            conn,
                            &format!("<iq type='result' id='{}'{to}/>", escape(id)),
                        )?;
                    }
                    Some("get" | "set") => write(
                        conn,
                        &format!(
                            "<iq type='error' id='{}'{to}><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                            escape(id)
                        ),
                    )?,
                    _ => {}
                }
            }
            "presence" if stanza.attr("type") == Some("error") => {
                tracing::warn!(
                    from = stanza.attr("from").unwrap_or(""),
                    "xmpp presence refused (a room join?)"
                );
            }
            "error" => return Err(stream_error(stanza)),
            _ => {}
        }
        Ok(())
    }

    fn message(&mut self, stanza: &Element, nick: &str) {
        let from = stanza.attr("from").unwrap_or("");
        let Some(sender) = Jid::parse(from) else {
            return;
        };
        let kind = stanza.attr("type").unwrap_or("normal");
        let (chat, user) = match kind {
            "groupchat" => {
                let speaker = sender.resource.clone().unwrap_or_default();
                // Its own reflection, and the history a room replays on join.
                if speaker == nick || stanza.child("delay").is_some() {
                    return;
                }
                (sender.bare(), speaker)
            }
            "chat" | "normal" => (sender.bare(), sender.bare()),
            _ => return,
        };
        let id = stanza.attr("id").map_or_else(
            || format!("xmpp-{}", hermes_plugin_api::now_ms()),
            str::to_owned,
        );
        for message in kinds::inbound(stanza, &chat, &user, &id, &mut self.reactions) {
            if let Err(e) = self.host.deliver(&message) {
                tracing::warn!(error = %e, "the host did not take an xmpp message");
            }
        }
    }
}

fn stream_error(error: &Element) -> String {
    let condition = error
        .children
        .iter()
        .find(|c| c.local_name() != "text")
        .map_or("undefined-condition", |c| c.local_name());
    format!("stream error from the server: {condition}")
}

fn write(conn: &mut Conn, text: &str) -> Result<(), String> {
    conn.write_all(text.as_bytes())
        .and_then(|()| conn.flush())
        .map_err(|e| format!("writing: {e}"))
}

fn connect(address: &str, timeout_ms: u64) -> Result<Conn, String> {
    hermes_adapter_net::connect(address, Duration::from_millis(timeout_ms), TICK)
        .map(Conn::Plain)
        .map_err(|e| format!("connecting to {address}: {e}"))
}

fn upgrade(tcp: TcpStream, config: &Config, domain: &str) -> Result<Conn, String> {
    hermes_adapter_net::tls(tcp, domain, config.tls_ca_file.as_deref()).map_err(|e| e.to_string())
}
