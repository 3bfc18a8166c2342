//! `edaflow init`: writes a small flow folder that `validate`, `test` and `run` accept as
//! it stands: an HTTP producer, a subscriber whose Rhai handler emits, a subscriber that
//! logs, and a `[[tests]]` flow test, with the flow-file schema for editors beside it. It
//! never overwrites a file unless told to.

use std::path::{Path, PathBuf};

use super::Error;

const FLOW: &str = r#"#:schema ./flow.schema.json
# A flow to start from: POST a greeting request, a Rhai handler answers it.
#
#   edaflow run .
#   curl -X POST -H "Content-Type: application/json" -d '{"name": "Ada"}' \
#     http://127.0.0.1:3000/topics/greetingRequested
#
# Every key is described in the flow files reference (docs/flow-files.md). The first line
# points editors (Taplo, Even Better TOML) at the flow-file schema written beside this file;
# after upgrading edaflow, refresh it with `edaflow schema > flow.schema.json`.

[flow]
name = "hello"

[producers.api]
kind = "http"
listen = "127.0.0.1:3000"

[subscribers.greet]
topic = "greetingRequested"
script = "handlers/greet.rhai"
emits = ["greeted"]

[subscribers.log_greetings]       # no script: prints each event it receives
topic = "greeted"

[[tests]]
name = "a greeting request is answered"
publish = { topic = "greetingRequested", data = { name = "Ada" } }
expect = [{ topic = "greeted", data = { text = "Hello, Ada!" } }]
"#;

const HANDLER: &str = r#"// greetingRequested: answer with a greeting (the handler API is in docs/handlers.md).
let name = event.data.name ?? "world";
emit("greeted", #{ text: `Hello, ${name}!` });
"#;

/// The flow-file schema of this very binary (the committed copy equals `edaflow schema`,
/// which a test checks), so the editor's checks match the loader that runs the flow, with
/// no network.
const SCHEMA: &str = include_str!("../../docs/flow.schema.json");

/// The files init writes, relative to its folder.
const FILES: [(&str, &str); 3] = [
    ("flow.toml", FLOW),
    ("handlers/greet.rhai", HANDLER),
    ("flow.schema.json", SCHEMA),
];

/// What `edaflow init` can fail on.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InitError {
    #[error("init would overwrite files that exist in {}: {}", dir.display(), names(existing))]
    #[diagnostic(
        code(edaflow::init::exists),
        help("choose another folder, or pass --force to overwrite these files")
    )]
    Exists {
        dir: PathBuf,
        existing: Vec<PathBuf>,
    },
    #[error("cannot write {}", path.display())]
    #[diagnostic(code(edaflow::init::write))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the flow folder into `dir` (created if missing) and prints the next steps.
pub fn init(dir: &Path, force: bool) -> Result<(), Error> {
    let existing: Vec<PathBuf> = FILES
        .iter()
        .map(|(name, _)| dir.join(name))
        .filter(|path| path.exists())
        .collect();
    if !existing.is_empty() && !force {
        return Err(InitError::Exists {
            dir: dir.to_path_buf(),
            existing,
        }
        .into());
    }
    for (name, text) in FILES {
        let path = dir.join(name);
        let written = match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
        .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| InitError::Write { path, source })?;
    }
    let shown = dir.display();
    println!(
        "created {shown}/flow.toml, {shown}/handlers/greet.rhai and {shown}/flow.schema.json\n\n\
         next steps:\n  \
         edaflow validate {shown}     check the flow and its handler\n  \
         edaflow test {shown}         run its [[tests]]\n  \
         edaflow run {shown}          serve it on 127.0.0.1:3000, then:\n  \
         curl -X POST -H \"Content-Type: application/json\" -d '{{\"name\": \"Ada\"}}' \\\n    \
         http://127.0.0.1:3000/topics/greetingRequested"
    );
    Ok(())
}
