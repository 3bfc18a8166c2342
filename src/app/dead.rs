//! `edaflow dead list|replay|drop`: the dead letters of a running instance, through its
//! admin routes (`GET /admin/dead`, `POST /admin/dead/replay`, `POST /admin/dead/drop`).
//! Selection rules (an origin, ids, or `--all`) are the server's; this module sends what
//! was asked and prints the answer, which must have the shape the server sends.

use std::fmt::Write as _;

use serde::Deserialize;

use super::{render, Error};
use crate::cli::{DeadAction, Remote};
use crate::client::percent_encode;
use crate::event::Event;

/// What `POST /admin/dead/replay` answers with.
#[derive(Deserialize)]
struct ReplayReport {
    replayed: u64,
    /// Dead letters that could not be replayed (they stay in the store).
    failed: Vec<ReplayFailure>,
}

#[derive(Deserialize)]
struct ReplayFailure {
    id: String,
    error: String,
}

/// What `POST /admin/dead/drop` answers with.
#[derive(Deserialize)]
struct DropReport {
    dropped: u64,
}

/// `edaflow dead ACTION`.
pub(super) async fn dead(action: DeadAction) -> Result<(), Error> {
    match action {
        DeadAction::List {
            origin,
            json,
            remote,
        } => list(origin.as_deref(), json, &remote).await,
        DeadAction::Replay {
            origin,
            ids,
            delay,
            all,
            remote,
        } => {
            let body =
                serde_json::json!({ "origin": origin, "ids": ids, "all": all, "delay": delay });
            replay(body.to_string(), &remote).await
        }
        DeadAction::Drop {
            origin,
            ids,
            all,
            remote,
        } => {
            let body = serde_json::json!({ "origin": origin, "ids": ids, "all": all });
            drop_letters(body.to_string(), &remote).await
        }
    }
}

/// `edaflow dead list [ORIGIN] [--json]`.
async fn list(origin: Option<&str>, json: bool, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let path = match origin {
        Some(o) => format!("/admin/dead?origin={}", percent_encode(o)),
        None => "/admin/dead".to_owned(),
    };
    let letters: Vec<Event> = target
        .call_json(
            "GET",
            &path,
            None,
            "a JSON array of dead letters (CloudEvents)",
        )
        .await?;
    if json {
        render::emit(&render::dead_letters_json(&letters))
    } else {
        render::emit(&render::dead_letters(&letters))
    }
}

/// `edaflow dead replay …`: `body` is the selection.
async fn replay(body: String, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let report: ReplayReport = target
        .call_json(
            "POST",
            "/admin/dead/replay",
            Some(body),
            "a JSON object with `replayed` and `failed`",
        )
        .await?;
    let mut text = format!("replayed {}\n", report.replayed);
    for failure in &report.failed {
        let _ = writeln!(text, "not replayed {}: {}", failure.id, failure.error);
    }
    render::emit(&text)
}

/// `edaflow dead drop …`: `body` is the selection.
async fn drop_letters(body: String, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let report: DropReport = target
        .call_json(
            "POST",
            "/admin/dead/drop",
            Some(body),
            "a JSON object with `dropped`",
        )
        .await?;
    render::emit(&format!("dropped {}\n", report.dropped))
}
