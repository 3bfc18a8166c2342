//! Replies: the answer to a request published by `POST /query/…`, carried from the
//! handler's commit (`Effects::reply`) back to the request that waits for it.
//!
//! Offered by both brokers: the memory broker within its process, the Redis broker from
//! any process to the one whose request waits.

use tokio::sync::oneshot;

/// What a reply carries: the handler's `reply(data)`, or a safe message when it failed.
pub type ReplyResult = Result<serde_json::Value, String>;

/// A broker that carries replies to waiting requests.
pub trait Replies: Send + Sync {
    /// The address a request awaited under `id` carries (its `replyto` extension): the
    /// id itself on one process; on Redis it also names the waiting process.
    fn reply_address(&self, id: &str) -> String;

    /// Starts waiting for the reply to request `id`. The receiver resolves when a commit
    /// carries `Reply { to: reply_address(id), .. }`.
    fn await_reply(&self, id: &str) -> oneshot::Receiver<ReplyResult>;

    /// Stops waiting for a reply (the request timed out, or its publish failed).
    fn forget_reply(&self, id: &str);
}
