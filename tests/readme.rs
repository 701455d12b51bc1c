//! The README's quick start, run as a newcomer runs it: `make run`'s config served, then every
//! command of the "From another terminal" block, each expected to succeed.

use std::{fs, process::Command};

use crate::util::{self, TestDir};

/// The shell lines of the first ```sh block after `marker`, continuation lines joined, comment
/// lines and background (`&`) lines left out.
fn commands_after(readme: &str, marker: &str) -> Vec<String> {
    let from = readme.find(marker).expect("the README has the quick start");
    let block = readme[from..].split("```sh\n").nth(1).unwrap();
    let block = &block[..block.find("```").unwrap()];
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim_end();
        if current.is_empty() && (line.trim_start().starts_with('#') || line.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
        .into_iter()
        // "cmd   # what it shows": the shell drops the comment itself.
        .filter(|c| !c.split(" #").next().unwrap().trim_end().ends_with('&'))
        .collect()
}

#[test]
fn the_readme_quick_start_commands_work_against_the_example_config() {
    let root = util::root();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let commands = commands_after(&readme, "From another terminal:");
    assert!(commands.len() >= 4, "{commands:?}");

    // A checkout of our own: the example config, the plugins and the built libraries.
    let t = TestDir::new();
    fs::create_dir_all(t.path().join("examples")).unwrap();
    fs::copy(
        root.join("examples/hermes.toml"),
        t.path().join("examples/hermes.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(root.join("plugins"), t.path().join("plugins")).unwrap();
    std::os::unix::fs::symlink(root.join("target"), t.path().join("target")).unwrap();
    let path = format!(
        "{}:{}",
        util::target_debug().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut server = Command::new(util::bin())
        .args(["-c", "examples/hermes.toml", "serve"])
        .current_dir(t.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert!(
        ready.starts_with("hermes-host ready: http://127.0.0.1:8642"),
        "{ready}"
    );

    let mut outputs = Vec::new();
    for command in &commands {
        // A person types slower than the journal's flush interval: wait for the file to fill.
        if let Some(file) = command
            .strip_prefix("cat ")
            .map(|c| c.split_whitespace().next().unwrap())
        {
            let file = t.path().join(file);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .count()
                < 3
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} stays empty",
                    file.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let out = Command::new("sh")
            .args(["-c", command])
            .current_dir(t.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{command}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    let _ = server.kill();
    let _ = server.wait();
    // What the README says they print.
    let joined = outputs.join("\n");
    assert!(
        joined.contains(r#"{"message_id":"lb-1-1","platform":"loopback","generation":1}"#),
        "{joined}"
    );
    assert!(joined.contains("sent lb-1-"), "{joined}");
    assert!(joined.contains("\"kind\":\"routed\""), "{joined}");
}
