//! The sandbox limits, set in one place. Rhai's own defaults are unlimited; every engine
//! edaflow builds goes through `harden`.

use std::time::Duration;

use rhai::Engine;

/// Bounds on one script run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Rhai operations per run (an infinite loop fails after this many).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Expression nesting at global level and inside functions.
    pub max_expr_depth: (usize, usize),
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
    /// Modules one script may import.
    pub max_modules: usize,
    /// Wall-clock time of one run (checked every few hundred operations).
    pub wall_time: Duration,
    /// Events one run may emit.
    pub max_emits: usize,
    /// Bytes one run may hold at once, whatever it builds (see `script::memory`).
    pub max_memory: usize,
    /// How long a handler run may hold one of the runtime's worker threads (which also
    /// serve HTTP) before it is moved to a thread of its own (see `runtime::subscriber`).
    pub inline_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_expr_depth: (64, 32),
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_modules: 32,
            wall_time: Duration::from_millis(500),
            max_emits: 10_000,
            max_memory: 64 << 20,
            inline_time: Duration::from_millis(1),
        }
    }
}

/// Applies the limits to an engine, and closes the doors a handler must not open:
/// `eval` (code from data) is disabled; the engine has no file, network or process API.
pub fn harden(engine: &mut Engine, limits: &Limits) {
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(limits.max_modules);
    engine.disable_symbol("eval");
}
