//! Flow files: TOML in, a validated and immutable `FlowSet` out, with every problem as a
//! diagnostic that points at the offending value.
//!
//! No tokio and no Rhai here: scripts are read as text (the `script` module compiles
//! them), and nothing runs. `model` is the data, `load` reads and checks it, `lint` judges
//! what needs the compiled scripts too, `diff` says what a reload changes, `diagnostic`
//! holds the error types, `graph` draws the wiring, `api_token` the HTTP producer's token
//! (kept out of logs), `env` the `${VAR}` references some values may hold. Topic syntax (`crate::pattern`) and duration strings
//! (`crate::duration`) are leaf modules of their own, re-exported here.

pub mod api_token;
pub mod asyncapi;
pub mod diagnostic;
pub mod diff;
pub mod env;
pub mod graph;
pub mod lint;
pub mod load;
pub mod model;
pub mod schema;

pub use crate::duration;
pub use crate::pattern::{self, validate_topic, TopicPattern};
pub use diagnostic::{FlowError, FlowReport, FlowWarning};
pub use load::{load, Loaded};
pub use model::*;
