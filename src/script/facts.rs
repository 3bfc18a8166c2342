//! What a handler script does, read off its Rhai syntax tree without running it: whether
//! its `reply` calls can run, which state stores it reads and writes, and which queues it
//! enqueues to. The flow lint (`flow::lint`) judges these facts and `edaflow graph` draws
//! them; this module only finds them.
//!
//! The analysis is deliberately conservative. It reads the tree `script::compile` makes
//! before optimizing (imports are not followed, dead code is still there to see) and answers
//! "unknown" whenever the tree cannot tell: a call into an imported module, `Fn(…)` of a
//! name that is not a string literal, a store whose name is not a string literal, or a
//! store handle passed somewhere it cannot follow.

use std::collections::{BTreeMap, BTreeSet};
use std::ptr;

use crate::flow::lint::{ReplyFact, ScriptFacts, StoreUse, Use};
use rhai::{ASTFlags, ASTNode, Expr, FnCallExpr, Position, Stmt, AST};

/// The facts of a script compiled without optimization (so dead code is still there to
/// see): what `script::compile` records for each handler.
pub fn of(ast: &AST) -> ScriptFacts {
    let (stores, stores_unknown) = store_uses(ast);
    ScriptFacts {
        reply: reply_fact(ast),
        stores,
        stores_unknown,
        enqueues: enqueues(ast),
    }
}

/// Parses `text` alone and finds its facts; `None` when it does not parse.
#[cfg(test)]
pub(crate) fn analyse(text: &str) -> Option<ScriptFacts> {
    let mut engine = rhai::Engine::new_raw();
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    Some(of(&engine.compile(text).ok()?))
}

/// The `reply` facts of one body: the main script, or one function.
#[derive(Default)]
struct Body {
    /// Every `reply` call, with why it cannot run (`None`: it can, as far as this body goes).
    replies: Vec<(Position, Option<String>)>,
    /// Names that the body's live code calls or mentions as a string (`Fn("name")`).
    refs: BTreeSet<String>,
    /// Live code calls something the analysis cannot see into.
    unknown: bool,
}

fn reply_fact(ast: &AST) -> ReplyFact {
    let main = body_facts(&ast.clone_statements_only());
    let functions: Vec<(String, Body)> = ast
        .iter_functions()
        .map(|f| {
            let (name, arity) = (f.name.to_owned(), f.params.len());
            // (`clone_functions_only_filtered` does not filter into an empty module.)
            let mut one = ast.clone_functions_only();
            one.retain_functions(|_, _, n, a| n == name && a == arity);
            (name, body_facts(&one))
        })
        .collect();

    // Functions reachable from the main body, through calls by name (any arity) and
    // closures (Rhai names them `anon$…`; they count as reachable wherever they are).
    let mut reachable: BTreeSet<&str> = main.refs.iter().map(String::as_str).collect();
    loop {
        let before = reachable.len();
        for (name, body) in &functions {
            if reachable.contains(name.as_str()) || name.starts_with("anon$") {
                reachable.insert(name);
                reachable.extend(body.refs.iter().map(String::as_str));
            }
        }
        if reachable.len() == before {
            break;
        }
    }
    let live_bodies = || {
        std::iter::once(&main).chain(
            functions
                .iter()
                .filter(|(name, _)| reachable.contains(name.as_str()))
                .map(|(_, body)| body),
        )
    };
    if live_bodies().any(|b| b.replies.iter().any(|(_, why)| why.is_none())) {
        return ReplyFact::Replies;
    }
    if live_bodies().any(|b| b.unknown) {
        return ReplyFact::Unknown;
    }
    let mut dead: Vec<(Position, String)> = Vec::new();
    for (name, body) in
        std::iter::once((&String::new(), &main)).chain(functions.iter().map(|(n, b)| (n, b)))
    {
        let called = name.is_empty() || reachable.contains(name.as_str());
        for (pos, why) in &body.replies {
            let why = match why {
                Some(why) if called => why.clone(),
                _ => format!("it is in `fn {name}`, which nothing calls"),
            };
            dead.push((*pos, why));
        }
    }
    dead.sort_by_key(|(pos, _)| (pos.line(), pos.position()));
    match dead.into_iter().next() {
        None => ReplyFact::Never,
        Some((pos, why)) => ReplyFact::Unreachable {
            line: pos.line().unwrap_or(0),
            why,
        },
    }
}

