//! Rhai handlers: compiling scripts once per load, and running them under the sandbox.
//!
//! `ScriptEngine` is the one engine all workers share (Rhai with `sync`): host API
//! registered, limits applied (`limits::harden`), `print`/`debug` routed to tracing, and no
//! module resolution at run time: `compile` embeds every `import` into the AST, resolving
//! paths against the flow file's folder and recording them so the watcher can follow them.
//! `run` evaluates a compiled script for one event and returns what it asked for; effects
//! are committed by the runtime, never here.

pub mod convert;
pub mod facts;
pub mod host;
pub mod limits;
pub mod memory;
pub mod stack;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::module_resolvers::{DummyModuleResolver, FileModuleResolver, ModuleResolver};
use rhai::{Dynamic, Engine, EvalAltResult, Module, OptimizationLevel, Position, Scope, AST};

type SharedModule = Arc<Module>;

use crate::event::Event;
use crate::flow::diagnostic::{source_file, FlowError};
use crate::flow::model::{FlowSet, ScriptSource};

pub use host::{Emitted, Enqueued, ScriptEvent, ScriptOutput, StoreEnv};

pub use limits::Limits;

/// A script compiled once and shared by every worker that runs it.
#[derive(Clone)]
pub struct CompiledScript {
    pub ast: Arc<AST>,
    /// The text it was compiled from.
    pub text: Arc<str>,
    /// The `.rhai` file, for error messages.
    pub path: PathBuf,
    /// Every module file it imports (transitively), for the watcher.
    pub imports: Vec<PathBuf>,
    /// What the script does, for the CQRS lint (`None` for relay filter expressions).
    pub facts: Option<crate::flow::lint::ScriptFacts>,
}

impl std::fmt::Debug for CompiledScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledScript")
            .field("path", &self.path)
            .field("imports", &self.imports)
            .finish_non_exhaustive()
    }
}

/// Why one run of a script failed. The event is retried and then dead-lettered; the
/// runtime goes on.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub enum ScriptError {
    /// The script called `fail(…)` or `throw`, or the host API refused a call.
    #[error("{message}")]
    #[diagnostic(code(edaflow::script::failed))]
    Failed { message: String },
    /// A runtime error (type mismatch, missing function, data too large…).
    #[error("{message} (at {script}:{line}:{column})")]
    #[diagnostic(code(edaflow::script::runtime))]
    Runtime {
        script: String,
        message: String,
        line: usize,
        column: usize,
    },
    /// The run exceeded a sandbox limit (operations, sizes, call depth).
    #[error("script limit exceeded: {message}")]
    #[diagnostic(
        code(edaflow::script::limit),
        help("loops that never end hit this; limits are in `script::limits`")
    )]
    Limit { message: String },
    /// The run took longer than the wall-time limit.
    #[error("script ran longer than {limit_ms} ms")]
    #[diagnostic(code(edaflow::script::wall_time))]
    WallTime { limit_ms: u128 },
    /// The run held more memory than the limit.
    #[error("script used more than {} MiB of memory", limit >> 20)]
    #[diagnostic(
        code(edaflow::script::memory),
        help("data built in one run (strings, arrays, maps, closures) counts; limits are in `script::limits`")
    )]
    Memory { limit: usize },
    /// The script engine panicked during the run (a bug, reported in the log).
    #[error("the script engine failed: {message}")]
    #[diagnostic(code(edaflow::script::panicked))]
    Panicked { message: String },
    /// The run emitted events one hop past the flow set's `max_hops` (a loop of handlers
    /// emitting to each other, most likely): dead-lettered at once, never retried.
    #[error("journey longer than {max} hops: this run's events would be hop {hops}; is there an emit loop?")]
    #[diagnostic(
        code(edaflow::script::hop_limit),
        help("`edaflow validate` warns about subscribers that emit to topics they read; raise `[flow] max_hops` for longer journeys")
    )]
    HopLimit { hops: u32, max: u32 },
    /// The run emitted an event whose data does not match its topic's schema (the topic
    /// sets `validate_emits`): dead-lettered at once, never retried.
    #[error("emitted event on `{topic}` does not match the topic's schema {violation}")]
    #[diagnostic(
        code(edaflow::script::invalid_emit),
        help("the topic's `schema` is checked against what handlers emit because it sets `validate_emits = true`")
    )]
    InvalidEmit {
        topic: String,
        violation: crate::flow::model::SchemaViolation,
    },
    /// The run held a runtime thread past `Limits::inline_time`; it is run again on a
    /// thread of its own (never reported as a failure).
    #[error("script ran past its time on a runtime thread")]
    #[diagnostic(code(edaflow::script::inline_time))]
    InlineTime,
}

