//! The journal's unit tests.

use super::*;

fn record(text: &str, kind: RecordKind) -> Record {
    Record {
        ts: 0,
        kind,
        platform: "p".into(),
        chat_id: "c".into(),
        user: None,
        text: text.into(),
        message_id: "m".into(),
        generation: 1,
        route_from: None,
    }
}

#[test]
fn an_admitted_send_always_finds_room_for_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let (journal, thread) = Journal::open(JournalOptions {
        path: path.clone(),
        // No tick during the test: only bursts wake the writer.
        flush_every: Duration::from_secs(3600),
        durability: Durability::Flush,
        queue_bytes: 256 * 1024,
    })
    .unwrap();
    let text = "x".repeat(10 * 1024);
    let need = Record::reserve_len("p", "c", &text, None);
    let mut admitted = Vec::new();
    let refused = loop {
        match journal.try_admit(need) {
            Ok(reservation) => admitted.push(reservation),
            Err(e) => break e,
        }
        assert!(admitted.len() < 100, "admission has no bound");
    };
    assert!(matches!(refused, JournalError::Full(_)), "{refused}");
    // Sends hold at most half the queue.
    assert_eq!(admitted.len(), 128 * 1024 / need);
    // Inbound records still find the other half.
    journal
        .record(record(&text, RecordKind::Inbound))
        .expect("room kept for inbound records");
    // A reservation dropped unused (a failed send) gives its room back.
    let reserved = journal.queue().reserved;
    drop(admitted.pop());
    assert_eq!(journal.queue().reserved, reserved - need);
    let sends = admitted.len();
    for reservation in admitted {
        reservation
            .record(record(&text, RecordKind::Outbound))
            .expect("a reservation's record is always queued");
    }
    assert_eq!(journal.queue().reserved, 0);
    journal.close();
    thread.join().unwrap();
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(lines, sends + 1);
    assert_eq!(journal.status().dropped, 0);
}
