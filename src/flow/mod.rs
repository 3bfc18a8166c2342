//! Flow files: TOML in, a validated and immutable `FlowSet` out, with every problem as a
//! diagnostic that points at the offending value.
//!
//! No tokio and no Rhai here: scripts are read as text (the `script` module compiles
//! them), and nothing runs. `model` is the data, `load` reads and checks it, `pattern`
//! owns topic syntax, `diagnostic` the error types, `duration` the `"250ms"` strings, `api_token` the
//! HTTP producer's token (kept out of logs).

pub mod api_token;
pub mod diagnostic;
pub mod diff;
pub mod duration;
pub mod graph;
pub mod lint;
pub mod load;
pub mod model;
pub mod pattern;

pub use diagnostic::{FlowError, FlowReport, FlowWarning};
pub use load::{load, Loaded};
pub use model::*;
pub use pattern::{validate_topic, TopicPattern};
