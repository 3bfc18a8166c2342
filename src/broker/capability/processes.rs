//! The process registry: which `edaflow run` processes share the broker now, with their
//! generation and where they listen, for the console's health page and `/healthz`.
//!
//! Each process refreshes its own entry every `HEARTBEAT_EVERY`; an entry not refreshed
//! for `GONE_AFTER` belongs to a process that is gone (killed, cut off), and is removed by
//! whichever process lists the registry then. A process stopping cleanly removes its own.
//! The registry is informational: nothing decides anything from it.
//!
//! Offered by the Redis broker. The memory broker lives in one process, which is the whole
//! list; it offers none.
//!
//! Besides the trait, this module defines what an entry holds (`ProcessInfo`) and how a
//! process id is spelled (`new_process_id`), so that every broker and the runtime agree.

use std::time::Duration;

use super::BoxFuture;
use crate::broker::BrokerError;

/// How often a process refreshes its entry.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How long an entry lasts without a refresh: five missed heartbeats, so that a process
/// whose broker stalls for a moment is not dropped from the list.
pub const GONE_AFTER: Duration = Duration::from_secs(10);

/// A registry of the processes sharing a broker.
pub trait Processes: Send + Sync {
    /// This process's id in the registry, stable for its life (see `new_process_id`). On
    /// Redis it is also what the process's consumer names start with.
    fn process_id(&self) -> &str;

    /// Registers a process, or refreshes its entry (`info.id` names it): the entry is
    /// seen now, by the broker's clock, and replaced by `info`.
    fn heartbeat<'a>(&'a self, info: &'a ProcessInfo) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Removes a process's entry (its clean shutdown). Removing an entry that is not there
    /// is not an error.
    fn deregister<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Every process seen within `GONE_AFTER`, each with `seen_ms_ago` filled in and
    /// `this` false; removes the entries older than that.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ProcessInfo>, BrokerError>>;
}

/// One process in the registry, as the console and `/healthz` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// `{host}-{pid}-{random}` (see `new_process_id`).
    pub id: String,
    /// The machine's host name.
    pub host: String,
    pub pid: u32,
    /// The edaflow version it runs.
    pub version: String,
    /// The generation it runs (its flow set, counted from 1 at its start).
    pub generation: u64,
    /// When it started, RFC 3339 (UTC).
    pub started_at: String,
    /// The addresses its HTTP producers listen on.
    pub http: Vec<String>,
    /// How long ago its entry was last refreshed, ms (0 for the process asking).
    #[serde(default)]
    pub seen_ms_ago: u64,
    /// True for the process that made the list.
    #[serde(rename = "self", default)]
    pub this: bool,
}

/// A new process id, readable and unique: `{host}-{pid}-{10 characters of a ULID}`, the
/// host name kept to letters, digits, `.`, `_` and `-` (at most 63 of them).
pub fn new_process_id() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let ulid = crate::event::new_id();
    // A ULID is 26 ASCII characters: 10 of time, then 16 random; the last 10 are random.
    let random = &ulid[ulid.len().saturating_sub(10)..];
    format!("{host}-{}-{random}", std::process::id())
}

/// This machine's host name (`localhost` when it cannot be read).
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its whole length, which is what is passed;
    // gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return "localhost".to_owned();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_id_names_the_host_and_the_pid() {
        let id = new_process_id();
        let pid = format!("-{}-", std::process::id());
        let (host, random) = id.split_once(&pid).expect("the pid between dashes");
        assert!(!host.is_empty(), "{id}");
        assert!(!host.contains(['/', ' ', '{', '}']), "{id}");
        assert_eq!(random.len(), 10, "{id}");
        assert_ne!(new_process_id(), id, "each id is new");
    }

    #[test]
    fn this_is_spelled_self_in_json() {
        let info = ProcessInfo {
            id: "h-1-x".to_owned(),
            host: "h".to_owned(),
            pid: 1,
            version: "0.1.0".to_owned(),
            generation: 3,
            started_at: "2026-01-01T00:00:00.000Z".to_owned(),
            http: vec!["127.0.0.1:8080".to_owned()],
            seen_ms_ago: 5,
            this: true,
        };
        let json = serde_json::to_value(&info).expect("serialisable");
        assert_eq!(json["self"], true);
        assert!(json.get("this").is_none());
        let back: ProcessInfo = serde_json::from_value(json).expect("readable");
        assert_eq!(back, info);
    }
}
