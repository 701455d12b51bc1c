//! What IRC cannot carry, through the gateway against a real ngircd: a long text split under
//! the manifest's `max_text_len` into messages of their own, in order; edits and reactions
//! sent as text with `fallback = "text"`.

use serde_json::json;

use crate::{
    peers::{IrcClient, Ngircd},
    util::{self, Server, TestDir},
};

#[test]
fn irc_gets_long_texts_in_parts_and_other_kinds_as_text() {
    let t = TestDir::new();
    let irc = Ngircd::start(&t.path().join("ngircd"));
    t.install("irc", "hermes_irc", 1);
    util::shipped_capabilities(&t, "irc", &["irc"]);
    let mut watcher = IrcClient::connect(&irc.addr(), "watcher");
    watcher.join("#ops");
    let server = Server::start(
        &t,
        &format!(
            "[platforms.irc]\nserver = \"{}\"\nnick = \"hermes\"\nchannels = [\"#ops\"]\nsend_interval_ms = 10\nfallback = \"text\"\n",
            irc.addr()
        ),
    );
    watcher.expect(|l| l.starts_with(":hermes!") && l.contains("JOIN"));

    let words: Vec<String> = (0..300).map(|i| format!("word{i:03}")).collect();
    let (status, body) = server.post(
        "/api/platforms/irc/send",
        &json!({ "chat_id": "#ops", "text": words.join(" ") }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let parts = sent["parts"].as_array().expect("split into parts").len();
    assert!(parts >= 6, "{sent}");
    let mut got = Vec::new();
    for _ in 0..parts {
        let line = watcher.expect(|l| l.contains("PRIVMSG #ops :"));
        let text = line.split_once("PRIVMSG #ops :").unwrap().1;
        assert!(text.len() <= 400, "{text:?}");
        got.extend(text.split(' ').map(str::to_owned));
    }
    assert_eq!(got, words, "every word, in order");

    let (status, body) = server.post(
        "/api/platforms/irc/react",
        &json!({ "chat_id": "#ops", "message_id": "irc-out-1", "emoji": "👍" }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        watcher
            .expect(|l| l.contains("PRIVMSG #ops :"))
            .ends_with(":reacted 👍")
    );
    server.post(
        "/api/platforms/irc/edit",
        &json!({ "chat_id": "#ops", "message_id": "irc-out-1", "text": "fixed" }).to_string(),
    );
    assert!(
        watcher
            .expect(|l| l.contains("PRIVMSG #ops :"))
            .ends_with(":Correction: fixed")
    );
}
