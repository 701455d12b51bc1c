//! The XML of an XMPP stream: one never-ending document whose depth-1 children are stanzas.
//!
//! [`Stream`] keeps the bytes read so far and hands out whole stanzas as [`Element`] trees,
//! parsed with quick-xml from the buffer; an incomplete stanza waits for more bytes, so a read
//! that times out halfway loses nothing.
//!
//! The server decides what arrives, so everything it decides is bounded: a stanza (or what
//! precedes one) may hold at most [`MAX_STANZA_BYTES`] and nest at most [`MAX_DEPTH`] elements
//! (a tree nested 20,000 deep overflowed the stack when it was dropped). Past either bound the
//! stream is broken: [`Stream::next_item`] says so, naming the bound, and the session
//! reconnects. An incomplete stanza is parsed again only once bytes holding a `>` arrived (no
//! element can end without one), so a stanza that never ends costs a parse per closing
//! bracket, not one per read.

use quick_xml::{
    Reader,
    events::{BytesStart, Event},
};

/// An element: its name (with prefix), attributes, text and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// `message`, `stream:features`...
    pub name: String,
    /// Attributes in order.
    pub attrs: Vec<(String, String)>,
    /// The text directly inside it.
    pub text: String,
    /// Child elements.
    pub children: Vec<Element>,
}

impl Element {
    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child with this local name (prefix ignored).
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local_name() == name)
    }

    /// The name without its prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }
}

/// What the stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The peer opened its stream (`<stream:stream ...>`).
    Opened(Element),
    /// A whole stanza.
    Stanza(Element),
    /// The peer closed its stream.
    Closed,
}

/// The most bytes one stanza may take, with whatever precedes it (Prosody's own default limit
/// for client streams is 256 KiB).
pub const MAX_STANZA_BYTES: usize = 1 << 20;

/// The deepest a stanza may nest, counting the stanza itself (real ones nest under 10).
pub const MAX_DEPTH: usize = 64;

/// The bytes of one direction of a stream and where parsing stands.
#[derive(Debug, Default)]
pub struct Stream {
    buffer: Vec<u8>,
    /// The peer's stream header was read: what follows are stanzas.
    open: bool,
    /// The buffer was parsed and holds no whole item; nothing new can end an element until a
    /// `>` arrives.
    incomplete: bool,
}

impl Stream {
    /// Bytes read from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        if bytes.contains(&b'>') {
            self.incomplete = false;
        }
    }

    /// A new stream (after STARTTLS or authentication): what was buffered is dropped.
    pub fn restart(&mut self) {
        self.buffer.clear();
        self.open = false;
        self.incomplete = false;
    }

    /// The next item, if the buffer holds a whole one. `Err` when the XML is broken or past a
    /// bound: the stream cannot go on.
    pub fn next_item(&mut self) -> Result<Option<Item>, String> {
        if self.incomplete {
            return self.within_bounds().map(|()| None);
        }
        let item = self.parse()?;
        if item.is_none() {
            self.incomplete = true;
            self.within_bounds()?;
        }
        Ok(item)
    }

    fn within_bounds(&self) -> Result<(), String> {
        if self.buffer.len() > MAX_STANZA_BYTES {
            return Err(format!(
                "the server sent a stanza over {MAX_STANZA_BYTES} bytes; refused"
            ));
        }
        Ok(())
    }

    fn parse(&mut self) -> Result<Option<Item>, String> {
        let mut reader = Reader::from_reader(self.buffer.as_slice());
        reader.config_mut().trim_text(false);
        // The stream header was consumed before: its end tag comes without it.
        reader.config_mut().check_end_names = false;
        reader.config_mut().allow_unmatched_ends = true;
        let mut stack: Vec<Element> = Vec::new();
        loop {
            let event = match reader.read_event() {
                Ok(e) => e,
                Err(e) => {
                    // Cut short by the end of the buffer (no `>` after where it failed): wait
                    // for more bytes. Otherwise the XML is broken.
                    let at = (reader.error_position() as usize).min(self.buffer.len());
                    if !self.buffer[at..].contains(&b'>') {
                        return Ok(None);
                    }
                    return Err(format!("malformed XML from the server: {e}"));
                }
            };
            match event {
                Event::Eof => return Ok(None),
                // Before a stanza they are consumed with it (the next `consume` covers them),
                // and inside one they carry nothing.
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
                Event::Start(start) if !self.open && stack.is_empty() => {
                    let header = element(&start)?;
                    self.open = true;
                    self.consume(reader.buffer_position() as usize);
                    return Ok(Some(Item::Opened(header)));
                }
                Event::End(_) if stack.is_empty() => {
                    self.consume(reader.buffer_position() as usize);
                    return Ok(Some(Item::Closed));
                }
                Event::Start(start) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!(
                            "the server sent a stanza nested over {MAX_DEPTH} elements deep; refused"
                        ));
                    }
                    stack.push(element(&start)?);
                }
                Event::Empty(start) => {
                    let done = element(&start)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => {
                            self.consume(reader.buffer_position() as usize);
                            return Ok(Some(Item::Stanza(done)));
                        }
                    }
                }
                Event::End(_) => {
                    let done = stack.pop().expect("an open element");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => {
                            self.consume(reader.buffer_position() as usize);
                            return Ok(Some(Item::Stanza(done)));
                        }
                    }
                }
                Event::Text(text) => {
                    if let Some(open) = stack.last_mut() {
                        let text = text
                            .xml_content()
                            .map_err(|e| format!("malformed text from the server: {e}"))?;
                        open.text.push_str(&text);
                    }
                }
                Event::CData(data) => {
                    if let Some(open) = stack.last_mut() {
                        open.text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(open) = stack.last_mut() {
                        let name = String::from_utf8_lossy(&r).into_owned();
                        open.text.push_str(&unescape_ref(&name));
                    }
                }
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buffer.drain(..n.min(self.buffer.len()));
    }
}

