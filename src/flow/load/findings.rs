//! What a load has found so far, across files: the errors (kept with their position so
//! they can be reported in file order), the files read, and the topic and queue references
//! that `check` can only judge once every file is in.
//!
//! Plain collections: nothing here reads TOML or decides what is wrong.

use std::path::{Path, PathBuf};

use miette::SourceSpan;

use crate::flow::diagnostic::{FlowError, FlowWarning, SharedSource};
use crate::pattern::TopicPattern;

/// Everything found while loading, across files: errors (with where they are, so they can be
/// reported in file order), the files read, and the topic and queue references that are
/// only checked once every file is in.
#[derive(Default)]
pub(crate) struct Findings {
    /// `(file index, byte offset, error)`; errors without a file use `(0, 0)`.
    errors: Vec<(usize, usize, FlowError)>,
    /// Warnings found while checking (the CQRS lint), kept the same way.
    warnings: Vec<(usize, usize, FlowWarning)>,
    /// Every flow and script file read, absolute, without repeats.
    pub files_read: Vec<PathBuf>,
    pub refs: TopicRefs,
}

impl Findings {
    /// Records an error found at `offset` in file number `file`.
    pub fn push(&mut self, file: usize, offset: usize, error: FlowError) {
        self.errors.push((file, offset, error));
    }

    /// Records a warning found at `offset` in file number `file`.
    pub fn warn(&mut self, file: usize, offset: usize, warning: FlowWarning) {
        self.warnings.push((file, offset, warning));
    }

    /// The recorded warnings in file order, then in source order within a file.
    pub fn take_warnings(&mut self) -> Vec<FlowWarning> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|(file, offset, _)| (*file, *offset));
        warnings.into_iter().map(|(_, _, w)| w).collect()
    }

    /// True when no error has been found so far.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// Notes a file as read (for the watcher).
    pub fn read(&mut self, path: &Path) {
        if !self.files_read.iter().any(|p| p == path) {
            self.files_read.push(path.to_path_buf());
        }
    }

    /// The errors in file order, then in source order within a file.
    pub fn into_errors(mut self) -> Vec<FlowError> {
        // Stable: errors at the same place keep the order they were found in.
        self.errors
            .sort_by_key(|(file, offset, _)| (*file, *offset));
        self.errors.into_iter().map(|(_, _, e)| e).collect()
    }
}

/// A value with the file and span it came from, for checks that run after all files are read.
#[derive(Clone, Debug)]
pub(crate) struct Located<T> {
    pub value: T,
    pub file: usize,
    pub src: SharedSource,
    pub span: SourceSpan,
}

/// The topic and queue references of the whole set, checked once every file is read.
#[derive(Default)]
pub(crate) struct TopicRefs {
    /// `queue = "…"` of subscribers and `to = "…"` of relays.
    pub queues_used: Vec<Located<String>>,
    /// Topics that something emits and that should have a consumer: `emits`, producer topics,
    /// chain `on_timeout`.
    pub emitted: Vec<Located<String>>,
    /// Topics that are produced but never warned about: dead letters, `deferred_topic`.
    pub produced_quietly: Vec<String>,
    /// Subscriber `topic`/`topics` and relay `from`.
    pub consumed: Vec<Located<TopicPattern>>,
    /// An `http` producer can publish to any topic.
    pub has_http: bool,
    /// Each subscriber's topic patterns, with the subscriber's name (for the CQRS lint).
    pub subscriber_patterns: Vec<(String, Located<TopicPattern>)>,
    /// Every store's name where it was declared (for the CQRS lint).
    pub store_names: Vec<Located<String>>,
    /// Each subscriber's `emits`, with the subscriber's name (for the emit-loop warning).
    pub subscriber_emits: Vec<(String, Located<String>)>,
    /// Every chain step: (chain name, position, the step), for the link check.
    pub chain_steps: Vec<(String, usize, Located<String>)>,
    /// Every `renamed_from`: (section, the component's name, the former name).
    pub renames: Vec<(&'static str, String, Located<String>)>,
}