/// Walks one body (an AST holding only the main statements, or only one function).
fn body_facts(ast: &AST) -> Body {
    let mut body = Body::default();
    // The first top-level statement that always leaves the body, and what it is.
    let mut exited: Option<&'static str> = None;
    let mut top_dead: Option<String> = None;
    ast.walk(&mut |path: &[ASTNode]| {
        if let [ASTNode::Stmt(top)] = path {
            top_dead = exited.map(after_exit);
            if exited.is_none() {
                exited = exits(top);
            }
        }
        let Some(node) = path.last() else {
            return true;
        };
        let dead = || top_dead.clone().or_else(|| dead_in(path));
        match node {
            ASTNode::Expr(Expr::FnCall(call, pos) | Expr::MethodCall(call, pos))
            | ASTNode::Stmt(Stmt::FnCall(call, pos)) => {
                let dead = dead();
                if !call.namespace.is_empty() {
                    body.unknown |= dead.is_none();
                } else if call.name == "reply" {
                    body.replies.push((*pos, dead));
                } else if dead.is_none() {
                    let literal = matches!(call.args.first(), Some(Expr::StringConstant(..)));
                    if call.name == "Fn"
                        && !literal
                        && matches!(node, ASTNode::Expr(Expr::FnCall(..)))
                    {
                        body.unknown = true;
                    }
                    body.refs.insert(call.name.to_string());
                }
            }
            ASTNode::Expr(Expr::StringConstant(text, _)) if dead().is_none() => {
                body.refs.insert(text.to_string());
            }
            _ => {}
        }
        true
    });
    body
}

fn after_exit(exit: &'static str) -> String {
    format!("it comes after an unconditional `{exit}`")
}

/// Why the last node of `path` cannot run, judged by its ancestors: a branch of a constant
/// condition, or a statement after one that always leaves the block.
fn dead_in(path: &[ASTNode]) -> Option<String> {
    for pair in path.windows(2) {
        let ASTNode::Stmt(child) = pair[1] else {
            continue;
        };
        for (block, cond_dead) in blocks(pair[0]) {
            let Some(at) = block.iter().position(|s| ptr::eq(s, child)) else {
                continue;
            };
            if let Some(why) = cond_dead {
                return Some(why.to_owned());
            }
            if let Some(exit) = block[..at].iter().find_map(exits) {
                return Some(after_exit(exit));
            }
        }
    }
    None
}

/// The statement blocks directly under a node, each with why it never runs (if it never
/// does: a branch that a constant condition rules out).
fn blocks<'a>(node: ASTNode<'a>) -> Vec<(&'a [Stmt], Option<&'static str>)> {
    match node {
        ASTNode::Stmt(Stmt::Block(block)) => vec![(block.statements(), None)],
        ASTNode::Stmt(Stmt::If(flow, _)) => {
            let cond = constant(&flow.expr);
            vec![
                (
                    flow.body.statements(),
                    (cond == Some(false)).then_some("it is inside `if false`"),
                ),
                (
                    flow.branch.statements(),
                    (cond == Some(true)).then_some("it is in the `else` of `if true`"),
                ),
            ]
        }
        ASTNode::Stmt(Stmt::While(flow, _)) => vec![(
            flow.body.statements(),
            (constant(&flow.expr) == Some(false)).then_some("it is inside `while false`"),
        )],
        ASTNode::Stmt(Stmt::Do(flow, ..) | Stmt::TryCatch(flow, _)) => {
            vec![
                (flow.body.statements(), None),
                (flow.branch.statements(), None),
            ]
        }
        ASTNode::Stmt(Stmt::For(x, _)) => vec![(x.2.body.statements(), None)],
        ASTNode::Expr(Expr::Stmt(block)) => vec![(block.statements(), None)],
        _ => Vec::new(),
    }
}

fn constant(expr: &Expr) -> Option<bool> {
    match expr {
        Expr::BoolConstant(value, _) => Some(*value),
        _ => None,
    }
}