impl ScriptError {
    /// False for a failure that would fail the same way on every retry and is
    /// dead-lettered at once (a journey past its hop limit).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ScriptError::HopLimit { .. } | ScriptError::InvalidEmit { .. }
        )
    }
}

/// How a run that reads ahead ended (`ScriptEngine::run_ahead`).
#[derive(Debug)]
pub enum Ahead {
    /// The run stands: its output, or its error.
    Done(Result<ScriptOutput, ScriptError>),
    /// The run wanted these reads (each once) and is discarded.
    Wants(Vec<crate::store::StoreWant>),
    /// The run held its thread past `Limits::inline_time` and is discarded: run it again
    /// on a thread that may block (see `runtime::subscriber`).
    Offload,
}

/// What a relay's filter or transform evaluated to.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    /// `()`: a transform that drops the event.
    Unit,
    Bool(bool),
    /// Any other value JSON can carry.
    Json(serde_json::Value),
    /// A value JSON cannot carry (a function, a handle), or data nested too deep.
    NotJson {
        type_name: String,
        reason: String,
    },
}

/// The engine shared by every worker.
pub struct ScriptEngine {
    engine: Engine,
    limits: Limits,
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptEngine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn base_engine(limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    // No strings interner: handlers make mostly unique, short-lived strings (ids,
    // interpolations), and once its cache is full Rhai's interner scans all of it on
    // every new string, under a lock the runtime's threads share.
    engine.set_max_strings_interned(0);
    limits::harden(&mut engine, limits);
    host::register_event_type(&mut engine);
    host::register_store_type(&mut engine);
    engine.register_global_module(rhai::exported_module!(host::api).into());
    // The component is already on the enclosing tracing span.
    engine.on_print(|text| tracing::info!(target: "edaflow::script", "{text}"));
    engine.on_debug(|text, source, pos| {
        tracing::debug!(target: "edaflow::script", source, line = pos.line(), "{text}");
    });
    // Memory on every operation (one thread-local read); time every 256 (a clock read).
    let max_memory = limits.max_memory;
    engine.on_progress(move |ops| {
        if memory::held() > max_memory {
            return Some(Dynamic::from(host::STOP_MEMORY));
        }
        if ops % 256 == 0 {
            return host::out_of_time().map(Dynamic::from);
        }
        None
    });
    engine
}

/// A run's memory above which its script stack is handed back afterwards: data this
/// large may be nested deep enough to have used the stack far down (see `stack`).
const DEEP_RUN_BYTES: usize = 256 << 10;

impl ScriptEngine {
    /// Builds the shared engine with the given limits.
    pub fn new(limits: Limits) -> ScriptEngine {
        let mut engine = base_engine(&limits);
        engine.set_module_resolver(DummyModuleResolver::new());
        ScriptEngine { engine, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs a compiled script for one event (or for none: interval scripts).
    ///
    /// # Errors
    /// `ScriptError` when the script fails, throws or exceeds a limit.
    pub fn run(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
    ) -> Result<ScriptOutput, ScriptError> {
        self.run_with(script, event, StoreEnv::default())
    }

    /// As `run`, with access to the flow's state stores.
    ///
    /// # Errors
    /// As `run`.
    pub fn run_with(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
        stores: StoreEnv,
    ) -> Result<ScriptOutput, ScriptError> {
        self.run_final(
            script,
            event,
            StoreEnv {
                ahead: None,
                ..stores
            },
        )
    }

    /// As `run_with`, answering reads from `known` first (made ahead), then from the reader.
    ///
    /// # Errors
    /// As `run`.
    pub fn run_known(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
        stores: StoreEnv,
        known: crate::store::ReadAhead,
    ) -> Result<ScriptOutput, ScriptError> {
        let stores = StoreEnv {
            ahead: Some(Arc::new(known)),
            ..stores
        };
        self.run_final(script, event, stores)
    }

    fn run_final(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
        stores: StoreEnv,
    ) -> Result<ScriptOutput, ScriptError> {
        match self.run_inner(script, event, stores, false, None) {
            Ahead::Done(result) => result,
            // Reads not made ahead go to the reader, and the run has no inline time.
            Ahead::Wants(_) | Ahead::Offload => Err(ScriptError::Failed {
                message: "store reads were not made".into(),
            }),
        }
    }

    /// As `run_with`, reading the stores only from `stores.ahead` when it is set: a run
    /// that wanted reads not made there is discarded (its output, error and log lines),
    /// and the caller makes them and runs again (see `crate::store`). With `inline_time`,
    /// a run still going after that long is discarded too (`Ahead::Offload`).
    pub fn run_ahead(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
        stores: StoreEnv,
        inline_time: Option<Duration>,
    ) -> Ahead {
        let records = stores.ahead.is_some();
        self.run_inner(script, event, stores, records, inline_time)
    }

    /// One run, on the script stack (see `stack`), metered (see `memory`). `records` makes
    /// reads missing from `stores.ahead` wanted instead of made through the reader; with
    /// it or `inline_time`, the run's log lines are held until it is known to stand.
    fn run_inner(
        &self,
        script: &CompiledScript,
        event: Option<ScriptEvent>,
        stores: StoreEnv,
        records: bool,
        inline_time: Option<Duration>,
    ) -> Ahead {
        let started = Instant::now();
        let state = host::RunState {
            deadline: started + self.limits.wall_time,
            inline_until: inline_time.map(|t| started + t),
            max_emits: self.limits.max_emits,
            output: ScriptOutput::default(),
            timed_out: false,
            stores,
            overlay: Default::default(),
            wanted: records.then(Vec::new),
            logs: (records || inline_time.is_some()).then(Vec::new),
        };
        let meter = memory::Meter::start();
        let ran = stack::run(|| {
            let guard = host::RunGuard::install(state);
            let mut scope = Scope::new();
            if let Some(event) = event {
                scope.push_constant("event", event);
            }
            let result = self.engine.run_ast_with_scope(&mut scope, &script.ast);
            // Dropped here, on the script stack: the scope may hold deeply nested data.
            drop(scope);
            let state = guard.finish();
            let timed_out = state.as_ref().is_some_and(|s| s.timed_out);
            // Classified here too: an error may carry a script value (`throw x`).
            let result = result.map_err(|err| self.classify(script, *err, timed_out));
            (result, state)
        });
        let peak = meter.peak();
        drop(meter);
        let (result, state) = match ran {
            Ok(ran) => ran,
            Err(panic) => {
                stack::release_depths();
                return Ahead::Done(Err(panicked(script, &panic)));
            }
        };
        if result.is_err() || peak > DEEP_RUN_BYTES {
            stack::release_depths();
        }
        if matches!(result, Err(ScriptError::InlineTime)) {
            return Ahead::Offload;
        }
        let Some(state) = state else {
            return Ahead::Done(result.map(|()| ScriptOutput::default()));
        };
        if let Some(mut wanted) = state.wanted.filter(|w| !w.is_empty()) {
            wanted.sort_unstable();
            wanted.dedup();
            return Ahead::Wants(wanted);
        }
        for line in state.logs.into_iter().flatten() {
            tracing::info!(target: "edaflow::script", "{line}");
        }
        Ahead::Done(result.map(|()| state.output))
    }

    /// Evaluates a script for its value (relay filters and transforms).
    ///
    /// # Errors
    /// As `run`.
    pub fn eval(
        &self,
        script: &CompiledScript,
        event: ScriptEvent,
    ) -> Result<Evaluated, ScriptError> {
        let state = host::RunState {
            deadline: Instant::now() + self.limits.wall_time,
            inline_until: None,
            max_emits: 0,
            output: ScriptOutput::default(),
            timed_out: false,
            stores: StoreEnv::default(),
            overlay: Default::default(),
            wanted: None,
            logs: None,
        };
        let meter = memory::Meter::start();
        let ran = stack::run(|| {
            let guard = host::RunGuard::install(state);
            let mut scope = Scope::new();
            scope.push_constant("event", event);
            let result = self
                .engine
                .eval_ast_with_scope::<Dynamic>(&mut scope, &script.ast);
            drop(scope);
            let timed_out = guard.finish().is_some_and(|s| s.timed_out);
            // The value is turned into plain data here, on the script stack.
            result
                .map(|value| evaluated(&value))
                .map_err(|err| self.classify(script, *err, timed_out))
        });
        let peak = meter.peak();
        drop(meter);
        let result = ran.unwrap_or_else(|panic| Err(panicked(script, &panic)));
        if result.is_err() || peak > DEEP_RUN_BYTES {
            stack::release_depths();
        }
        result
    }

    fn classify(
        &self,
        script: &CompiledScript,
        err: EvalAltResult,
        timed_out: bool,
    ) -> ScriptError {
        match err {
            EvalAltResult::ErrorTerminated(token, _) => {
                let token = token.read_lock::<rhai::ImmutableString>();
                match token.as_deref().map(|t| t.as_str()) {
                    Some(host::STOP_INLINE_TIME) => ScriptError::InlineTime,
                    Some(host::STOP_MEMORY) => ScriptError::Memory {
                        limit: self.limits.max_memory,
                    },
                    _ if timed_out => ScriptError::WallTime {
                        limit_ms: self.limits.wall_time.as_millis(),
                    },
                    _ => ScriptError::Limit {
                        message: "the run was stopped".into(),
                    },
                }
            }
            EvalAltResult::ErrorTooManyOperations(_) => ScriptError::Limit {
                message: format!(
                    "more than {} operations (an endless loop?)",
                    self.limits.max_operations
                ),
            },
            EvalAltResult::ErrorStackOverflow(_) => ScriptError::Limit {
                message: format!(
                    "calls nested more than {} deep (endless recursion?)",
                    self.limits.max_call_depth
                ),
            },
            EvalAltResult::ErrorDataTooLarge(..) | EvalAltResult::ErrorTooManyModules(_) => {
                ScriptError::Limit {
                    message: err.to_string(),
                }
            }
            // `fail(…)`, `throw …` and host-API refusals (a bad `emit`) all land here.
            EvalAltResult::ErrorRuntime(value, _) => {
                let message = if value.is_string() {
                    value
                        .into_immutable_string()
                        .unwrap_or_default()
                        .to_string()
                } else {
                    value.to_string()
                };
                ScriptError::Failed { message }
            }
            other => {
                let pos = other.position();
                ScriptError::Runtime {
                    script: script.path.display().to_string(),
                    message: other.unwrap_inner().to_string(),
                    line: pos.line().unwrap_or(0),
                    column: pos.position().unwrap_or(0),
                }
            }
        }
    }
}

/// A script run that panicked (a bug of the engine, or of a host function): that run
/// fails; the worker and the process go on.
fn panicked(script: &CompiledScript, panic: &stack::ScriptPanic) -> ScriptError {
    tracing::error!(script = %script.path.display(), panic = %panic.0, "a script run panicked; the run fails and the worker goes on");
    ScriptError::Panicked {
        message: panic.0.clone(),
    }
}

fn evaluated(value: &Dynamic) -> Evaluated {
    if value.is_unit() {
        return Evaluated::Unit;
    }
    if let Ok(b) = value.as_bool() {
        return Evaluated::Bool(b);
    }
    match convert::to_json(value) {
        Ok(json) => Evaluated::Json(json),
        Err(err) => Evaluated::NotJson {
            type_name: value.type_name().to_owned(),
            reason: match *err {
                EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
                other => other.to_string(),
            },
        },
    }
}

/// Wraps `event` for a script.
pub fn script_event(event: &Arc<Event>, attempt: u32) -> ScriptEvent {
    ScriptEvent {
        event: event.clone(),
        attempt: i64::from(attempt),
    }
}

/// A module resolver that remembers which files it loaded, and refuses an import that
/// closes a ring (a module importing itself, directly or through others), which would
/// otherwise recurse until the stack ends.
struct RecordingResolver {
    files: FileModuleResolver,
    base: PathBuf,
    seen: Mutex<Vec<PathBuf>>,
    /// The modules being resolved now, outermost first, as (file, the path imported).
    resolving: Mutex<Vec<(PathBuf, String)>>,
}

/// The message of an import that closes a ring; `compile_text` reports it as it is.
const IMPORT_CYCLE: &str = "import cycle: ";

impl ModuleResolver for RecordingResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let joined = self.base.join(path).with_extension("rhai");
        let file = std::fs::canonicalize(&joined).unwrap_or_else(|_| joined.clone());
        {
            let mut resolving = self.resolving.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = resolving.iter().position(|(f, _)| *f == file) {
                let ring: Vec<String> = resolving[at..]
                    .iter()
                    .map(|(_, p)| format!("`{p}`"))
                    .chain(std::iter::once(format!("`{path}`")))
                    .collect();
                return Err(Box::new(EvalAltResult::ErrorRuntime(
                    format!("{IMPORT_CYCLE}{}", ring.join(" imports ")).into(),
                    pos,
                )));
            }
            resolving.push((file, path.to_owned()));
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(joined);
        let resolved = self.files.resolve(engine, source, path, pos);
        self.resolving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        resolved
    }
}

/// The innermost error of nested module errors: the import cycle, when there is one, is
/// reported alone rather than inside one "in module" per module of the ring.
fn cycle_message(err: &EvalAltResult) -> Option<String> {
    match err {
        EvalAltResult::ErrorInModule(_, inner, _) => cycle_message(inner),
        EvalAltResult::ErrorRuntime(value, _) => value
            .read_lock::<rhai::ImmutableString>()
            .filter(|m| m.starts_with(IMPORT_CYCLE))
            .map(|m| m.to_string()),
        _ => None,
    }
}

/// Compiles one script, embedding its imports.
///
/// # Errors
/// A `FlowError::ScriptCompile` pointing at the line and column in the `.rhai` file.
pub fn compile(source: &ScriptSource) -> Result<CompiledScript, FlowError> {
    compile_text(&source.path, &source.base_dir, &source.text, true)
}

/// Compiles a relay filter expression (`event.data.total > 100`).
///
/// # Errors
/// As `compile`.
pub fn compile_expression(name: &Path, text: &str) -> Result<CompiledScript, FlowError> {
    let engine = Engine::new_raw();
    let mut scope = Scope::new();
    scope.push_constant("event", ());
    match engine.compile_expression_with_scope(&scope, text) {
        Ok(ast) => Ok(CompiledScript {
            ast: Arc::new(ast),
            text: Arc::from(text),
            path: name.to_owned(),
            imports: Vec::new(),
            facts: None,
        }),
        Err(err) => Err(compile_error(name, text, &err.to_string(), err.position())),
    }
}

/// A tree compiled unoptimized, optimized as Rhai does by default when compiling (with
/// `event` as the constant compiling sees), keeping the modules it embeds.
fn optimized(engine: &Engine, raw: AST) -> AST {
    let mut scope = Scope::new();
    scope.push_constant("event", ());
    // An AST with no code that holds the embedded modules; merging keeps them.
    let modules = raw.clone_functions_only_filtered(|_, _, _, _, _| false);
    let code = engine.optimize_ast(&scope, raw, OptimizationLevel::Simple);
    modules.merge(&code)
}

fn compile_text(
    path: &Path,
    base_dir: &Path,
    text: &str,
    strict: bool,
) -> Result<CompiledScript, FlowError> {
    let mut engine = base_engine(&Limits::default());
    let mut files = FileModuleResolver::new_with_path(base_dir);
    files.enable_cache(false);
    let resolver = Arc::new(RecordingResolver {
        files,
        base: base_dir.to_owned(),
        seen: Mutex::new(Vec::new()),
        resolving: Mutex::new(Vec::new()),
    });
    engine.set_module_resolver(SharedResolver(resolver.clone()));
    engine.set_strict_variables(strict);
    // Parsed once, unoptimized: the lint's facts are read off the tree as written, then it
    // is optimized for running (see `optimized`).
    engine.set_optimization_level(OptimizationLevel::None);
    // Compiling runs the top-level code of imported modules: on the script stack, metered,
    // like any run.
    let meter = memory::Meter::start();
    let compiled = stack::run(|| {
        let mut scope = Scope::new();
        scope.push_constant("event", ());
        engine.compile_into_self_contained(&scope, text)
    });
    drop(meter);
    stack::release_depths();
    let compiled = compiled.unwrap_or_else(|panic| {
        Err(Box::new(EvalAltResult::ErrorRuntime(
            format!("the script engine failed: {}", panic.0).into(),
            Position::NONE,
        )))
    });
    match compiled {
        Ok(ast) => {
            let mut imports = resolver
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            imports.sort();
            imports.dedup();
            let facts = facts::of(&ast);
            Ok(CompiledScript {
                ast: Arc::new(optimized(&engine, ast)),
                text: Arc::from(text),
                path: path.to_owned(),
                imports,
                facts: Some(facts),
            })
        }
        Err(err) => {
            let pos = err.position();
            let cycle = cycle_message(&err);
            let (message, module) = match *err {
                EvalAltResult::ErrorInModule(module, _, _) if cycle.is_some() => {
                    (cycle.unwrap_or_default(), Some(module))
                }
                EvalAltResult::ErrorInModule(module, inner, _) => (
                    format!("in module `{module}`: {}", inner.unwrap_inner()),
                    Some(module),
                ),
                EvalAltResult::ErrorModuleNotFound(module, _) => {
                    let file = base_dir.join(&module).with_extension("rhai");
                    (
                        format!("module `{module}` not found (looked for {})", shown(&file)),
                        Some(module),
                    )
                }
                EvalAltResult::ErrorParsing(kind, _) => (kind.to_string(), None),
                other => (other.unwrap_inner().to_string(), None),
            };
            // Module errors often carry no position: label the `import` string instead.
            let quoted = module.map(|m| format!("\"{m}\""));
            match quoted.as_deref().and_then(|q| text.find(q)) {
                Some(at) if pos.is_none() => {
                    let len = quoted.as_deref().map_or(1, str::len);
                    let mut e = compile_error_at(path, text, &message, at);
                    if let FlowError::ScriptCompile { span, .. } = &mut e {
                        *span = (at, len).into();
                    }
                    Err(e)
                }
                _ => Err(compile_error(path, text, &message, pos)),
            }
        }
    }
}

/// Lets one `Arc` resolver be both installed in the engine and read afterwards.
struct SharedResolver(Arc<RecordingResolver>);

impl ModuleResolver for SharedResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        self.0.resolve(engine, source, path, pos)
    }
}

