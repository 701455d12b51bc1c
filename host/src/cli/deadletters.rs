//! `hermes-host deadletters list [--json] | replay <id> | replay --all [--platform P] |
//! drop <id>`: the running server's dead letters, through its control socket.

use std::process::ExitCode;

use anyhow::Result;
use axum::http::Method;
use serde_json::Value;

use super::DeadLettersCommand;
use crate::{config::Config, control::percent_encoded};

pub(super) fn run(config: &Config, command: DeadLettersCommand) -> Result<ExitCode> {
    let client = super::remote::client(config);
    let (method, path) = match &command {
        DeadLettersCommand::List { platform, .. } => (
            Method::GET,
            match platform {
                Some(p) => format!("/deadletters?platform={}", percent_encoded(p)),
                None => "/deadletters".to_owned(),
            },
        ),
        DeadLettersCommand::Replay {
            delivery_id: Some(id),
            ..
        } => (
            Method::POST,
            format!("/deadletters/{}/replay", percent_encoded(id)),
        ),
        DeadLettersCommand::Replay {
            delivery_id: None,
            all: true,
            platform,
        } => (
            Method::POST,
            match platform {
                Some(p) => format!("/deadletters/replay?platform={}", percent_encoded(p)),
                None => "/deadletters/replay".to_owned(),
            },
        ),
        DeadLettersCommand::Replay { .. } => {
            eprintln!("error: name a delivery id, or --all (with --platform P for one platform)");
            return Ok(ExitCode::from(2));
        }
        DeadLettersCommand::Drop { delivery_id } => (
            Method::DELETE,
            format!("/deadletters/{}", percent_encoded(delivery_id)),
        ),
    };
    let answer: Value = match client.blocking(client.request(method, &path, None::<&()>))? {
        Ok(answer) => answer,
        Err(refusal) => return Ok(super::remote::refused(&refusal, "")),
    };
    match command {
        DeadLettersCommand::List { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&answer["dead_letters"])?);
        }
        DeadLettersCommand::List { .. } => {
            let letters = answer["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for d in letters {
                println!(
                    "{}  {}/{}  {} attempts  {}",
                    d["delivery_id"].as_str().unwrap_or(""),
                    d["platform"].as_str().unwrap_or(""),
                    d["chat_id"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["last_error"].as_str().unwrap_or("")
                );
            }
        }
        DeadLettersCommand::Replay {
            delivery_id: Some(id),
            ..
        } => println!("{id} queued again"),
        DeadLettersCommand::Replay { .. } => {
            println!("{} dead letters queued again", answer["replayed"]);
        }
        DeadLettersCommand::Drop { delivery_id } => println!("{delivery_id} dropped"),
    }
    Ok(ExitCode::SUCCESS)
}
