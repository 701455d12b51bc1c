//! IRC lines: parsing what the server says, and building what we send within 512 bytes.

/// The longest line kept from the server: 512 bytes, plus the 8,191 that IRCv3 allows for
/// message tags. Longer lines are skipped whole.
pub const MAX_LINE: usize = 512 + 8191;

/// Splits what the server sends into lines, in time linear in the bytes read: each byte is
/// scanned for the newline once, and at most [`MAX_LINE`] bytes are held. A line past the bound
/// is dropped as it arrives and reported once ([`Line::TooLong`]); the next line is read as
/// usual.
#[derive(Debug, Default)]
pub struct Lines {
    buffer: Vec<u8>,
    /// `buffer[..scanned]` holds no newline.
    scanned: usize,
    /// Dropping the rest of an over-long line, up to its newline.
    skipping: bool,
}

/// What [`Lines::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, with its CRLF.
    Whole(Vec<u8>),
    /// A line passed [`MAX_LINE`]; it is dropped up to its newline.
    TooLong,
}

impl Lines {
    /// Bytes read from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next line, or `None` until more bytes arrive.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            match self.buffer[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let end = self.scanned + at + 1;
                    let line: Vec<u8> = self.buffer.drain(..end).collect();
                    self.scanned = 0;
                    if std::mem::take(&mut self.skipping) {
                        continue; // the tail of the line reported already
                    }
                    return Some(Line::Whole(line));
                }
                None if self.skipping => {
                    self.buffer.clear();
                    self.scanned = 0;
                    return None;
                }
                None if self.buffer.len() > MAX_LINE => {
                    self.buffer.clear();
                    self.scanned = 0;
                    self.skipping = true;
                    return Some(Line::TooLong);
                }
                None => {
                    self.scanned = self.buffer.len();
                    return None;
                }
            }
        }
    }
}

/// A parsed IRC message: `[:prefix] COMMAND params... [:trailing]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The source, without the leading `:`.
    pub prefix: Option<&'a str>,
    /// The command or numeric.
    pub command: &'a str,
    /// The parameters, the trailing one last.
    pub params: Vec<&'a str>,
}

impl<'a> Message<'a> {
    /// Parses one line (without CRLF); `None` for an empty line.
    pub fn parse(line: &'a str) -> Option<Message<'a>> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        // IRCv3 tags are not requested; skip them if a server sends some anyway.
        if rest.starts_with('@') {
            rest = rest.split_once(' ')?.1;
        }
        let prefix = if let Some(p) = rest.strip_prefix(':') {
            let (prefix, tail) = p.split_once(' ')?;
            rest = tail;
            Some(prefix)
        } else {
            None
        };
        let rest = rest.trim_start();
        let (command, mut rest) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if command.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing);
                break;
            }
            match rest.split_once(' ') {
                Some((p, r)) => {
                    params.push(p);
                    rest = r;
                }
                None => {
                    params.push(rest);
                    break;
                }
            }
        }
        Some(Message {
            prefix,
            command,
            params,
        })
    }

    /// The nick of the prefix (`nick!user@host`).
    pub fn nick(&self) -> Option<&'a str> {
        self.prefix.map(|p| p.split(['!', '@']).next().unwrap_or(p))
    }
}

/// The longest `user@host` a server may put in front of our relayed lines; with the nick, it is
/// what the 512-byte limit must leave room for.
const PREFIX_ALLOWANCE: usize = 1 + 1 + 10 + 1 + 63 + 1;

/// Builds `PRIVMSG <target> :<text>` lines, each at most 512 bytes with CRLF even after the
/// server prefixes it with `:nick!user@host`, split on newlines, then at spaces where possible,
/// never inside a UTF-8 character. Control characters other than IRC formatting are dropped.
pub fn privmsg_lines(nick: &str, target: &str, text: &str) -> Vec<String> {
    let head = format!("PRIVMSG {target} :");
    let budget = 510usize
        .saturating_sub(head.len() + nick.len() + PREFIX_ALLOWANCE)
        .max(16);
    let mut lines = Vec::new();
    for paragraph in text.split(['\n', '\r']) {
        let clean: String = paragraph
            .chars()
            .filter(|c| {
                !c.is_control() || matches!(*c, '\x02' | '\x03' | '\x0f' | '\x16' | '\x1d' | '\x1f')
            })
            .collect();
        let mut rest = clean.trim_end();
        while !rest.is_empty() {
            if rest.len() <= budget {
                lines.push(format!("{head}{rest}"));
                break;
            }
            let mut cut = budget;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            // Prefer the last space in the second half of the chunk.
            if let Some(space) = rest[..cut].rfind(' ').filter(|&s| s > cut / 2) {
                cut = space;
            }
            lines.push(format!("{head}{}", &rest[..cut]));
            rest = rest[cut..].trim_start();
        }
    }
    lines
}

