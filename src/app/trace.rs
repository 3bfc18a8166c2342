//! `edaflow trace`: reads one journey (`GET /trace/ID`) from a running instance and prints
//! it as a tree (`render::render_trace`).

use super::{render, Error};
use crate::cli::Remote;
use crate::client::percent_encode;
use crate::runtime::history::TraceEntry;

/// `edaflow trace CORRELATION_ID`.
pub(super) async fn trace(correlation: &str, remote: &Remote) -> Result<(), Error> {
    let target = remote.target()?;
    let path = format!("/trace/{}", percent_encode(correlation));
    let entries: Vec<TraceEntry> = target
        .call_json("GET", &path, None, "a JSON array of the journey's events")
        .await?;
    render::emit(&render::render_trace(&entries))
}
