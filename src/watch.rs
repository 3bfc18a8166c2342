//! File watching → reload requests. Watches the folders that hold every flow file, script
//! and imported module (plus the folders given on the command line), so atomic saves
//! (write, then rename over), truncate-and-write, deletion then re-creation, and files
//! that do not exist yet are all seen. Events are debounced (a trailing quiet period), so
//! one save is one reload. The watcher never touches runtime state: it only sends a
//! `ReloadRequest` to the one reload path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::runtime::reload::{ReloadCause, ReloadRequest};

/// The default trailing quiet period.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(15);

/// Why watching could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot watch files for changes")]
#[diagnostic(
    code(edaflow::watch::start),
    help("run with --no-watch to do without hot reload")
)]
pub struct WatchError {
    #[source]
    source: notify::Error,
}

/// A running watcher. Dropping it stops the OS watches.
pub struct FileWatcher {
    watcher: Mutex<RecommendedWatcher>,
    /// Folders watched now.
    dirs: Mutex<BTreeSet<PathBuf>>,
    /// Folders given on the command line: any `*.toml` appearing there is a change.
    roots: Vec<PathBuf>,
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether a path can matter to a flow set: flow files, scripts, topic schemas.
fn interesting(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("toml" | "rhai" | "json")
    )
}

impl FileWatcher {
    /// Starts watching `files` (and the `roots`: flow files and folders from the command
    /// line), sending debounced reload requests to `requests` until `token` is cancelled.
    ///
    /// # Errors
    /// When the OS watch facility cannot be set up.
    pub fn spawn(
        roots: &[PathBuf],
        files: &[PathBuf],
        debounce: Duration,
        requests: mpsc::Sender<ReloadRequest>,
        tracker: &TaskTracker,
        token: CancellationToken,
    ) -> Result<Arc<FileWatcher>, WatchError> {
        // Any event will do to trigger a reload, so a full channel may drop some.
        let (raw_tx, raw_rx) = mpsc::channel::<notify::Event>(4096);
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    let _ = raw_tx.try_send(event);
                }
                Err(e) => warn!(error = %e, "file watcher error"),
            })
            .map_err(|source| WatchError { source })?;
        let roots: Vec<PathBuf> = roots.iter().map(|r| absolute(r)).collect();
        let this = Arc::new(FileWatcher {
            watcher: Mutex::new(watcher),
            dirs: Mutex::new(BTreeSet::new()),
            roots,
        });
        this.update(files);
        let span = tracing::info_span!("watcher");
        tracker
            .spawn(debounce_loop(this.clone(), raw_rx, debounce, requests, token).instrument(span));
        Ok(this)
    }

    /// Re-targets the watches after a reload: the folders of `files`, plus the roots.
    pub fn update(&self, files: &[PathBuf]) {
        let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
        for root in &self.roots {
            if root.is_dir() {
                wanted.insert(root.clone());
            } else if let Some(parent) = root.parent() {
                wanted.insert(parent.to_path_buf());
            }
        }
        for file in files {
            if let Some(parent) = absolute(file).parent() {
                wanted.insert(parent.to_path_buf());
            }
        }
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        for gone in dirs.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for new in wanted.difference(&dirs) {
            if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
                warn!(dir = %new.display(), error = %e, "cannot watch folder");
            }
        }
        *dirs = wanted;
    }

    fn relevant(&self, event: &notify::Event) -> Vec<PathBuf> {
        if matches!(event.kind, EventKind::Access(_)) {
            return Vec::new();
        }
        event
            .paths
            .iter()
            .filter(|p| interesting(p))
            .cloned()
            .collect()
    }
}

async fn debounce_loop(
    watcher: Arc<FileWatcher>,
    mut raw: mpsc::Receiver<notify::Event>,
    debounce: Duration,
    requests: mpsc::Sender<ReloadRequest>,
    token: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => return,
            event = raw.recv() => match event { Some(e) => e, None => return },
        };
        let mut paths = watcher.relevant(&first);
        if paths.is_empty() {
            continue;
        }
        let noticed = Instant::now();
        // Trailing quiet period: wait until no event for `debounce`.
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(debounce) => break,
                event = raw.recv() => match event {
                    Some(e) => paths.extend(watcher.relevant(&e)),
                    None => return,
                },
            }
        }
        paths.sort();
        paths.dedup();
        debug!(?paths, "files changed");
        let request = ReloadRequest {
            cause: ReloadCause::Files(paths),
            noticed,
            reply: None,
        };
        if requests.send(request).await.is_err() {
            return;
        }
    }
}