/// What a statement always does to the rest of its block, if it always leaves it:
/// `return`, `throw`, `fail(…)`, `break`, `continue`, or a block or an `if` whose every
/// way through does one of those. Loops and `try` are not looked into (it may not run,
/// or may be caught), which errs towards "may continue".
fn exits(stmt: &Stmt) -> Option<&'static str> {
    match stmt {
        Stmt::Return(_, flags, _) => Some(if flags.contains(ASTFlags::BREAK) {
            "throw"
        } else {
            "return"
        }),
        Stmt::BreakLoop(_, flags, _) => Some(if flags.contains(ASTFlags::BREAK) {
            "break"
        } else {
            "continue"
        }),
        Stmt::FnCall(call, _) if is_fail(call) => Some("fail"),
        Stmt::Expr(expr) => match &**expr {
            Expr::FnCall(call, _) if is_fail(call) => Some("fail"),
            Expr::Stmt(block) => block.iter().find_map(exits),
            _ => None,
        },
        Stmt::Block(block) => block.iter().find_map(exits),
        Stmt::If(flow, _) => {
            let body = flow.body.iter().find_map(exits);
            let branch = flow.branch.iter().find_map(exits);
            match constant(&flow.expr) {
                Some(true) => body,
                Some(false) => branch,
                None => branch.and(body),
            }
        }
        _ => None,
    }
}

fn is_fail(call: &FnCallExpr) -> bool {
    call.name == "fail" && call.namespace.is_empty()
}

/// The queues named by a literal in the `enqueue` calls of code that can run, in the main
/// body or in a function (wherever that function is called from).
fn enqueues(ast: &AST) -> BTreeSet<String> {
    let mut queues = BTreeSet::new();
    enqueues_in(&ast.clone_statements_only(), &mut queues);
    for f in ast.iter_functions() {
        let (name, arity) = (f.name.to_owned(), f.params.len());
        let mut one = ast.clone_functions_only();
        one.retain_functions(|_, _, n, a| n == name && a == arity);
        enqueues_in(&one, &mut queues);
    }
    queues
}

/// Adds the literal `enqueue` targets of one body (an AST holding only the main statements,
/// or only one function) to `queues`.
fn enqueues_in(ast: &AST, queues: &mut BTreeSet<String>) {
    let mut exited: Option<&'static str> = None;
    let mut top_dead = false;
    ast.walk(&mut |path: &[ASTNode]| {
        if let [ASTNode::Stmt(top)] = path {
            top_dead = exited.is_some();
            if exited.is_none() {
                exited = exits(top);
            }
        }
        let Some(node) = path.last() else {
            return true;
        };
        if let ASTNode::Expr(Expr::FnCall(call, _)) | ASTNode::Stmt(Stmt::FnCall(call, _)) = node {
            let literal = match call.args.first() {
                Some(Expr::StringConstant(queue, _)) => Some(queue),
                _ => None,
            };
            if let Some(queue) = literal.filter(|_| call.name == "enqueue") {
                if call.namespace.is_empty() && !top_dead && dead_in(path).is_none() {
                    queues.insert(queue.to_string());
                }
            }
        }
        true
    });
}

/// Which stores the script opens by literal name and what it does with them.
fn store_uses(ast: &AST) -> (BTreeMap<String, StoreUse>, bool) {
    let mut uses: BTreeMap<String, StoreUse> = BTreeMap::new();
    let mut unknown = false;
    // Variables bound by `let v = store("x")`, and what is done with variables.
    let mut bound: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut var_methods: Vec<(String, Option<String>)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let (Some(&node), parent) = (path.last(), path.len().checked_sub(2).map(|i| path[i]))
        else {
            return true;
        };
        let ASTNode::Expr(expr) = node else {
            return true;
        };
        match expr {
            Expr::FnCall(call, _) if !call.namespace.is_empty() => unknown = true,
            Expr::FnCall(call, _) if call.name == "store" => {
                let Some(Expr::StringConstant(name, _)) = call.args.first() else {
                    unknown = true;
                    return true;
                };
                let name = name.to_string();
                if let Some(method) = method_on(parent, expr) {
                    apply(uses.entry(name).or_default(), Some(&method));
                } else if let Some(ASTNode::Stmt(Stmt::Var(var, ..))) = parent {
                    if ptr::eq(&var.1, expr) {
                        bound
                            .entry(var.0.name.to_string())
                            .or_default()
                            .insert(name);
                    }
                } else {
                    apply(uses.entry(name).or_default(), None);
                }
            }
            Expr::Variable(var, ..) => {
                var_methods.push((var.1.to_string(), method_on(parent, expr)));
            }
            _ => {}
        }
        true
    });
    for (var, method) in var_methods {
        for store in bound.get(&var).into_iter().flatten() {
            apply(uses.entry(store.clone()).or_default(), method.as_deref());
        }
    }
    // A store bound to a variable and never used through it is still opened.
    for store in bound.into_values().flatten() {
        uses.entry(store).or_default();
    }
    (uses, unknown)
}

