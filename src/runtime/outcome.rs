//! What a reload reports: `ReloadOutcome` (for `/healthz`, the log and `POST /admin/reload`)
//! and the `Backlog` of each component a reload took away. Built from the `FlowDiff` before
//! anything is touched; `apply` adds the backlogs as it moves or drops them.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::Serialize;
use tracing::{info, warn};

use crate::broker::Removed;
use crate::flow::diff::{ComponentKey, FlowDiff};

/// The outcome of the last reload, for `/healthz` and the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub ok: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Subscribers whose script was swapped in place.
    pub swapped: Vec<String>,
    pub took_ms: f64,
    pub message: Option<String>,
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    /// What became of the work waiting for each component removed or renamed (only those
    /// that had some).
    pub backlogs: Vec<Backlog>,
}

/// The work a removed or renamed component still had when a reload took it away.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Backlog {
    /// `subscribers.NAME`, `relays.NAME`, `queues.NAME` or `chains.NAME`.
    pub component: String,
    /// The component that took the work over (`renamed_from`, or a subscriber's new group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Events or queue items handed to `to`.
    pub moved: u64,
    /// Events or queue items dropped with the component.
    pub dropped: u64,
}

impl ReloadOutcome {
    /// What applying `diff` as `generation` does, listed by kind (queues first) and name;
    /// the backlogs come as they are moved.
    pub(crate) fn of(diff: &FlowDiff, generation: u64) -> ReloadOutcome {
        let names = |keys: &BTreeSet<ComponentKey>| -> Vec<String> {
            keys.iter().map(ComponentKey::to_string).collect()
        };
        ReloadOutcome {
            generation,
            ok: true,
            added: names(&diff.added),
            changed: names(&diff.changed),
            removed: names(&diff.removed),
            swapped: names(&diff.swapped),
            took_ms: 0.0,
            message: None,
            at: SystemTime::now(),
            backlogs: Vec::new(),
        }
    }

    /// A reload that did not apply: `generation` keeps running, and `message` says why.
    pub(crate) fn failed(generation: u64, message: &str) -> ReloadOutcome {
        ReloadOutcome {
            ok: false,
            message: Some(message.to_owned()),
            ..ReloadOutcome::of(&FlowDiff::default(), generation)
        }
    }

    /// Records what removing `component` did with its work, and logs it: a drop at warn
    /// level, since those events are gone.
    pub(crate) fn backlog(
        &mut self,
        component: &ComponentKey,
        to: Option<&ComponentKey>,
        removed: Removed,
    ) {
        if removed.is_empty() {
            return;
        }
        let component = component.to_string();
        let to = to.map(ComponentKey::to_string);
        if removed.dropped > 0 {
            warn!(
                component,
                dropped = removed.dropped,
                moved = removed.moved,
                "{component} was removed with {} waiting events or items; they are dropped (to keep a backlog, give its successor `renamed_from`)",
                removed.dropped
            );
        }
        if removed.moved > 0 {
            info!(
                component,
                to = to.as_deref().unwrap_or(""),
                moved = removed.moved,
                "moved the backlog of {component} to its successor"
            );
        }
        self.backlogs.push(Backlog {
            component,
            to,
            moved: removed.moved,
            dropped: removed.dropped,
        });
    }
}

mod unix_ms {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
}
