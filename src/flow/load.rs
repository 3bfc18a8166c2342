//! Reads flow files (or folders of them) into a validated `FlowSet`, collecting every
//! problem of every file as a diagnostic with a span instead of stopping at the first.
//!
//! The work is split up: `reader` reads typed values out of TOML (`fields` one table at a
//! time), `sections` knows the flow-file schema, `findings` collects what was found, and
//! `check` merges the files and checks what spans several of them. This module finds the
//! files and ties the steps together. It reads script files as text and never parses or
//! compiles them: that is the `script` module's, and the checks that need what scripts do
//! (the CQRS lint, `flow::lint`) run once they are compiled. It never starts anything.

mod check;
mod fields;
pub(crate) mod findings;
mod reader;
pub(crate) mod sections;
#[cfg(test)]
mod tests;
mod toml_tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::flow::diagnostic::{source_file, FlowError, FlowReport, FlowWarning};
use crate::flow::lint::LintInput;
use crate::flow::model::FlowSet;

use self::findings::Findings;
use self::reader::FlowSource;

/// A successfully loaded flow set, with its warnings and every file it read.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated flows of every file, merged.
    pub flows: FlowSet,
    /// Problems that do not make the set invalid, such as a topic nobody consumes.
    pub warnings: Vec<FlowWarning>,
    /// Every file read (flow files and scripts), for the watcher.
    pub files_read: Vec<PathBuf>,
    /// Where subscriber patterns and store names were written, for `flow::lint`.
    pub lint: LintInput,
}

/// Loads the given flow files and folders (a folder means every `*.toml` directly in it,
/// in name order). Relative paths inside a flow file (scripts, `lines` paths) resolve
/// against that file's folder. Diagnostics name files by the path as given, so
/// relative paths in, relative paths out.
///
/// No path at all gives an empty set. A file reached twice (as itself and through its
/// folder) is read once.
///
/// # Errors
/// Every problem found, at once: missing or unreadable paths, TOML syntax, unknown keys,
/// wrong types, bad values, missing scripts, duplicate names and dangling queue names.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, FlowReport> {
    load_with_env(paths, &crate::flow::env::process_env)
}

/// `load`, with `${VAR}` references (in the keys that take them) looked up with `env`
/// rather than in the process environment.
///
/// # Errors
/// As `load`, and a reference to a variable `env` does not know (without a default) or a
/// malformed reference.
pub fn load_with_env(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, FlowReport> {
    let mut found = Findings::default();
    let files = discover(paths, &mut found);

    let mut sources = Vec::with_capacity(files.len());
    for (shown, absolute) in files {
        match std::fs::read_to_string(&shown) {
            Ok(text) => {
                found.read(&absolute);
                let text: Arc<str> = text.into();
                sources.push(FlowSource {
                    index: sources.len(),
                    src: Arc::new(source_file(shown.display().to_string(), text.clone())),
                    shown,
                    absolute,
                    text,
                });
            }
            Err(error) => found.push(
                0,
                0,
                FlowError::ReadFailed {
                    path: shown,
                    source: Arc::new(error),
                },
            ),
        }
    }

    let raw: Vec<_> = sources
        .iter()
        .map(|source| sections::parse_file(source, &mut found, env))
        .collect();
    let shown: Vec<String> = sources
        .iter()
        .map(|s| s.shown.display().to_string())
        .collect();
    let flows = check::merge(raw, &shown, &mut found);

    if !found.is_clean() {
        let given: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(FlowReport::new(&given, found.into_errors()));
    }
    let mut warnings = check::warnings(&found.refs);
    warnings.extend(check::emit_loops(&flows, &found.refs));
    // A pub/sub topic is a plain Redis channel that other processes (the article's tool,
    // redis-cli) publish to and read from, so this set alone does not tell.
    warnings.retain(|warning| match warning {
        FlowWarning::NeverProduced { topic, .. } | FlowWarning::NeverConsumed { topic, .. } => {
            flows.topic_mode(topic) != crate::flow::model::TopicMode::Pubsub
        }
        // Other kinds of warning keep coming.
        _ => true,
    });
    warnings.extend(found.take_warnings());
    let lint = LintInput {
        subscriber_patterns: std::mem::take(&mut found.refs.subscriber_patterns),
        store_names: std::mem::take(&mut found.refs.store_names),
    };
    Ok(Loaded {
        flows,
        warnings,
        files_read: found.files_read,
        lint,
    })
}

/// Expands folders into their `*.toml` files; returns each file as given (for messages)
/// and absolute (for the model and the watcher), without repeats.
fn discover(paths: &[PathBuf], found: &mut Findings) -> Vec<(PathBuf, PathBuf)> {
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for path in paths {
        for file in expand(path, found) {
            // Canonical paths catch `flows/a.toml` given both alone and through `flows/`.
            let identity = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.contains(&identity) {
                continue;
            }
            seen.push(identity);
            let absolute = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
            files.push((file, absolute));
        }
    }
    files
}

/// One path given by the user: a file is itself, a folder its `*.toml` files.
fn expand(path: &Path, found: &mut Findings) -> Vec<PathBuf> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let path = path.to_path_buf();
            found.push(0, 0, FlowError::PathNotFound { path });
            return Vec::new();
        }
        Err(error) => {
            let path = path.to_path_buf();
            let source = Arc::new(error);
            found.push(0, 0, FlowError::ReadFailed { path, source });
            return Vec::new();
        }
    };
    if !metadata.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => {
            let path = path.to_path_buf();
            let source = Arc::new(error);
            found.push(0, 0, FlowError::ReadFailed { path, source });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        let path = path.to_path_buf();
        found.push(0, 0, FlowError::NoFlowFiles { path });
    }
    files
}