/// `x.method(…)` where `x` is `expr`: the method's name.
fn method_on(parent: Option<ASTNode>, expr: &Expr) -> Option<String> {
    let Some(ASTNode::Expr(Expr::Dot(dot, ..))) = parent else {
        return None;
    };
    if !ptr::eq(&dot.lhs, expr) {
        return None;
    }
    match &dot.rhs {
        Expr::MethodCall(call, _) => Some(call.name.to_string()),
        Expr::Dot(next, ..) => match &next.lhs {
            Expr::MethodCall(call, _) => Some(call.name.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Records one use of a store handle: a known method, or (`None`, or any other method) a
/// use the analysis cannot follow.
fn apply(store: &mut StoreUse, method: Option<&str>) {
    match method {
        Some("get" | "scan") => store.reads = Use::Yes,
        Some("set" | "remove" | "incr") => store.writes = Use::Yes,
        _ => {
            store.reads = store.reads.max(Use::Maybe);
            store.writes = store.writes.max(Use::Maybe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> ReplyFact {
        analyse(text).expect("parses").reply
    }

    fn dead(text: &str) -> (usize, String) {
        match reply(text) {
            ReplyFact::Unreachable { line, why } => (line, why),
            other => panic!("expected an unreachable reply, got {other:?} for\n{text}"),
        }
    }

    #[test]
    fn ordinary_replies_can_run() {
        for text in [
            "reply(1);",
            "if event.data.found { reply(1) } else { reply(2) }",
            "let x = event.data; if x == () { reply(#{ found: false }); return; } reply(x);",
            "fn answer(x) { reply(x) } answer(event.data);",
            "fn inner(x) { reply(x) } fn outer(x) { inner(x) } outer(1);",
            "fn answer(x) { reply(x) } let f = Fn(\"answer\"); f.call(1);",
            "let f = |x| reply(x); f.call(1);",
            "for i in 0..3 { if i == 2 { reply(i); break; } }",
            "switch event.data.kind { \"a\" => reply(1), _ => reply(2) }",
            "try { reply(risky()); } catch (e) { reply(#{ error: e }); }",
            "let r = if event.data.x { reply(1); 1 } else { 2 };",
            "event.data.reply();",
        ] {
            assert_eq!(reply(text), ReplyFact::Replies, "{text}");
        }
    }

    #[test]
    fn a_reply_after_an_unconditional_exit_cannot_run() {
        assert_eq!(
            dead("let x = 1;\nreturn;\nreply(x);"),
            (3, "it comes after an unconditional `return`".to_owned())
        );
        assert_eq!(
            dead("throw \"no\";\nreply(1);").1,
            "it comes after an unconditional `throw`"
        );
        assert_eq!(
            dead("fail(\"no\");\nreply(1);").1,
            "it comes after an unconditional `fail`"
        );
        assert_eq!(
            dead("if event.data.x { return; } else { throw 1; }\nreply(1);").1,
            "it comes after an unconditional `return`"
        );
        assert_eq!(
            dead("if event.data.x {\n  return;\n  reply(1);\n}").1,
            "it comes after an unconditional `return`"
        );
        assert_eq!(
            dead("while true {\n  break;\n  reply(1);\n}").1,
            "it comes after an unconditional `break`"
        );
    }

    #[test]
    fn a_reply_under_a_constant_condition_cannot_run() {
        assert_eq!(
            dead("if false {\n  reply(1);\n}"),
            (2, "it is inside `if false`".to_owned())
        );
        assert_eq!(
            dead("if true { log(1) } else { reply(1) }").1,
            "it is in the `else` of `if true`"
        );
        assert_eq!(
            dead("while false { reply(1) }").1,
            "it is inside `while false`"
        );
    }

    #[test]
    fn a_reply_in_a_function_nothing_calls_cannot_run() {
        assert_eq!(
            dead("fn answer(x) {\n  reply(x)\n}\nlog(\"no answer\");"),
            (2, "it is in `fn answer`, which nothing calls".to_owned())
        );
        // Called only from dead code, or only from another uncalled function.
        assert_eq!(dead("fn answer(x) { reply(x) }\nreturn;\nanswer(1);").0, 1);
        assert_eq!(
            dead("fn answer(x) { reply(x) } fn unused() { answer(1) } log(1);").1,
            "it is in `fn answer`, which nothing calls"
        );
    }

    #[test]
    fn conditional_exits_do_not_make_replies_dead() {
        for text in [
            "if event.data.x { return; }\nreply(1);",
            "if event.data.x { fail(\"no\") }\nreply(1);",
            "for i in 0..3 { return; }\nreply(1);",
            "try { throw 1; } catch { }\nreply(1);",
            "while event.data.x { break; }\nreply(1);",
        ] {
            assert_eq!(reply(text), ReplyFact::Replies, "{text}");
        }
    }

    #[test]
    fn code_the_analysis_cannot_see_is_unknown_not_dead() {
        assert_eq!(
            reply("import \"lib/q\" as q;\nq::answer(event);"),
            ReplyFact::Unknown
        );
        assert_eq!(
            reply("fn answer(x) { reply(x) }\nlet f = Fn(event.data.handler);\nf.call(1);"),
            ReplyFact::Unknown
        );
        // Dead module calls do not count.
        assert_eq!(
            dead("import \"lib/q\" as q;\nreturn;\nq::answer(event);\nreply(1);").0,
            4
        );
    }

    #[test]
    fn no_reply_anywhere_is_never() {
        assert_eq!(reply("log(\"reply(\");"), ReplyFact::Never);
        assert_eq!(reply("// reply(1)\nemit(\"a\", 1);"), ReplyFact::Never);
    }

    #[test]
    fn unparsable_scripts_give_no_facts() {
        assert!(analyse("let = ;").is_none());
    }

    fn stores(text: &str) -> (BTreeMap<String, StoreUse>, bool) {
        let facts = analyse(text).expect("parses");
        (facts.stores, facts.stores_unknown)
    }

    fn used(reads: Use, writes: Use) -> StoreUse {
        StoreUse { reads, writes }
    }

    #[test]
    fn direct_and_bound_store_calls_are_read_and_written() {
        let (uses, unknown) = stores(
            "let o = store(\"orders\");\no.set(\"a\", 1);\nlet x = o.get(\"a\");\nstore(\"counts\").incr(\"n\");\nlet v = store(\"views\").scan(\"p\").len();",
        );
        assert!(!unknown);
        assert_eq!(uses["orders"], used(Use::Yes, Use::Yes));
        assert_eq!(uses["counts"], used(Use::No, Use::Yes));
        assert_eq!(uses["views"], used(Use::Yes, Use::No));
        assert_eq!(uses.len(), 3);
    }

    #[test]
    fn handles_that_escape_may_be_read_and_written() {
        let (uses, _) = stores("fn keep(s) { s.set(\"a\", 1) } keep(store(\"orders\"));");
        assert_eq!(uses["orders"], used(Use::Maybe, Use::Maybe));
        let (uses, _) = stores("let o = store(\"orders\"); let k = o; o.get(\"x\");");
        assert_eq!(uses["orders"], used(Use::Yes, Use::Maybe));
        let (uses, _) = stores("let o = store(\"orders\");");
        assert_eq!(uses["orders"], used(Use::No, Use::No));
    }

    fn enqueued(text: &str) -> Vec<String> {
        analyse(text)
            .expect("parses")
            .enqueues
            .into_iter()
            .collect()
    }

    #[test]
    fn literal_enqueue_targets_of_live_code_are_listed() {
        assert_eq!(
            enqueued("enqueue(\"ship\", event.data);\nenqueue(\"remind\", event.data, \"30m\");"),
            ["remind", "ship"]
        );
        assert_eq!(
            enqueued("fn later(x) { enqueue(\"slow\", x) }\nif event.data.x { later(1); }"),
            ["slow"]
        );
        // A computed name, dead code and another function's namesake are not.
        assert!(enqueued("enqueue(event.data.queue, 1);").is_empty());
        assert!(enqueued("return;\nenqueue(\"never\", 1);").is_empty());
        assert!(enqueued("if false { enqueue(\"never\", 1); }").is_empty());
        assert!(enqueued("import \"lib/q\" as q;\nq::enqueue(\"other\", 1);").is_empty());
        assert!(enqueued("log(\"enqueue(\\\"no\\\", 1)\");").is_empty());
    }

    #[test]
    fn computed_store_names_and_modules_are_unknown() {
        assert!(stores("store(event.data.which).get(\"a\");").1);
        assert!(stores("import \"lib/s\" as s; s::save(event);").1);
        assert!(!stores("store(\"a\").get(\"b\");").1);
    }
}
