//! The one reload path: load → validate → diff → apply → report, whatever asked for it
//! (the file watcher, SIGHUP, `POST /admin/reload` or a save in the console). `Reloader`
//! owns the runtime and handles one `ReloadRequest` at a time, so reloads never overlap.
//!
//! An invalid edit changes nothing: the diagnostic is printed and the running generation
//! stays. Identical content is a no-op. A failure while applying restores the previous
//! generation and says so.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::broker::Broker;
use crate::flow::diagnostic::{problems, render, Problem};
use crate::runtime::{prepare_after, Prepared, ReloadOutcome, Runtime};

/// Why a reload was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadCause {
    /// Files changed (the paths the watcher saw, after debouncing).
    Files(Vec<PathBuf>),
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Http,
    /// The console saved this file.
    Console(PathBuf),
    /// The check right after startup, for edits made while starting.
    Startup,
}

/// A request to reload, with an optional place to send the result.
#[derive(Debug)]
pub struct ReloadRequest {
    pub cause: ReloadCause,
    /// When the change was noticed (for the save-to-live latency).
    pub noticed: Instant,
    pub reply: Option<oneshot::Sender<ReloadReport>>,
}

impl ReloadRequest {
    /// A request without a reply channel.
    pub fn new(cause: ReloadCause) -> ReloadRequest {
        ReloadRequest {
            cause,
            noticed: Instant::now(),
            reply: None,
        }
    }
}

/// Where reload requests go, once something owns reloads (`Runtime::set_reload_channel`):
/// how `POST /admin/reload` reaches the one reload path. Cheap to clone; every clone sends
/// to the same place.
#[derive(Clone, Debug, Default)]
pub struct ReloadHandle(Arc<OnceLock<mpsc::Sender<ReloadRequest>>>);

impl ReloadHandle {
    /// Sends requests to `requests` from now on; only the first call counts.
    pub(crate) fn connect(&self, requests: mpsc::Sender<ReloadRequest>) {
        let _ = self.0.set(requests);
    }

    /// Asks for a reload for `cause`; its report comes on the returned channel. `None`
    /// when nothing owns reloads (an embedded runtime, `edaflow test`) or its owner is gone.
    pub async fn request(&self, cause: ReloadCause) -> Option<oneshot::Receiver<ReloadReport>> {
        let requests = self.0.get()?;
        let (reply, report) = oneshot::channel();
        let request = ReloadRequest {
            cause,
            noticed: Instant::now(),
            reply: Some(reply),
        };
        requests.send(request).await.ok()?;
        Some(report)
    }
}

/// What a reload did.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadReport {
    /// A new generation runs.
    Applied(ReloadOutcome),
    /// Nothing changed; the generation stays.
    Unchanged { generation: u64 },
    /// The new files are invalid; the generation stays. `diagnostic` is the rendered
    /// report, `problems` the same errors as data (file, line, code, message).
    Invalid {
        generation: u64,
        diagnostic: String,
        problems: Vec<Problem>,
    },
    /// Applying failed; the previous generation was restored.
    RolledBack { generation: u64, error: String },
}

/// Owns the runtime and applies reloads one at a time.
pub struct Reloader<B: Broker> {
    runtime: Runtime<B>,
    paths: Vec<PathBuf>,
}

impl<B: Broker> Reloader<B> {
    /// A reloader for a runtime that was started from `paths`.
    pub fn new(runtime: Runtime<B>, paths: Vec<PathBuf>) -> Reloader<B> {
        Reloader { runtime, paths }
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime<B> {
        &self.runtime
    }

    /// Gives the runtime back (for shutdown).
    pub fn into_runtime(self) -> Runtime<B> {
        self.runtime
    }

    /// The files the running generation depends on.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.runtime
            .current()
            .map(|c| c.files.clone())
            .unwrap_or_default()
    }

    /// Handles one request: reload from disk and report.
    pub async fn handle(&mut self, request: ReloadRequest) -> ReloadReport {
        let started = Instant::now();
        let report = match prepare_after(&self.paths, self.runtime.current()) {
            Ok(next) => self.apply(next, started, &request.cause).await,
            Err(report) => {
                let generation = self.runtime.generation();
                let diagnostic = render(&report, 100);
                eprintln!("{diagnostic}");
                warn!(generation, cause = ?request.cause, "invalid flows; keeping generation {generation}");
                self.record_failure(generation, "invalid flows: kept the running generation");
                ReloadReport::Invalid {
                    generation,
                    diagnostic,
                    problems: problems(&report),
                }
            }
        };
        // Nobody listening (no console open) is fine.
        let _ = self.runtime.status().reports.send(report.clone());
        if let Some(reply) = request.reply {
            let _ = reply.send(report.clone());
        }
        report
    }

    /// Applies an already prepared set (the reload path after loading).
    async fn apply(
        &mut self,
        next: Prepared,
        started: Instant,
        cause: &ReloadCause,
    ) -> ReloadReport {
        let generation = self.runtime.generation();
        if self.runtime.is_current(&next) {
            if *cause == ReloadCause::Startup {
                debug!(generation, "flows unchanged since startup");
            } else {
                info!(generation, "flows unchanged; nothing to reload");
            }
            return ReloadReport::Unchanged { generation };
        }
        for warning in &next.warnings {
            eprintln!("{}", render(warning, 100));
        }
        let restart_needed = self.process_settings_changed(&next);
        let previous = self.runtime.current().cloned();
        match self.runtime.apply(next).await {
            Ok(mut outcome) => {
                outcome.took_ms = started.elapsed().as_secs_f64() * 1000.0;
                if let Some(setting) = restart_needed {
                    outcome.message = Some(format!(
                        "{setting} changed: restart edaflow for it to take effect"
                    ));
                    warn!(
                        setting,
                        "this setting cannot change while running; restart edaflow to apply it"
                    );
                }
                self.runtime
                    .metrics()
                    .reloads
                    .fetch_add(1, Ordering::Relaxed);
                self.runtime.set_last_reload(outcome.clone());
                info!(
                    generation = outcome.generation,
                    added = ?outcome.added,
                    changed = ?outcome.changed,
                    removed = ?outcome.removed,
                    swapped = ?outcome.swapped,
                    took_ms = format!("{:.2}", outcome.took_ms),
                    "flows reloaded"
                );
                ReloadReport::Applied(outcome)
            }
            Err(e) => {
                let message = e.to_string();
                error!(error = %message, "reload failed while applying; rolling back to generation {generation}");
                if let Some(previous) = previous {
                    if let Err(e) = self.runtime.restore(previous, generation).await {
                        error!(error = %e, "rollback incomplete: some components of generation {generation} could not restart");
                    }
                }
                self.record_failure(generation, &format!("apply failed, rolled back: {message}"));
                ReloadReport::RolledBack {
                    generation,
                    error: message,
                }
            }
        }
    }

    fn record_failure(&self, generation: u64, message: &str) {
        self.runtime
            .metrics()
            .reload_failures
            .fetch_add(1, Ordering::Relaxed);
        self.runtime
            .set_last_reload(ReloadOutcome::failed(generation, message));
    }

    /// Settings that only take effect at start: the broker URL.
    fn process_settings_changed(&self, next: &Prepared) -> Option<&'static str> {
        let current = self.runtime.current()?;
        let brokers = |p: &Prepared| {
            p.flows
                .files
                .iter()
                .map(|f| f.broker.clone())
                .collect::<Vec<_>>()
        };
        (brokers(current) != brokers(next)).then_some("[flow] broker")
    }
}
