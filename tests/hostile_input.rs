//! Generated hostile input for what a user writes: flow files and Rhai handlers. Whatever
//! the text, loading answers with flows or with diagnostics (that render), never a panic
//! or a crash; whatever a handler that compiles does to an event, its run ends in an
//! output or an error, within its limits.
//!
//! `PROPTEST_CASES` sets how many cases each property runs (default below: enough for CI
//! in seconds; raise it for a longer hunt, e.g. `PROPTEST_CASES=20000`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use common::FlowDir;
use edaflow::event::Event;
use edaflow::script::{script_event, Limits, ScriptEngine};

/// Script memory is counted by the allocator, as in the binary.
#[global_allocator]
static ALLOCATOR: edaflow::script::memory::MeteredAlloc<std::alloc::System> =
    edaflow::script::memory::MeteredAlloc(std::alloc::System);

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------
// Flow files

/// Pieces a flow file is made of, valid and not: tables, keys, values of every TOML type,
/// nesting, and bytes no TOML parser expects.
fn toml_piece() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "[flow]",
        "[producers.api]",
        "[subscribers.s]",
        "[subscribers.\"a.b\"]",
        "[queues.q]",
        "[relays.r]",
        "[chains.c]",
        "[topics.t]",
        "[stores.st]",
        "[[tests]]",
        "name = \"x\"",
        "kind = \"http\"",
        "kind = \"interval\"",
        "kind = \"lines\"",
        "every = \"1s\"",
        "every = \"-1s\"",
        "every = \"99999999999999999999h\"",
        "topic = \"orderCreated\"",
        "topic = \"bad topic\"",
        "topic = \"\"",
        "topics = [\"a.*\", \"b.>\", \">\"]",
        "queue = \"q\"",
        "script = \"handler.rhai\"",
        "script = \"../../etc/passwd\"",
        "script = \"missing.rhai\"",
        "emits = [\"a\", \"a\", 1]",
        "concurrency = 0",
        "concurrency = 18446744073709551615",
        "retry = { attempts = 0 }",
        "retry = { attempts = 3, backoff = \"1ms\", max_backoff = \"1d\" }",
        "max_hops = 0",
        "max_hops = -5",
        "from = \"a\"",
        "to = \"q\"",
        "filter = \"event.data.x >\"",
        "steps = [\"a\"]",
        "timeout = \"5s\"",
        "mode = \"pubsub\"",
        "retention = \"1h\"",
        "expose = true",
        "listen = \"127.0.0.1:0\"",
        "body_limit = \"1GiB\"",
        "publish = { topic = \"a\", data = { x = 1 } }",
        "expect = [{ topic = \"b\" }]",
        "x = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
        "x = { a = { b = { c = { d = { e = 1 } } } } }",
        "\"\\u0000\" = 1",
        "= = =",
        "[",
        "]]]",
        "\"",
        "'''",
        "#",
        "\u{feff}",
        "\u{1F600} = 1",
        "a.b.c.d.e.f = 1",
        "",
    ]);
    prop_oneof![
        8 => words.prop_map(str::to_owned),
        1 => "[ -~]{0,40}",
        1 => prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => (1usize..300).prop_map(|n| format!("x = {}1{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..300).prop_map(|n| format!("x = {}1{}", "{a=".repeat(n), "}".repeat(n))),
    ]
}

/// One of `valid` most of the time, else one of `invalid`.
fn value(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
) -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(valid.to_vec()),
        1 => prop::sample::select(invalid.to_vec()),
    ]
}

