//! The outbox's records: order, settling, keys, dead letters.
use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn item(chat: &str, text: &str, key: Option<&str>) -> NewDelivery {
    NewDelivery {
        platform: "lb".into(),
        chat: chat.into(),
        kind: "message".into(),
        body: text.as_bytes().to_vec(),
        key: key.map(|k| (k.to_owned(), format!("hash-{text}"))),
    }
}

fn queued(e: &Enqueued) -> String {
    match e {
        Enqueued::Queued(id) => id.clone(),
        Enqueued::Seen(claim) => panic!("not queued: {claim:?}"),
    }
}

#[test]
fn records_go_in_order_per_chat_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let out = store
        .enqueue(
            &[
                item("a", "1", None),
                item("b", "x", None),
                item("a", "2", None),
            ],
            "run1",
            DAY,
            true,
        )
        .unwrap();
    let ids: Vec<String> = out.iter().map(queued).collect();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.pending_chats().unwrap(),
        [("lb".into(), "a".into()), ("lb".into(), "b".into())]
    );
    let next = store.pending("lb", "a", 10).unwrap();
    let order: Vec<&str> = next
        .iter()
        .map(|p| p.delivery.delivery_id.as_str())
        .collect();
    assert_eq!(order, [ids[0].as_str(), ids[2].as_str()]);
    assert_eq!(&next[0].body[..], b"1");
    assert_eq!(
        next[0].idempotency_key, ids[0],
        "no client key: the delivery id"
    );
    // A failed attempt keeps the record first, due later.
    store.mark_retry(&ids[0], "down", 42).unwrap();
    let next = store.pending("lb", "a", 1).unwrap();
    assert_eq!((next[0].delivery.attempts, next[0].due_ms), (1, 42));
    let sent = store.mark_sent(&ids[0], "m1").unwrap().unwrap();
    assert_eq!((sent.state, sent.attempts), (DeliveryState::Sent, 2));
    assert_eq!(sent.message_id.as_deref(), Some("m1"));
    assert_eq!(store.delivery(&ids[0]).unwrap(), Some(sent));
    let next = store.pending("lb", "a", 10).unwrap();
    assert_eq!(next[0].delivery.delivery_id, ids[2]);
}

#[test]
fn a_key_queues_once_and_dead_letters_replay_and_drop() {
    let store = Store::in_memory().unwrap();
    let first = store
        .enqueue(&[item("a", "1", Some("k"))], "run1", DAY, false)
        .unwrap();
    let id = queued(&first[0]);
    let again = store
        .enqueue(
            &[item("a", "1", Some("k")), item("a", "2", Some("k"))],
            "run2",
            DAY,
            false,
        )
        .unwrap();
    assert_eq!(
        again,
        [
            Enqueued::Seen(Claim::Answered {
                status: 202,
                answer: queued_answer(&id)
            }),
            Enqueued::Seen(Claim::Conflict)
        ]
    );
    assert_eq!(store.pending("lb", "a", 1).unwrap()[0].idempotency_key, "k");
    store.mark_dead(&id, "refused", true).unwrap();
    assert!(store.pending("lb", "a", 1).unwrap().is_empty());
    let stats = store.outbox_stats().unwrap();
    assert_eq!((stats["lb"].queued, stats["lb"].dead), (0, 1));
    let dead = store.dead_letters(Some("lb")).unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("refused"));
    assert!(store.dead_letters(Some("irc")).unwrap().is_empty());
    assert_eq!(
        store.replay(Some(&id), None).unwrap(),
        (1, vec![("lb".into(), "a".into())])
    );
    let back = &store.pending("lb", "a", 1).unwrap()[0];
    assert_eq!((back.delivery.attempts, &back.body[..]), (0, &b"1"[..]));
    assert!(!store.drop_dead(&id).unwrap(), "queued, not dead");
    store.mark_dead(&id, "again", false).unwrap();
    assert!(store.drop_dead(&id).unwrap());
    assert_eq!(store.delivery(&id).unwrap(), None);
}
