//! `edaflow trace`: reads one journey (`GET /trace/ID`) from a running instance and prints
//! it as a tree (`render::render_trace`).

use bytes::Bytes;

use super::{render, Error};
use crate::cli::Remote;
use crate::client::{percent_encode, Target};
use crate::runtime::history::TraceEntry;

/// `edaflow trace CORRELATION_ID`.
pub(super) async fn trace(correlation: &str, remote: &Remote) -> Result<(), Error> {
    let target = Target::parse(&remote.url, remote.token.clone())?;
    let body = target
        .call(
            "GET",
            &format!("/trace/{}", percent_encode(correlation)),
            None,
            Bytes::new(),
        )
        .await?;
    let entries: Vec<TraceEntry> = serde_json::from_slice(&body).unwrap_or_default();
    print!("{}", render::render_trace(&entries));
    Ok(())
}
