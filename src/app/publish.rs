//! `edaflow publish` and `edaflow query`: send JSON to a running instance's HTTP producer
//! and print its answer (the new event's id, or the query's reply). The JSON is checked
//! here, before anything is sent; an answer that is not what the server sends is an error.

use std::io::BufRead;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{render, Error};
use crate::cli::Remote;
use crate::client::{decode, Target};

/// What `POST /topics/{topic}` answers with.
#[derive(Deserialize)]
struct Accepted {
    id: String,
}

/// `edaflow publish TOPIC JSON`, or one event per stdin line with `-`.
pub(super) async fn publish(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let path = format!("/topics/{topic}");
    if data != "-" {
        check_json(data, 1)?;
        return send(&target, &path, data.to_owned()).await;
    }
    let stdin = std::io::stdin();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|source| Error::Stdin { source })?;
        if line.trim().is_empty() {
            continue;
        }
        check_json(&line, i + 1)?;
        send(&target, &path, line).await?;
    }
    Ok(())
}

/// Publishes one event and prints the id the server gave it.
async fn send(target: &Target, path: &str, body: String) -> Result<(), Error> {
    let accepted: Accepted = target
        .call_json(
            "POST",
            path,
            Some(body),
            "a JSON object with the event's `id`",
        )
        .await?;
    render::emit(&format!("{}\n", accepted.id))
}

/// `text` must be one JSON value; `line` numbers it for the error.
fn check_json(text: &str, line: usize) -> Result<(), Error> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(drop)
        .map_err(|source| Error::BadJson { line, source })
}

/// `edaflow query TOPIC JSON`: prints the reply as the server wrote it.
pub(super) async fn query(topic: &str, data: &str, remote: &Remote) -> Result<(), Error> {
    check_json(data, 1)?;
    let target = remote.target()?;
    let path = format!("/query/{topic}");
    let answer = target
        .call(
            "POST",
            &path,
            Some("application/json"),
            Bytes::from(data.to_owned()),
        )
        .await?;
    decode::<IgnoredAny>(
        &target.describe("POST", &path),
        "the reply as JSON",
        &answer,
    )?;
    render::emit(&format!("{}\n", String::from_utf8_lossy(&answer)))
}