/// A flow file of the usual shape, each value valid most of the time.
fn shaped_flow() -> impl Strategy<Value = String> {
    (
        value(&["orders", "x"], &["", "a b", "x\\u0000"]),
        value(&["8", "64"], &["0", "-1", "\"many\"", "4294967296"]),
        value(
            &["\"10s\"", "\"250ms\""],
            &["\"0s\"", "\"-1s\"", "\"1y\"", "10", "\"\""],
        ),
        value(
            &["orderCreated", "order*", "orders.>"],
            &["bad topic", "", ">>"],
        ),
        value(&["1", "4"], &["0", "100000000000"]),
        value(&["[\"b\"]", "[\"orderCreated\"]", "[]"], &["\"b\"", "[1]"]),
        value(&["q"], &["missing", ""]),
        value(
            &["[\"orderCreated\", \"b\"]", "[\"b\", \"orderCreated\"]"],
            &["[\"a\"]", "[]"],
        ),
    )
        .prop_map(
            |(name, hops, every, topic, concurrency, emits, queue, steps)| {
                format!(
                    "[flow]\nname = \"{name}\"\nmax_hops = {hops}\n\n\
                 [producers.p]\nkind = \"interval\"\nevery = {every}\ntopic = \"b\"\n\n\
                 [subscribers.s]\ntopic = \"{topic}\"\nscript = \"handler.rhai\"\n\
                 concurrency = {concurrency}\nemits = {emits}\n\n\
                 [queues.q]\ndelay = {every}\n\n\
                 [relays.r]\nfrom = \"{topic}\"\nto = \"{queue}\"\n\n\
                 [chains.c]\nsteps = {steps}\ntimeout = {every}\n"
                )
            },
        )
}

#[test]
fn any_flow_file_loads_or_is_reported() {
    let dir = FlowDir::new();
    dir.write("handler.rhai", "emit(\"b\", event.data);");
    let path = dir.path("flow.toml");
    let mut runner = runner(512);
    let strategy = prop_oneof![
        2 => shaped_flow(),
        1 => prop::collection::vec(toml_piece(), 0..30).prop_map(|lines| lines.join("\n")),
    ];
    let loaded = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |text| {
            std::fs::write(&path, &text).expect("write the flow");
            match edaflow::runtime::prepare(std::slice::from_ref(&path)) {
                Ok(prepared) => {
                    loaded.set(loaded.get() + 1);
                    for warning in &prepared.warnings {
                        edaflow::flow::diagnostic::render(warning, 100);
                    }
                }
                Err(report) => {
                    let shown = edaflow::flow::diagnostic::render(&report, 100);
                    prop_assert!(!shown.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "generated flow files: {} cases, {} loaded, the rest reported",
        cases(512),
        loaded.get()
    );
}

// ---------------------------------------------------------------------------------------
// Rhai handlers

/// What every generated handler starts with, so that its statements have names to use.
const PRELUDE: &str = "let x = 1; let s = \"abc\"; let a = [1, 2, 3]; let m = #{ k: 1 };\n\
    let f = |y| y + 1; let g = || 1;\n\
    fn h(v) { h(v) }\nfn r(n) { if n > 0 { r(n - 1) } else { 0 } }\n";

/// Statements that compile after `PRELUDE`: the host API used right and wrong, and the
/// shapes that recurse, nest or allocate without bound.
const STATEMENTS: &[&str] = &[
    "x = [x];",
    "m = #{ k: m };",
    "s += s;",
    "a += a;",
    "a.pad(1000, a);",
    "a.pad(100000, m);",
    "f = |y| f.call(y);",
    "f.call(1);",
    "f = Fn(\"h\").curry(f);",
    "g = || g;",
    "r(100000);",
    "r(10);",
    "h(1);",
    "loop { x += 1; }",
    "while true { }",
    "for i in 0..100000 { a.push(i); }",
    "for i in 0..1000 { x = [x]; }",
    "for i in 0..100 { let t = s + i; a.push(|| t); }",
    "emit(\"out\", event.data);",
    "emit(\"out\", x);",
    "emit(\"out\", m);",
    "emit(\"bad topic\", 1);",
    "emit(\"out\", 1, #{ delay: \"1s\" });",
    "emit(\"out\", 1, #{ delay: -1 });",
    "emit(\"out\", 1, #{ colour: 1 });",
    "emit(\"out\", f);",
    "enqueue(\"nowhere\", 1);",
    "reply(#{ ok: true });",
    "reply(1); reply(2);",
    "store(\"none\").set(\"k\", 1);",
    "fail(\"no\");",
    "throw x;",
    "throw m;",
    "log(event.data);",
    "log(x);",
    "print(a);",
    "debug(m);",
    "now();",
    "uuid();",
    "event.data.missing;",
    "event.topic + 1;",
    "1 / 0;",
    "x.to_string();",
    "m.to_json();",
    "return;",
    "if x == 1 { return 2; }",
    "let q = event.data;",
];

/// Tokens of Rhai: keywords, operators, literals, the host API, and the shapes that
/// recurse or nest.
fn rhai_piece() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "let x = 1;",
        "let s = \"abc\";",
        "let a = [1, 2, 3];",
        "let m = #{ k: 1 };",
        "let f = |y| y + 1;",
        "let g = || f;",
        "x = [x];",
        "m = #{ k: m };",
        "s += s;",
        "a += a;",
        "a.pad(1000, a);",
        "f = |y| f.call(y);",
        "f = Fn(\"h\").curry(f);",
        "fn h(v) { h(v) }",
        "fn r(n) { if n > 0 { r(n - 1) } else { 0 } }",
        "r(100000);",
        "h(1);",
        "loop { x += 1; }",
        "while true { }",
        "for i in 0..100000 { a.push(i); }",
        "for i in 0..1000 { x = [x]; }",
        "emit(\"out\", event.data);",
        "emit(\"out\", x);",
        "emit(\"bad topic\", 1);",
        "emit(\"out\", 1, #{ delay: \"1s\" });",
        "emit(\"out\", 1, #{ delay: -1 });",
        "emit(\"out\", || 1);",
        "enqueue(\"nowhere\", 1);",
        "reply(#{ ok: true });",
        "reply(1); reply(2);",
        "store(\"none\").set(\"k\", 1);",
        "fail(\"no\");",
        "throw x;",
        "log(event.data);",
        "log(x);",
        "print(a);",
        "debug(m);",
        "now();",
        "uuid();",
        "event.data.missing.deeper;",
        "event.topic + 1;",
        "1 / 0;",
        "x.to_string();",
        "import \"lib/none\" as n;",
        "eval(\"1\");",
        "return;",
        "if x > 1 { return 2; }",
        "{",
        "}",
        "(",
        ")",
        ";",
        "|",
        "#{",
        "`${",
        "\"",
        "0x",
        "9999999999999999999999",
    ]);
    prop_oneof![
        10 => tokens.prop_map(str::to_owned),
        1 => "[ -~]{0,30}",
        1 => (1usize..200).prop_map(|n| format!("let z = {}1{};", "(".repeat(n), ")".repeat(n))),
        1 => (1usize..200).prop_map(|n| format!("let z = {}1{};", "[".repeat(n), "]".repeat(n))),
    ]
}

