//! What a broker may offer beyond the core contract, one small trait per capability.
//!
//! `Broker` reaches each through an accessor returning `Option` (`Broker::retention`,
//! `Broker::wire`, `Broker::history`, `Broker::chains`, `Broker::processes`, …): a broker that offers it answers `Some`, and
//! callers write `if let Some(x) = broker.x()` rather than checking a flag and calling a
//! method that does nothing on the other broker. These traits are object safe, so that
//! the accessors can hand out `&dyn` views of the broker itself; their asynchronous
//! methods return boxed futures: one allocation per call, small next to the network round
//! trip each of them makes.
//!
//! This module declares the capabilities; it must not implement them (each broker does,
//! in its own module).

pub mod accept;
pub mod chains;
pub mod history;
pub mod in_order;
pub mod placement;
pub mod processes;
pub mod read_ahead;
pub mod replies;
pub mod retention;
pub mod retry;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

/// The future a capability's asynchronous method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
