//! `edaflow dead list|replay|drop`: the dead letters of a running instance, through its
//! admin routes (`GET /admin/dead`, `POST /admin/dead/replay`, `POST /admin/dead/drop`).
//! Selection rules (an origin, ids, or `--all`) are the server's; this module sends what
//! was asked and prints the answer.

use bytes::Bytes;

use super::{render, Error};
use crate::cli::DeadAction;
use crate::client::{percent_encode, Target};
use crate::event::Event;

/// `edaflow dead ACTION`.
pub(super) async fn dead(action: DeadAction) -> Result<(), Error> {
    match action {
        DeadAction::List {
            origin,
            json,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let path = match &origin {
                Some(o) => format!("/admin/dead?origin={}", percent_encode(o)),
                None => "/admin/dead".to_owned(),
            };
            let body = target.call("GET", &path, None, Bytes::new()).await?;
            let letters: Vec<Event> = serde_json::from_slice(&body).unwrap_or_default();
            if json {
                print!("{}", render::dead_letters_json(&letters));
            } else {
                print!("{}", render::dead_letters(&letters));
            }
            Ok(())
        }
        DeadAction::Replay {
            origin,
            ids,
            delay,
            all,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let body =
                serde_json::json!({ "origin": origin, "ids": ids, "all": all, "delay": delay })
                    .to_string();
            let answer = target
                .call(
                    "POST",
                    "/admin/dead/replay",
                    Some("application/json"),
                    Bytes::from(body),
                )
                .await?;
            let report: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            println!("replayed {}", report["replayed"]);
            if let Some(failed) = report["failed"].as_array().filter(|f| !f.is_empty()) {
                for f in failed {
                    println!(
                        "not replayed {}: {}",
                        f["id"].as_str().unwrap_or(""),
                        f["error"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        DeadAction::Drop {
            origin,
            ids,
            all,
            remote,
        } => {
            let target = Target::parse(&remote.url, remote.token.clone())?;
            let body = serde_json::json!({ "origin": origin, "ids": ids, "all": all }).to_string();
            let answer = target
                .call(
                    "POST",
                    "/admin/dead/drop",
                    Some("application/json"),
                    Bytes::from(body),
                )
                .await?;
            let report: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            println!("dropped {}", report["dropped"]);
            Ok(())
        }
    }
}