fn event_data() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,20}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn any_handler_compiles_or_is_reported_and_any_run_ends() {
    let dir = FlowDir::new();
    let script_path = dir.path("handler.rhai");
    dir.write(
        "flow.toml",
        "[subscribers.s]\ntopic = \"in\"\nscript = \"handler.rhai\"\n",
    );
    // Tight limits, so that thousands of runs take seconds.
    let engine = ScriptEngine::new(Limits {
        max_operations: 50_000,
        wall_time: Duration::from_millis(50),
        max_memory: 16 << 20,
        ..Limits::default()
    });
    let statements = prop::collection::vec(prop::sample::select(STATEMENTS.to_vec()), 0..12)
        .prop_map(|t| format!("{PRELUDE}{}", t.join("\n")));
    let soup = prop::collection::vec(rhai_piece(), 0..25).prop_map(|t| t.join("\n"));
    let strategy = (prop_oneof![3 => statements, 1 => soup], event_data());
    let (compiled, ran_ok) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner(512)
        .run(&strategy, |(text, data)| {
            std::fs::write(&script_path, &text).expect("write the script");
            match edaflow::runtime::prepare(&[dir.path("flow.toml")]) {
                Ok(prepared) => {
                    compiled.set(compiled.get() + 1);
                    let script = &prepared.scripts.by_component["subscribers.s"];
                    let event = Arc::new(Event::new("in", "test", data));
                    if engine.run(script, Some(script_event(&event, 1))).is_ok() {
                        ran_ok.set(ran_ok.get() + 1);
                    }
                }
                Err(report) => {
                    prop_assert!(!edaflow::flow::diagnostic::render(&report, 100).is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "generated handlers: {} cases, {} compiled ({} ran to the end), the rest reported",
        cases(512),
        compiled.get(),
        ran_ok.get()
    );
}