/// Whether `nick` is a valid IRC nickname (RFC 2812 characters).
pub fn valid_nick(nick: &str) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = nick.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || special(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
        && nick.len() <= 30
}

/// Whether `channel` is a valid channel name.
pub fn valid_channel(channel: &str) -> bool {
    channel.len() > 1
        && channel.len() <= 50
        && channel.starts_with(['#', '&', '+', '!'])
        && !channel.contains([' ', ',', '\x07', '\r', '\n', '\0'])
}

/// A nick to try after `nick` was refused as in use: `_` appended, or the last character
/// replaced by a counting digit once at `max_len`.
pub fn next_nick(nick: &str, attempt: u32, max_len: usize) -> String {
    let suffix = if attempt == 1 {
        "_".to_owned()
    } else {
        attempt.to_string()
    };
    let keep = max_len.saturating_sub(suffix.len()).min(nick.len());
    let mut base = nick.to_owned();
    while base.len() > keep || !base.is_char_boundary(base.len()) {
        base.pop();
    }
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let m = Message::parse(":alice!a@host PRIVMSG #ops :hello there").unwrap();
        assert_eq!(m.nick(), Some("alice"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, ["#ops", "hello there"]);
        let m = Message::parse("PING :irc.example").unwrap();
        assert_eq!(
            (m.prefix, m.command, m.params.as_slice()),
            (None, "PING", &["irc.example"][..])
        );
        let m = Message::parse(":srv 433 * bot :Nickname already in use\r\n").unwrap();
        assert_eq!(m.params, ["*", "bot", "Nickname already in use"]);
        assert_eq!(Message::parse(""), None);
    }

    #[test]
    fn long_messages_split_under_the_limit() {
        let text = "word ".repeat(300) + "é".repeat(300).as_str();
        let lines = privmsg_lines("hermesbot", "#ops", &text);
        assert!(lines.len() > 2);
        for line in &lines {
            assert!(
                line.len() + 2 + "hermesbot".len() + PREFIX_ALLOWANCE <= 512,
                "{}",
                line.len()
            );
            assert!(line.starts_with("PRIVMSG #ops :"));
        }
        let joined: String = lines
            .iter()
            .map(|l| &l["PRIVMSG #ops :".len()..])
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(joined.matches("word").count(), 300);
        assert_eq!(joined.matches('é').count(), 300);
        assert_eq!(
            privmsg_lines("n", "bob", "a\nb\n\nc"),
            ["PRIVMSG bob :a", "PRIVMSG bob :b", "PRIVMSG bob :c"]
        );
    }

    fn lines_of(reads: &[&[u8]]) -> Vec<Line> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for read in reads {
            lines.push(read);
            while let Some(line) = lines.next_line() {
                out.push(line);
            }
        }
        out
    }

    #[test]
    fn lines_split_whatever_the_reads() {
        assert_eq!(
            lines_of(&[b"PING :a\r", b"\nPI", b"NG :b\r\nPING", b" :c\r\n"]),
            vec![
                Line::Whole(b"PING :a\r\n".to_vec()),
                Line::Whole(b"PING :b\r\n".to_vec()),
                Line::Whole(b"PING :c\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_skipped_whole() {
        let huge = vec![b'x'; 4096];
        let mut reads: Vec<&[u8]> = vec![b"PING :1\r\n:a PRIVMSG #c :"];
        reads.extend(std::iter::repeat_n(huge.as_slice(), 2_500)); // 10 MB
        reads.push(b"tail\r\nPING :2\r\n");
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for read in reads {
            lines.push(read);
            while let Some(line) = lines.next_line() {
                out.push(line);
            }
            assert!(lines.buffer.len() <= MAX_LINE + huge.len());
        }
        assert_eq!(
            out,
            vec![
                Line::Whole(b"PING :1\r\n".to_vec()),
                Line::TooLong,
                Line::Whole(b"PING :2\r\n".to_vec()),
            ]
        );
        // A line at the bound is kept.
        let mut at_bound = vec![b'y'; MAX_LINE - 2];
        at_bound.extend_from_slice(b"\r\n");
        assert_eq!(lines_of(&[&at_bound]), vec![Line::Whole(at_bound.clone())]);
    }

    #[test]
    fn names() {
        assert!(
            valid_nick("hermes")
                && valid_nick("[bot]")
                && !valid_nick("9bot")
                && !valid_nick("a b")
        );
        assert!(valid_channel("#ops") && !valid_channel("ops") && !valid_channel("#a,b"));
        assert_eq!(next_nick("hermes", 1, 9), "hermes_");
        assert_eq!(next_nick("hermesbot", 1, 9), "hermesbo_");
        assert_eq!(next_nick("hermesbot", 2, 9), "hermesbo2");
    }
}