fn unescape_ref(name: &str) -> String {
    match name {
        "amp" => "&".into(),
        "lt" => "<".into(),
        "gt" => ">".into(),
        "quot" => "\"".into(),
        "apos" => "'".into(),
        n => {
            let code = n
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()));
            code.and_then(char::from_u32)
                .map_or_else(String::new, String::from)
        }
    }
}

fn element(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| format!("malformed attribute from the server: {e}"))?;
        let value = attr
            .unescape_value()
            .map_err(|e| format!("malformed attribute from the server: {e}"))?;
        attrs.push((
            String::from_utf8_lossy(attr.key.as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Element {
        name,
        attrs,
        ..Element::default()
    })
}

/// `text` escaped for XML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_come_whole_whatever_the_reads() {
        let text = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='s1'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features><message from='a@b/c' type='chat'><body>x &amp; y &lt;3 &#x263A;</body></message></stream:stream>";
        let mut stream = Stream::default();
        let mut items = Vec::new();
        for chunk in text.as_bytes().chunks(7) {
            stream.push(chunk);
            while let Some(item) = stream.next_item().unwrap() {
                items.push(item);
            }
        }
        assert_eq!(items.len(), 4, "{items:?}");
        assert!(matches!(&items[0], Item::Opened(h) if h.attr("id") == Some("s1")));
        let Item::Stanza(features) = &items[1] else {
            panic!()
        };
        assert!(features.child("starttls").is_some());
        let Item::Stanza(message) = &items[2] else {
            panic!()
        };
        assert_eq!(message.attr("from"), Some("a@b/c"));
        assert_eq!(message.child("body").unwrap().text, "x & y <3 ☺");
        assert_eq!(items[3], Item::Closed);
    }

    fn opened() -> Stream {
        let mut stream = Stream::default();
        stream.push(b"<stream:stream xmlns='jabber:client' id='s1'>");
        assert!(matches!(stream.next_item(), Ok(Some(Item::Opened(_)))));
        stream
    }

    #[test]
    fn a_stanza_nested_past_the_bound_is_refused_without_building_it() {
        let mut stream = opened();
        let depth = 20_000;
        stream.push(&b"<a>".repeat(depth));
        let e = stream.next_item().unwrap_err();
        assert!(e.contains("nested over 64"), "{e}");
        // At the bound it is a stanza like any other.
        let mut stream = opened();
        stream.push(&b"<a>".repeat(MAX_DEPTH));
        stream.push(&b"</a>".repeat(MAX_DEPTH));
        assert!(matches!(stream.next_item(), Ok(Some(Item::Stanza(_)))));
    }

    #[test]
    fn a_stanza_that_never_ends_is_refused_at_the_size_bound() {
        let mut stream = opened();
        stream.push(b"<message><body>");
        let chunk = vec![b'x'; 16 * 1024];
        let mut pushed = 0;
        let error = loop {
            stream.push(&chunk);
            pushed += chunk.len();
            match stream.next_item() {
                Ok(None) => assert!(pushed <= MAX_STANZA_BYTES, "never refused"),
                Ok(Some(item)) => panic!("{item:?}"),
                Err(e) => break e,
            }
        };
        assert!(error.contains("over 1048576 bytes"), "{error}");
    }

    #[test]
    fn declarations_before_stanzas_are_skipped() {
        let mut stream = opened();
        // More comments than a recursive parser would have stack for.
        stream.push(&b"<!---->".repeat(100_000));
        stream.push(b"<presence/>");
        let Ok(Some(Item::Stanza(p))) = stream.next_item() else {
            panic!()
        };
        assert_eq!(p.name, "presence");
    }

    #[test]
    fn escapes_text() {
        assert_eq!(
            escape("<a href='x'>&\u{1}"),
            "&lt;a href=&apos;x&apos;&gt;&amp;"
        );
    }
}
