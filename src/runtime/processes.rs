//! This process in the registry of the processes sharing its broker (see the broker's
//! `Processes` capability): who it is (`ThisProcess`), the task that keeps its entry
//! fresh (`Heartbeat`), and the list the console's health page and `/healthz` show
//! (`list_processes`).
//!
//! The registry is informational: a heartbeat or a listing that fails is logged at debug
//! and changes nothing else (the entries in the broker go stale, and are dropped after
//! `GONE_AFTER`). A broker without a registry (the memory broker, one process) lists this
//! process alone. This module must not hold up a reload or a stop for the registry's sake:
//! every call to it is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::broker::capability::processes::{new_process_id, HEARTBEAT_EVERY};
use crate::broker::{Broker, ProcessInfo};
use crate::runtime::Status;

/// How long a stopping runtime waits for its entry to be removed from the registry; past
/// it, the entry is dropped by the next listing after `GONE_AFTER`.
pub const REGISTRY_STOP: Duration = Duration::from_millis(500);

/// Who this process is, for the registry: what stays for its whole life, and where its
/// HTTP producers listen (shared with the runtime, which fills it in as it binds them).
#[derive(Debug)]
pub struct ThisProcess {
    id: String,
    host: String,
    pid: u32,
    started_at: String,
    http: Arc<Mutex<BTreeMap<String, SocketAddr>>>,
}

impl ThisProcess {
    /// This process on `broker`: its id is the broker's registry id when it keeps a
    /// registry (on Redis, what its consumer names start with), else a new one.
    pub(crate) fn new<B: Broker>(
        broker: &B,
        http: Arc<Mutex<BTreeMap<String, SocketAddr>>>,
    ) -> ThisProcess {
        let id = broker
            .processes()
            .map_or_else(new_process_id, |registry| registry.process_id().to_owned());
        ThisProcess {
            id,
            host: crate::broker::capability::processes::host_name(),
            pid: std::process::id(),
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            http,
        }
    }

    /// The process's id in the registry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its entry as of now, running `generation` (`this` set, seen now).
    pub fn info(&self, generation: u64) -> ProcessInfo {
        let http = self
            .http
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(SocketAddr::to_string)
            .collect();
        ProcessInfo {
            id: self.id.clone(),
            host: self.host.clone(),
            pid: self.pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            generation,
            started_at: self.started_at.clone(),
            http,
            seen_ms_ago: 0,
            this: true,
        }
    }
}

/// Every process sharing `broker`, `this` first (flagged `self`, as it is now), then the
/// others by start time, each as its last heartbeat left it. Lists `this` alone when the
/// broker keeps no registry, or when it cannot be read (logged at debug). Takes at most
/// the broker's response timeout.
pub async fn list_processes<B: Broker>(broker: &B, this: &ProcessInfo) -> Vec<ProcessInfo> {
    let me = ProcessInfo {
        seen_ms_ago: 0,
        this: true,
        ..this.clone()
    };
    let mut others = match broker.processes() {
        None => Vec::new(),
        Some(registry) => registry.list().await.unwrap_or_else(|e| {
            debug!(error = %e, "the process registry could not be read; listing this process alone");
            Vec::new()
        }),
    };
    others.retain(|p| p.id != me.id);
    others.sort_by(|a, b| (&a.started_at, &a.id).cmp(&(&b.started_at, &b.id)));
    std::iter::once(me).chain(others).collect()
}

/// The task keeping this process's entry fresh: a heartbeat every `HEARTBEAT_EVERY`, and
/// one at once when nudged (a new generation). Stopping it, or dropping it, removes the
/// entry.
pub(crate) struct Heartbeat {
    nudge: Arc<Notify>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts the heartbeat of the process `status` describes, or `None` when `broker`
    /// keeps no registry.
    pub(crate) fn start<B: Broker>(broker: B, status: Arc<Status>) -> Option<Heartbeat> {
        broker.processes()?;
        let nudge = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let span = tracing::info_span!("process_registry", component = "processes", process = %status.process.id());
        // Tracked by ownership: `Heartbeat` holds its handle, and stops it when dropped.
        let task = tokio::spawn(beat(broker, status, nudge.clone(), stop.clone()).instrument(span));
        Some(Heartbeat {
            nudge,
            stop,
            task: Some(task),
        })
    }

    /// Refreshes the entry now (after a reload, so that the registry shows the new
    /// generation without waiting for the next beat).
    pub(crate) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Stops beating and starts removing the entry, without waiting.
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }

    /// Stops beating and removes the entry, waiting at most `REGISTRY_STOP` for it (the
    /// removal, bounded the same, goes on without the wait past that).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(REGISTRY_STOP, task).await.is_err() {
                debug!("the process registry did not answer in time; the entry is dropped once it is stale");
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The heartbeat's loop (see `Heartbeat`): beats until `stop`, then removes the entry.
async fn beat<B: Broker>(
    broker: B,
    status: Arc<Status>,
    nudge: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(registry) = broker.processes() else {
        return;
    };
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = every.tick() => {}
            () = nudge.notified() => {}
        }
        let info = status.this_process();
        // A heartbeat still waiting when the stop comes is dropped: the removal that
        // follows goes to Redis after it, on the same connection, so it cannot bring the
        // entry back.
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            beaten = registry.heartbeat(&info) => {
                if let Err(e) = beaten {
                    debug!(error = %e, "heartbeat failed; the process's entry goes stale until one lands");
                }
            }
        }
    }
    match tokio::time::timeout(REGISTRY_STOP, registry.deregister(status.process.id())).await {
        Ok(Ok(())) => debug!("removed from the process registry"),
        Ok(Err(e)) => {
            debug!(error = %e, "could not leave the process registry; the entry is dropped once it is stale")
        }
        Err(_) => debug!(
            "the process registry did not answer in time; the entry is dropped once it is stale"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{MemoryBroker, MemoryOptions};

    #[tokio::test]
    async fn without_a_registry_a_process_lists_itself_alone() {
        let broker = MemoryBroker::new(MemoryOptions::default());
        let http = Arc::new(Mutex::new(BTreeMap::from([(
            "api".to_owned(),
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        )])));
        let this = ThisProcess::new(&broker, http);
        let listed = list_processes(&broker, &this.info(3)).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        let me = &listed[0];
        assert!(me.this);
        assert_eq!(me.id, this.id());
        assert_eq!(me.generation, 3);
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.http, ["127.0.0.1:8080"]);
        assert!(humantime::parse_rfc3339(&me.started_at).is_ok(), "{me:?}");
        assert_eq!(serde_json::to_value(me).expect("JSON")["self"], true);
    }
}