fn compile_error(path: &Path, text: &str, message: &str, pos: Position) -> FlowError {
    compile_error_at(path, text, message, offset_of(text, pos))
}

/// A path as the user would write it: relative to the working directory when inside it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn compile_error_at(path: &Path, text: &str, message: &str, offset: usize) -> FlowError {
    let len = text[offset..].chars().next().map_or(0, char::len_utf8);
    FlowError::ScriptCompile {
        script: shown(path),
        message: message.to_owned(),
        src: Arc::new(source_file(shown(path), Arc::from(text))),
        span: (offset, len).into(),
    }
}

/// Byte offset of a Rhai position (1-based line and character column).
fn offset_of(text: &str, pos: Position) -> usize {
    let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) else {
        return 0;
    };
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col_bytes: usize = l
                .chars()
                .take(col.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return (offset + col_bytes).min(text.len());
        }
        offset += l.len();
    }
    text.len().saturating_sub(1)
}

/// Every compiled script of a flow set, keyed by the component that uses it.
#[derive(Clone, Debug, Default)]
pub struct CompiledScripts {
    /// `subscribers.NAME` / `producers.NAME` / `relays.NAME` -> script.
    pub by_component: std::collections::BTreeMap<String, CompiledScript>,
}

impl CompiledScripts {
    /// Every module file imported by any script.
    pub fn imports(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self
            .by_component
            .values()
            .flat_map(|s| s.imports.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Compiles every script and relay filter of a flow set, collecting every error.
///
/// # Errors
/// All the compile errors at once.
pub fn compile_set(flows: &FlowSet) -> Result<CompiledScripts, Vec<FlowError>> {
    compile_set_reusing(flows, |_, _| None)
}

/// As `compile_set`, but takes an already compiled script from `reuse` when it has one
/// for a component's source (a reload recompiles only what changed).
///
/// # Errors
/// All the compile errors at once.
pub fn compile_set_reusing(
    flows: &FlowSet,
    reuse: impl Fn(&str, &ScriptSource) -> Option<CompiledScript>,
) -> Result<CompiledScripts, Vec<FlowError>> {
    let compile = |key: &str, source: &ScriptSource| match reuse(key, source) {
        Some(script) => Ok(script),
        None => compile(source),
    };
    let mut out = CompiledScripts::default();
    let mut errors = Vec::new();
    let mut add = |key: String, result: Result<CompiledScript, FlowError>| match result {
        Ok(script) => {
            out.by_component.insert(key, script);
        }
        Err(e) => errors.push(e),
    };
    for (name, sub) in &flows.subscribers {
        if let Some(source) = &sub.script {
            let key = format!("subscribers.{name}");
            let result = compile(&key, source);
            add(key, result);
        }
    }
    for (name, producer) in &flows.producers {
        if let crate::flow::model::ProducerKind::Interval(interval) = &producer.kind {
            if let Some(source) = &interval.script {
                let key = format!("producers.{name}");
                let result = compile(&key, source);
                add(key, result);
            }
        }
    }
    for (name, relay) in &flows.relays {
        if let Some(source) = &relay.script {
            let key = format!("relays.{name}");
            let result = compile(&key, source);
            add(key, result);
        }
        if let Some(filter) = &relay.filter {
            let label = PathBuf::from(format!("relays.{name}.filter"));
            add(
                format!("relays.{name}.filter"),
                compile_expression(&label, filter),
            );
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(dir: &Path, text: &str) -> ScriptSource {
        ScriptSource {
            path: dir.join("handler.rhai"),
            base_dir: dir.to_owned(),
            text: Arc::from(text),
        }
    }

    fn run(text: &str, data: serde_json::Value) -> Result<ScriptOutput, ScriptError> {
        let dir = tempfile::tempdir().unwrap();
        let script = compile(&source(dir.path(), text)).unwrap();
        let engine = ScriptEngine::new(Limits::default());
        let event = Arc::new(Event::new("orderCreated", "test", data));
        engine.run(&script, Some(script_event(&event, 1)))
    }

    /// Strings captured in closures count against a run's memory: the run fails by the
    /// memory limit (the wall clock set far off, so a loaded machine cannot stop it first).
    #[test]
    fn strings_captured_in_closures_are_metered() {
        let dir = tempfile::tempdir().unwrap();
        let text = "let s = \"x\"; for i in 0..19 { s += s; } let fs = []; for i in 0..5000 { let t = s + i; fs.push(|| t); }";
        let script = compile(&source(dir.path(), text)).unwrap();
        let engine = ScriptEngine::new(Limits {
            wall_time: std::time::Duration::from_secs(60),
            ..Limits::default()
        });
        let event = Arc::new(Event::new("orderCreated", "test", json!({})));
        let result = engine.run(&script, Some(script_event(&event, 1)));
        assert!(
            matches!(result, Err(ScriptError::Memory { .. })),
            "{:?}",
            result.err()
        );
    }

    #[test]
    fn emits_are_recorded_not_published() {
        let out = run(
            r#"let o = event.data; emit("inventoryReserved", #{ order_id: o.order_id }, #{ delay: "5s", key: "k" });"#,
            json!({"order_id": 7}),
        )
        .unwrap();
        assert_eq!(out.emits.len(), 1);
        assert_eq!(out.emits[0].topic, "inventoryReserved");
        assert_eq!(out.emits[0].data, json!({"order_id": 7}));
        assert_eq!(out.emits[0].delay, Some(std::time::Duration::from_secs(5)));
        assert_eq!(out.emits[0].key.as_deref(), Some("k"));
    }

    /// Runs `text` reading ahead, as the subscriber does on Redis: each round answers
    /// what the last run wanted from `stores`, until a run stands.
    fn run_reading_ahead(
        text: &str,
        stores: &crate::store::MemoryStores,
    ) -> (
        Result<ScriptOutput, ScriptError>,
        Vec<Vec<crate::store::StoreWant>>,
    ) {
        use crate::store::{Fetched, ReadAhead, StoreRead, StoreWant};
        let dir = tempfile::tempdir().unwrap();
        let script = compile(&source(dir.path(), text)).unwrap();
        let engine = ScriptEngine::new(Limits::default());
        let event = Arc::new(Event::new("q", "test", json!({})));
        let mut ahead = ReadAhead::default();
        let mut rounds = Vec::new();
        loop {
            let env = StoreEnv {
                reader: None,
                declared: Arc::new(["s".to_owned()].into()),
                ahead: Some(Arc::new(ahead.clone())),
            };
            match engine.run_ahead(&script, Some(script_event(&event, 1)), env, None) {
                Ahead::Done(result) => return (result, rounds),
                Ahead::Offload => unreachable!("no inline time was given"),
                Ahead::Wants(wants) => {
                    for want in &wants {
                        let answer = match want {
                            StoreWant::Get { store, key } => {
                                Fetched::Value(stores.get(store, key).unwrap())
                            }
                            StoreWant::Scan { store, prefix } => {
                                Fetched::Entries(stores.scan(store, prefix, 10).unwrap())
                            }
                        };
                        ahead.insert(want.clone(), answer);
                    }
                    rounds.push(wants);
                    assert!(rounds.len() < 10, "reads ahead never settle");
                }
            }
        }
    }

    #[test]
    fn a_run_reading_ahead_wants_each_read_once_per_round_then_stands() {
        use crate::store::{MemoryStores, StoreOp, StoreWant, StoreWrite};
        let stores = MemoryStores::default();
        let set = |key: &str, value: serde_json::Value| StoreWrite {
            store: "s".into(),
            key: key.into(),
            op: StoreOp::Set(value),
        };
        stores.apply(&[
            set("a", json!("k")),
            set("k", json!(5)),
            set("p:1", json!(1)),
            set("p:2", json!(2)),
        ]);
        let (result, rounds) = run_reading_ahead(
            r#"
            let s = store("s");
            emit("seen", 1);
            let a = s.get("a");
            let again = s.get("a");
            let b = if a != () { s.get(a) } else { () };
            let n = s.scan("p:").len();
            s.set("own", 3);
            reply(#{ a: a, b: b, n: n, own: s.get("own") });
            "#,
            &stores,
        );
        let get = |key: &str| StoreWant::Get {
            store: "s".into(),
            key: key.into(),
        };
        let scan = StoreWant::Scan {
            store: "s".into(),
            prefix: "p:".into(),
        };
        // Round 1 wants what it can see (once each); round 2 what depended on it; the
        // run's own write is never wanted.
        assert_eq!(rounds, vec![vec![get("a"), scan], vec![get("k")]]);
        let out = result.unwrap();
        assert_eq!(out.reply, Some(json!({"a": "k", "b": 5, "n": 2, "own": 3})));
        assert_eq!(out.emits.len(), 1, "only the run that stands counts");
    }

    #[test]
    fn a_run_with_reads_known_makes_the_rest_through_the_reader() {
        use crate::store::{MemoryStores, ReadAhead, StoreOp, StoreWrite};
        let stores = Arc::new(MemoryStores::default());
        stores.apply(&[StoreWrite {
            store: "s".into(),
            key: "b".into(),
            op: StoreOp::Set(json!(2)),
        }]);
        let dir = tempfile::tempdir().unwrap();
        let script = compile(&source(
            dir.path(),
            r#"reply(#{ a: store("s").get("a"), b: store("s").get("b") });"#,
        ))
        .unwrap();
        let engine = ScriptEngine::new(Limits::default());
        let event = Arc::new(Event::new("q", "test", json!({})));
        let mut known = ReadAhead::default();
        known
            .values
            .insert(("s".into(), "a".into()), Some(json!(1)));
        let env = StoreEnv {
            reader: Some(stores),
            declared: Arc::new(["s".to_owned()].into()),
            ahead: None,
        };
        let out = engine
            .run_known(&script, Some(script_event(&event, 1)), env, known)
            .unwrap();
        assert_eq!(out.reply, Some(json!({"a": 1, "b": 2})));
    }

    #[test]
    fn event_properties_are_visible() {
        let out = run(
            r#"emit("seen", #{ topic: event.topic, attempt: event.attempt, same: event.id == event.correlation_id });"#,
            json!({}),
        )
        .unwrap();
        assert_eq!(
            out.emits[0].data,
            json!({"topic": "orderCreated", "attempt": 1, "same": true})
        );
    }

    #[test]
    fn fail_discards_emits() {
        let err = run(r#"emit("a", 1); fail("no stock");"#, json!({})).unwrap_err();
        assert!(
            matches!(err, ScriptError::Failed { ref message } if message == "no stock"),
            "{err:?}"
        );
    }

    #[test]
    fn infinite_loop_fails_only_that_run() {
        let err = run("loop { }", json!({})).unwrap_err();
        assert!(
            matches!(
                err,
                ScriptError::Limit { .. } | ScriptError::WallTime { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_topic_in_emit_is_a_runtime_error() {
        let err = run(r#"emit("bad topic", 1);"#, json!({})).unwrap_err();
        assert!(err.to_string().contains("invalid topic"), "{err}");
    }

    #[test]
    fn return_at_top_level_ends_the_run() {
        let out = run(
            r#"if event.data.total > 10.0 { emit("big", 1); return; } emit("small", 1);"#,
            json!({"total": 49.99}),
        )
        .unwrap();
        assert_eq!(out.emits.len(), 1);
        assert_eq!(out.emits[0].topic, "big");
    }

    #[test]
    fn compile_errors_point_into_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = compile(&source(dir.path(), "let x = 1;\nlet y = ;\n")).unwrap_err();
        let FlowError::ScriptCompile { span, .. } = err else {
            panic!()
        };
        assert_eq!(span.offset(), "let x = 1;\nlet y = ".len());
    }

    #[test]
    fn undefined_variables_are_compile_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(compile(&source(dir.path(), "emit(\"a\", ordr);")).is_err());
    }

    #[test]
    fn imports_resolve_against_the_flow_folder_and_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/money.rhai"), "fn big(x) { x > 100.0 }").unwrap();
        let script = compile(&source(
            dir.path(),
            r#"import "lib/money" as m; if m::big(event.data.total) { emit("big", 1); }"#,
        ))
        .unwrap();
        assert_eq!(script.imports, vec![dir.path().join("lib/money.rhai")]);
        let engine = ScriptEngine::new(Limits::default());
        let event = Arc::new(Event::new("t", "test", json!({"total": 500.0})));
        let out = engine.run(&script, Some(script_event(&event, 1))).unwrap();
        assert_eq!(out.emits.len(), 1);
    }
}
