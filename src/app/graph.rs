//! `edaflow graph`: draws the declared wiring of flows (Mermaid, dot or JSON), annotated with the
//! event counts of a running instance (its `/metrics`) with `--live URL`. An answer that is
//! not edaflow's metrics is an error, not a graph without counts.

use std::path::PathBuf;

use bytes::Bytes;

use super::flow_files::load;
use super::{render, Error};
use crate::cli::GraphFormatArg;
use crate::client::{BearerToken, ClientError, Target};
use crate::flow::graph::{GraphFormat, LiveCounts};

/// `edaflow graph FLOW... [--format] [--live URL]`.
pub(super) fn graph(
    flows: &[PathBuf],
    format: GraphFormatArg,
    live: Option<&str>,
    token: Option<BearerToken>,
) -> Result<(), Error> {
    let prepared = load(flows)?;
    let counts = match live {
        None => LiveCounts::default(),
        Some(url) => super::on_client_runtime(live_counts(url, token))?,
    };
    let format = match format {
        GraphFormatArg::Mermaid => GraphFormat::Mermaid,
        GraphFormatArg::Dot => GraphFormat::Dot,
        GraphFormatArg::Json => GraphFormat::Json,
    };
    render::emit(&crate::flow::graph::render(
        &prepared.flows,
        &prepared.facts(),
        format,
        &counts,
    ))
}

/// Reads the per-topic and per-subscriber counts of a running instance from `/metrics`.
async fn live_counts(url: &str, token: Option<BearerToken>) -> Result<LiveCounts, Error> {
    let target = Target::parse(url, token)?;
    let body = target.call("GET", "/metrics", None, Bytes::new()).await?;
    let text = String::from_utf8_lossy(&body);
    // Every edaflow instance reports some `edaflow_…` series, even before its first event.
    if !text.lines().any(|line| line.starts_with("edaflow_")) {
        let expected = "Prometheus text with edaflow_ series";
        return Err(ClientError::unexpected("GET /metrics", expected, &body, None).into());
    }
    let mut counts = LiveCounts::default();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let label = |prefix: &str| {
            series
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("\"}"))
                .map(str::to_owned)
        };
        if let Some(topic) = label("edaflow_topic_events_in_total{topic=\"") {
            counts.topics.insert(topic, value);
        } else if let Some(subscriber) = label("edaflow_subscriber_handled_total{subscriber=\"") {
            counts.subscribers.insert(subscriber, value);
        }
    }
    Ok(counts)
}
