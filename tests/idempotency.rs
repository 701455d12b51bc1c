//! `Idempotency-Key`: a repeat gets the first answer and sends nothing, across a `kill -9`; the
//! same key with another body is refused.

use crate::util::{Server, Sse, TestDir};

#[test]
fn a_repeated_key_is_answered_from_the_store_even_after_kill_9() {
    let t = TestDir::new();
    t.install("lb", "hermes_loopback", 1);
    let mut server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    let body = r#"{"chat_id":"c","text":"pay invoice 7"}"#;
    let send = |server: &Server, body: &str| {
        server.post_with(
            "/api/platforms/lb/send",
            body,
            &[("Idempotency-Key", "inv-7")],
        )
    };
    let (status, first) = send(&server, body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(sse.next()["text"], "pay invoice 7");
    let (status, again) = send(&server, body);
    assert_eq!((status, &again), (200, &first));
    // Nothing was sent again: the next echo is the marker's.
    server.send("lb", "c", "marker");
    assert_eq!(sse.next()["text"], "marker");
    let (status, e) = send(&server, r#"{"chat_id":"c","text":"pay invoice 8"}"#);
    assert_eq!(status, 422, "{e}");
    assert!(
        e.contains("Idempotency-Key `inv-7` was used for another request"),
        "{e}"
    );

    server.kill9();
    let server = Server::start(&t, "[platforms.lb]\n");
    let mut sse = Sse::connect(&server.addr);
    let (status, after) = send(&server, body);
    assert_eq!((status, &after), (200, &first));
    server.send("lb", "c", "marker 2");
    assert_eq!(sse.next()["text"], "marker 2");
}
