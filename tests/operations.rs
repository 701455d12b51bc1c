//! What docs/operations.md tells an operator to do, done: a backup of the store taken with the
//! `sqlite3` command it quotes while the gateway serves and holds queued sends, the gateway
//! killed, the backup restored into a new state folder, and every queued send delivered from
//! it, once and in order.

use std::{net::TcpListener, process::Command, time::Duration};

use crate::{
    delivery::queued,
    util::{Server, TestDir},
    webhook::Target,
};

fn webhook(url: &str) -> String {
    format!(
        "[platforms.wh]\ntimeout_ms = 60000\nretry_budget_ms = 120000\nmax_retries = 0\n\
         targets = [{{ chat = \"ops\", url = \"{url}\", format = \"json\" }}]\n"
    )
}

#[test]
fn a_backup_taken_while_serving_restores_the_queued_sends() {
    let t = TestDir::new();
    t.install("wh", "hermes_webhook", 1);
    // A target that takes the request and never answers: the first send hangs, the rest wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let mut first = Server::start(&t, &webhook(&url));
    let ids: Vec<String> = (0..3)
        .map(|n| queued(&first, "wh", "ops", &format!("b{n}")))
        .collect();

    // The command docs/operations.md quotes, against the live store.
    let backup = t.path().join("backup.db");
    let out = Command::new("sqlite3")
        .arg(t.path().join("state/hermes.db"))
        .arg(format!(".backup {}", backup.display()))
        .output()
        .expect("sqlite3 (Debian's sqlite3 package; make test-deps installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    first.kill9();

    // Restored into a new state folder, served by a gateway whose target answers.
    let restored = TestDir::new();
    restored.install("wh", "hermes_webhook", 1);
    std::fs::create_dir_all(restored.path().join("state")).unwrap();
    std::fs::copy(&backup, restored.path().join("state/hermes.db")).unwrap();
    let target = Target::start(vec![("/hook", vec![(200, "")])]);
    let second = Server::start(&restored, &webhook(&format!("http://{}/hook", target.addr)));
    for id in &ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = second.get(&format!("/api/deliveries/{id}"));
            assert_eq!(status, 200, "{body}");
            if body.contains("\"state\":\"sent\"") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never sent: {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let texts: Vec<String> = target
        .seen("/hook")
        .iter()
        .map(|s| s.body["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts, ["b0", "b1", "b2"]);
}
