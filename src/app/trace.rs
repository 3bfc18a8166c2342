//! `edaflow trace`: reads one journey (`GET /trace/ID`) from a running instance and prints
//! it as a tree (`render::render_trace`), or as JSON (`json::TraceJson`).

use super::{json, render, Error};
use crate::cli::{OutputFormat, Remote};
use crate::client::percent_encode;
use crate::runtime::history::TraceEntry;

/// `edaflow trace CORRELATION_ID`.
pub(super) async fn trace(
    correlation: &str,
    format: OutputFormat,
    remote: &Remote,
) -> Result<(), Error> {
    let target = remote.target()?;
    let path = format!("/trace/{}", percent_encode(correlation));
    let entries: Vec<TraceEntry> = target
        .call_json("GET", &path, None, "a JSON array of the journey's events")
        .await?;
    match format {
        OutputFormat::Text => render::emit(&render::render_trace(&entries)),
        OutputFormat::Json => {
            render::emit(&json::to_text(&json::TraceJson::of(correlation, &entries)))
        }
    }
}
