//! Commits in order: the runs one worker made of the entries its reader held, committed
//! together in one round trip, in order, stopping at the first the broker refuses.
//!
//! Offered by the Redis broker on one shard, where each commit is a round trip and one
//! worker's commits would otherwise each pay theirs. A worker that handles several entries
//! in a row (see `Consumer::next_row`) commits their runs this way; what this commit
//! leaves uncommitted (refused, or never tried), the worker commits one by one, in order,
//! as it commits any run. The memory broker's commit crosses no network; it offers none.

use super::BoxFuture;
use crate::broker::{BrokerError, Delivery, Effects};

/// A broker that commits several runs of one worker as one.
pub trait CommitInOrder: Send + Sync {
    /// Commits `runs` (each a delivery and the effects of its run, as
    /// `RetryableCommit::commit_retryable` takes them) in order, each all or nothing as a
    /// commit of its own is. Answers one result per run tried: every one `Ok` but perhaps
    /// the last, the refusal that stopped the rest. Runs past the answers were not
    /// committed: after a refusal, and from the first run this way cannot carry (one
    /// that must also go elsewhere than the broker's one script run).
    ///
    /// # Errors
    /// The round trip failed: which runs landed is unknown (commits are idempotent, so
    /// committing each again applies nothing twice).
    fn commit_in_order<'a>(
        &'a self,
        runs: &'a [(&'a Delivery, &'a Effects)],
    ) -> BoxFuture<'a, Result<Vec<Result<(), BrokerError>>, BrokerError>>;
}
