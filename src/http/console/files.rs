//! The console's editor: `GET /console/file?id=R/rel/path` reads a flow file or script,
//! `PUT` saves it and answers with the report of the reload it asks for.
//!
//! Files are named by ids, `R/relative/path`, R being the index of a flow folder
//! (`ApiContext::roots`). `resolve` is the only way from an id to a path: it refuses
//! anything that is not a `.toml` or `.rhai` file inside its folder, symlinks leading out
//! included, and `file_id` is its inverse for files the runtime names. A save is atomic
//! (a temp file in the same folder, synced, renamed over the file, its permissions kept)
//! and checked against the version the editor read (`If-Match`), so a change made on
//! disk meanwhile is never overwritten unseen. This module writes files and asks the one
//! reload path for a reload; it never reloads by itself and touches no runtime state.

use std::io::{ErrorKind, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::http::error::{Conflict, FileRefusal};
use crate::http::ingest::read_body;
use crate::http::{json_response, ApiError, ApiState};
use crate::runtime::reload::{ReloadCause, ReloadReport};

/// Saves are never refused below this size, whatever the producer's `body_limit`.
const MIN_FILE_LIMIT: usize = 1 << 20;

/// How long a save waits for its reload's report before answering without it.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Console saves are made one at a time, so that checking the version on disk and
/// replacing the file are not interleaved with another save of the same file.
static SAVES: Mutex<()> = Mutex::new(());

/// The routes of the editor.
pub(crate) fn routes<B: Broker>() -> Router<Arc<ApiState<B>>> {
    Router::new().route("/console/file", get(read_file::<B>).put(write_file::<B>))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    id: String,
}

/// The id of `path` (absolute), if it is a `.toml` or `.rhai` file inside one of `roots`
/// (the first that holds it). Lexical: `..` and `.` are folded, links are not followed
/// (`resolve`, which does follow them, refuses an id whose file lies outside its root).
pub(crate) fn file_id(roots: &[PathBuf], path: &Path) -> Option<String> {
    let path = folded(path);
    roots.iter().enumerate().find_map(|(index, root)| {
        let relative = path.strip_prefix(folded(root)).ok()?;
        let parts = relative
            .components()
            .map(|part| match part {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()?;
        let id = format!("{index}/{}", parts.join("/"));
        parse_id(&id).is_ok().then_some(id)
    })
}

/// The file an id names: the root's folder joined with the relative path, through links
/// only when they stay inside that folder. The file itself need not exist (a new file);
/// its folder must.
///
/// # Errors
/// The id breaks the syntax (absolute, `..`, an empty part, a backslash, NUL, not a
/// `.toml`/`.rhai` file), names no root, names a folder that does not exist, or leads
/// outside its root.
pub(crate) fn resolve(roots: &[PathBuf], id: &str) -> Result<PathBuf, FileRefusal> {
    let (index, parts) = parse_id(id)?;
    let root = roots
        .get(index)
        .and_then(|root| root.canonicalize().ok())
        .ok_or(FileRefusal::UnknownRoot)?;
    let (name, folders) = parts.split_last().ok_or(FileRefusal::EmptyPart)?;
    let folder = folders
        .iter()
        .fold(root.clone(), |path, part| path.join(part))
        .canonicalize()
        .map_err(|_| FileRefusal::Missing)?;
    if !folder.starts_with(&root) {
        return Err(FileRefusal::OutsideRoot);
    }
    let path = folder.join(name);
    let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(path);
    }
    // Save through the link to the file it names: replacing the link with a file would
    // quietly unshare what the link shared.
    let target = path.canonicalize().map_err(|_| FileRefusal::OutsideRoot)?;
    if !target.starts_with(&root) {
        return Err(FileRefusal::OutsideRoot);
    }
    if !editable(&target) {
        return Err(FileRefusal::Extension);
    }
    Ok(target)
}

/// The root's index and the parts of the relative path, checked.
fn parse_id(id: &str) -> Result<(usize, Vec<&str>), FileRefusal> {
    if id.contains('\0') {
        return Err(FileRefusal::Nul);
    }
    if id.contains('\\') {
        return Err(FileRefusal::Backslash);
    }
    if id.starts_with('/') {
        return Err(FileRefusal::Absolute);
    }
    let (root, relative) = id.split_once('/').ok_or(FileRefusal::NoRoot)?;
    // The index as `file_id` writes it: digits, no sign, no leading zero.
    let canonical = !root.is_empty()
        && root.bytes().all(|b| b.is_ascii_digit())
        && (root == "0" || !root.starts_with('0'));
    let index = root
        .parse::<usize>()
        .ok()
        .filter(|_| canonical)
        .ok_or(FileRefusal::NoRoot)?;
    let parts: Vec<&str> = relative.split('/').collect();
    if parts.contains(&"..") {
        return Err(FileRefusal::ParentPart);
    }
    if parts.iter().any(|part| part.is_empty() || *part == ".") {
        return Err(FileRefusal::EmptyPart);
    }
    if !editable(Path::new(relative)) {
        return Err(FileRefusal::Extension);
    }
    Ok((index, parts))
}

/// A flow file or a script, by its name.
fn editable(path: &Path) -> bool {
    let named = path
        .file_stem()
        .is_some_and(|stem| !stem.is_empty() && stem != ".");
    named
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "rhai")
        )
}

/// `path` with `.` parts dropped and `..` parts folded into their parent.
fn folded(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            part => out.push(part),
        }
    }
    out
}

/// A file's version: FNV-1a (64 bits) of its bytes, in hex. Not a defence against
/// anyone; it tells whether the bytes changed.
fn version(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The largest file the editor reads or saves.
fn file_limit<B: Broker>(state: &ApiState<B>) -> usize {
    state.config.body_limit.max(MIN_FILE_LIMIT)
}

/// Runs file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        warn!(error = %e, "console file work failed");
        ApiError::FileIo
    })?
}

/// An I/O failure the client cannot act on: logged, answered as `file_io`.
fn io_failure(doing: &str, path: &Path, error: &std::io::Error) -> ApiError {
    warn!(path = %path.display(), error = %error, "console: {doing} failed");
    ApiError::FileIo
}

/// `GET /console/file?id=…`: `{"id", "text", "version"}`, the version also as `ETag`.
async fn read_file<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Query(FileQuery { id }): Query<FileQuery>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let roots = state.runtime.roots.clone();
    let limit = file_limit(&state);
    let asked = id.clone();
    let text = blocking(move || {
        let path = resolve(&roots, &asked).map_err(|refusal| ApiError::BadFile {
            id: asked.clone(),
            refusal,
        })?;
        read_text(&path, &asked, limit)
    })
    .await?;
    let version = version(text.as_bytes());
    let body = serde_json::json!({"id": id, "text": text, "version": version});
    let mut response = json_response(StatusCode::OK, body.to_string());
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A file's text, if it is a file of at most `limit` bytes of UTF-8.
fn read_text(path: &Path, id: &str, limit: usize) -> Result<String, ApiError> {
    let missing = || ApiError::BadFile {
        id: id.to_owned(),
        refusal: FileRefusal::Missing,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(io_failure("reading a file", path, &e)),
    };
    if !metadata.is_file() {
        return Err(missing());
    }
    // What could not be saved back is not opened.
    if metadata.len() > limit as u64 {
        return Err(ApiError::TooLarge { limit });
    }
    let bytes = std::fs::read(path).map_err(|e| io_failure("reading a file", path, &e))?;
    String::from_utf8(bytes).map_err(|_| ApiError::NotUtf8 { what: "the file" })
}

/// What a save expects to find on disk.
enum Precondition {
    /// One of these versions (`If-Match: "v1", "v2"`).
    Versions(Vec<String>),
    /// Any version, as long as the file exists (`If-Match: *`).
    Exists,
    /// No file (`If-None-Match: *`): the save creates it.
    Absent,
}

impl Precondition {
    fn from_headers(headers: &HeaderMap) -> Result<Precondition, ApiError> {
        let text = |name| {
            headers
                .get(name)
                .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        };
        if let Some(none_match) = text(header::IF_NONE_MATCH) {
            if none_match == "*" {
                return Ok(Precondition::Absent);
            }
            return Err(ApiError::BadParameter {
                detail: "If-None-Match: only `*` (create a new file) is understood".to_owned(),
            });
        }
        let if_match = text(header::IF_MATCH).ok_or(ApiError::PreconditionRequired)?;
        if if_match == "*" {
            return Ok(Precondition::Exists);
        }
        // Strong tags only: a weak one (`W/"…"`) never matches.
        let versions = if_match
            .split(',')
            .map(|tag| tag.trim())
            .map(|tag| {
                tag.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(tag)
            })
            .map(str::to_owned)
            .collect();
        Ok(Precondition::Versions(versions))
    }
}

/// `PUT /console/file?id=…`: saves the body as the file if it is still the version read
/// (`If-Match`) or, with `If-None-Match: *`, creates it; then asks for a reload and
/// answers `{"version", "report"}`.
async fn write_file<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    Query(FileQuery { id }): Query<FileQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize_change(&headers)?;
    let precondition = Precondition::from_headers(&headers)?;
    let bytes = read_body(&headers, body, file_limit(&state)).await?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::NotUtf8 {
            what: "the request body",
        });
    }
    let version = version(&bytes);
    // Listening from before the write: a reload that another trigger (the file watcher)
    // makes of this very save is then seen too (see `covering`).
    let mut reports = state.runtime.status.reports.subscribe();
    let roots = state.runtime.roots.clone();
    let asked = id.clone();
    let path = blocking(move || {
        let path = resolve(&roots, &asked).map_err(|refusal| ApiError::BadFile {
            id: asked.clone(),
            refusal,
        })?;
        save(&path, &bytes, &precondition)?;
        Ok(path)
    })
    .await?;
    info!(file = %id, version, "file saved from the console");

    let Some(answer) = state
        .runtime
        .reload
        .request(ReloadCause::Console(path))
        .await
    else {
        // Nothing owns reloads (an embedded runtime): the save stands, unreported.
        let body = serde_json::json!({"version": version, "report": null});
        return Ok(json_response(StatusCode::OK, body.to_string()));
    };
    let pending = |detail: &str| {
        let body = serde_json::json!({
            "version": version,
            "report": {"result": "in_progress", "detail": detail},
        });
        Ok(json_response(StatusCode::ACCEPTED, body.to_string()))
    };
    // If the reload restarts this very producer, it waits for this request to finish:
    // answer as soon as the producer starts stopping, as `POST /admin/reload` does.
    let report = tokio::select! {
        report = tokio::time::timeout(RELOAD_WAIT, answer) => match report {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => return pending("the reload was not finished: edaflow is stopping"),
            Err(_) => return pending("the reload is taking long; its report will come on the console's stream"),
        },
        _ = state.stopping.cancelled() => {
            return pending("this HTTP producer restarts as part of the reload");
        }
    };
    let report = covering(report, &mut reports);
    let body = serde_json::json!({
        "version": version,
        "report": report_json(&state.runtime.roots, &report),
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

/// The report that says what the save did. Another trigger may have reloaded the saved
/// file before this save's own request ran (the watcher saw the rename first); the save's
/// own reload then finds nothing changed. The report of the reload that made the
/// generation now running, received since the save, is the one that tells.
fn covering(own: ReloadReport, reports: &mut broadcast::Receiver<ReloadReport>) -> ReloadReport {
    let ReloadReport::Unchanged { generation } = own else {
        return own;
    };
    let mut applied = None;
    loop {
        match reports.try_recv() {
            Ok(ReloadReport::Applied(outcome)) if outcome.generation == generation => {
                applied = Some(ReloadReport::Applied(outcome));
            }
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    applied.unwrap_or(own)
}

/// A reload report as JSON for the console: an invalid report's problems name files
/// inside a flow folder by their id, others by the path the diagnostic shows.
pub(crate) fn report_json(roots: &[PathBuf], report: &ReloadReport) -> serde_json::Value {
    let mut json = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    let ReloadReport::Invalid { problems, .. } = report else {
        return json;
    };
    let Some(shown) = json.get_mut("problems").and_then(|p| p.as_array_mut()) else {
        return json;
    };
    for (problem, shown) in problems.iter().zip(shown) {
        // Diagnostics name files relative to the working directory, as given.
        let id = problem
            .file
            .as_deref()
            .and_then(|file| std::path::absolute(file).ok())
            .and_then(|file| file_id(roots, &file));
        if let Some(id) = id {
            shown["file"] = serde_json::Value::String(id);
        }
    }
    json
}

/// Writes `bytes` as the file at `path` if `precondition` holds, atomically.
fn save(path: &Path, bytes: &[u8], precondition: &Precondition) -> Result<(), ApiError> {
    let _one_at_a_time = SAVES.lock().unwrap_or_else(PoisonError::into_inner);
    let on_disk = match std::fs::read(path) {
        Ok(on_disk) => Some(on_disk),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) if e.kind() == ErrorKind::IsADirectory => {
            return Err(ApiError::EditConflict {
                conflict: Conflict::Exists,
                version: None,
            })
        }
        Err(e) => return Err(io_failure("reading a file before saving it", path, &e)),
    };
    let conflict = |conflict, on_disk: Option<&[u8]>| ApiError::EditConflict {
        conflict,
        version: on_disk.map(version),
    };
    match (precondition, on_disk.as_deref()) {
        (Precondition::Absent, Some(on_disk)) => Err(conflict(Conflict::Exists, Some(on_disk))),
        (Precondition::Absent, None) => write_new(path, bytes),
        (Precondition::Exists | Precondition::Versions(_), None) => {
            Err(conflict(Conflict::Deleted, None))
        }
        (Precondition::Versions(versions), Some(on_disk))
            if !versions.contains(&version(on_disk)) =>
        {
            Err(conflict(Conflict::Changed, Some(on_disk)))
        }
        (Precondition::Exists | Precondition::Versions(_), Some(_)) => replace(path, bytes),
    }
}

/// A temp file next to `path`, holding `bytes`, synced. Its name is not a flow file's or
/// a script's, so loading a folder never picks it up.
fn staged(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile, ApiError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".edaflow-save");
    // As any new file is made: readable by others unless the umask says otherwise.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temp = builder
        .tempfile_in(folder)
        .map_err(|e| io_failure("creating a temp file", folder, &e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| io_failure("writing a temp file", temp.path(), &e))?;
    Ok(temp)
}

/// Replaces the file at `path` with `bytes` through a rename, keeping its permissions.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    let permissions = std::fs::metadata(path)
        .map_err(|e| io_failure("reading a file's permissions", path, &e))?
        .permissions();
    let temp = staged(path, bytes)?;
    temp.as_file()
        .set_permissions(permissions)
        .map_err(|e| io_failure("setting a temp file's permissions", temp.path(), &e))?;
    temp.persist(path)
        .map_err(|e| io_failure("renaming a temp file over a file", path, &e.error))?;
    sync_folder(path);
    Ok(())
}

/// Creates the file at `path` with `bytes`, unless a file appeared there meanwhile.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    let temp = staged(path, bytes)?;
    match temp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == ErrorKind::AlreadyExists => {
            return Err(ApiError::EditConflict {
                conflict: Conflict::Exists,
                version: std::fs::read(path).ok().map(|b| version(&b)),
            });
        }
        Err(e) => return Err(io_failure("creating a file", path, &e.error)),
    }
    sync_folder(path);
    Ok(())
}

/// Makes the rename durable. Best effort: not every file system syncs a folder.
fn sync_folder(path: &Path) {
    if let Some(folder) = path.parent() {
        if let Err(e) = std::fs::File::open(folder).and_then(|f| f.sync_all()) {
            tracing::debug!(folder = %folder.display(), error = %e, "syncing a folder failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("flows"), dir.join("more")]
    }

    #[test]
    fn ids_that_could_leave_their_root_are_refused() {
        let cases = [
            ("/etc/passwd", FileRefusal::Absolute),
            ("0/../x.rhai", FileRefusal::ParentPart),
            ("0/a/../../x.rhai", FileRefusal::ParentPart),
            ("0/a\\b.rhai", FileRefusal::Backslash),
            ("0/a\0.rhai", FileRefusal::Nul),
            ("0//x.rhai", FileRefusal::EmptyPart),
            ("0/./x.rhai", FileRefusal::EmptyPart),
            ("0/x.rhai/", FileRefusal::EmptyPart),
            ("0/x.txt", FileRefusal::Extension),
            ("0/x", FileRefusal::Extension),
            ("0/.rhai", FileRefusal::Extension),
            ("0/", FileRefusal::EmptyPart),
            ("x.rhai", FileRefusal::NoRoot),
            ("a/x.rhai", FileRefusal::NoRoot),
            ("00/x.rhai", FileRefusal::NoRoot),
            ("+0/x.rhai", FileRefusal::NoRoot),
            ("/0/x.rhai", FileRefusal::Absolute),
        ];
        for (id, refusal) in cases {
            assert_eq!(parse_id(id).err(), Some(refusal), "{id:?}");
        }
        assert_eq!(
            parse_id("1/handlers/a.b.rhai"),
            Ok((1, vec!["handlers", "a.b.rhai"]))
        );
    }

    #[test]
    fn file_ids_name_files_by_root_and_relative_path() {
        let dir = Path::new("/srv/app");
        let roots = roots(dir);
        assert_eq!(
            file_id(&roots, Path::new("/srv/app/flows/orders.toml")).as_deref(),
            Some("0/orders.toml")
        );
        assert_eq!(
            file_id(&roots, Path::new("/srv/app/more/./h/../handlers/x.rhai")).as_deref(),
            Some("1/handlers/x.rhai")
        );
        // Outside every root, or not an editable file.
        assert_eq!(file_id(&roots, Path::new("/srv/app/x.rhai")), None);
        assert_eq!(file_id(&roots, Path::new("/srv/app/flows/../x.rhai")), None);
        assert_eq!(file_id(&roots, Path::new("/srv/app/flows/x.txt")), None);
        assert_eq!(file_id(&roots, Path::new("/srv/app/flows")), None);
    }

    #[test]
    fn resolve_stays_inside_the_root_through_links() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let roots = roots(dir.path());
        let outside = dir.path().join("outside");
        for folder in [&roots[0].join("handlers"), &roots[1], &outside] {
            std::fs::create_dir_all(folder).expect("mkdir");
        }
        std::fs::write(roots[0].join("handlers/a.rhai"), "").expect("write");
        std::fs::write(outside.join("secret.rhai"), "").expect("write");
        std::fs::write(roots[0].join("notes.txt"), "").expect("write");
        let link = |target: &Path, at: &str| {
            std::os::unix::fs::symlink(target, roots[0].join(at)).expect("symlink");
        };
        link(&outside.join("secret.rhai"), "secret.rhai");
        link(&outside, "out");
        link(&roots[0].join("handlers/a.rhai"), "alias.rhai");
        link(&roots[0].join("notes.txt"), "notes.rhai");
        link(&outside.join("nothing.rhai"), "dangling.rhai");

        let root = roots[0].canonicalize().expect("canonical");
        assert_eq!(
            resolve(&roots, "0/handlers/a.rhai"),
            Ok(root.join("handlers/a.rhai"))
        );
        // A new file in an existing folder.
        assert_eq!(
            resolve(&roots, "0/handlers/new.rhai"),
            Ok(root.join("handlers/new.rhai"))
        );
        // A link inside the root is followed to its file.
        assert_eq!(
            resolve(&roots, "0/alias.rhai"),
            Ok(root.join("handlers/a.rhai"))
        );
        assert_eq!(
            resolve(&roots, "0/secret.rhai"),
            Err(FileRefusal::OutsideRoot)
        );
        assert_eq!(
            resolve(&roots, "0/out/secret.rhai"),
            Err(FileRefusal::OutsideRoot)
        );
        assert_eq!(
            resolve(&roots, "0/dangling.rhai"),
            Err(FileRefusal::OutsideRoot)
        );
        assert_eq!(resolve(&roots, "0/notes.rhai"), Err(FileRefusal::Extension));
        assert_eq!(
            resolve(&roots, "0/nowhere/x.rhai"),
            Err(FileRefusal::Missing)
        );
        assert_eq!(resolve(&roots, "5/x.rhai"), Err(FileRefusal::UnknownRoot));
    }

    #[test]
    fn a_save_reloaded_first_by_another_trigger_reports_that_reload() {
        use crate::flow::diff::FlowDiff;
        use crate::runtime::ReloadOutcome;

        let applied =
            |generation| ReloadReport::Applied(ReloadOutcome::of(&FlowDiff::default(), generation));
        let (reports, mut seen) = broadcast::channel(8);
        reports.send(applied(2)).expect("a receiver");
        let third = applied(3);
        reports.send(third.clone()).expect("a receiver");
        let own = ReloadReport::Unchanged { generation: 3 };
        reports.send(own.clone()).expect("a receiver");
        assert_eq!(covering(own.clone(), &mut seen), third);
        // Nothing since the save made the running generation: the save changed nothing.
        assert_eq!(covering(own.clone(), &mut seen), own);
        // A report that is not `unchanged` is the save's own.
        reports.send(applied(4)).expect("a receiver");
        let invalid = ReloadReport::Invalid {
            generation: 4,
            diagnostic: String::new(),
            problems: Vec::new(),
        };
        assert_eq!(covering(invalid.clone(), &mut seen), invalid);
    }

    #[test]
    fn versions_are_fnv1a_in_hex() {
        assert_eq!(version(b""), "cbf29ce484222325");
        assert_eq!(version(b"a"), "af63dc4c8601ec8c");
        assert_ne!(version(b"ab"), version(b"ba"));
    }

    #[test]
    fn saves_keep_permissions_and_refuse_a_stale_version() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("a.rhai");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let stale = Precondition::Versions(vec![version(b"older")]);
        match save(&path, b"new", &stale) {
            Err(ApiError::EditConflict {
                conflict: Conflict::Changed,
                version: Some(on_disk),
            }) => assert_eq!(on_disk, version(b"old")),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).expect("read"), b"old");

        let read = Precondition::Versions(vec![version(b"old")]);
        save(&path, b"new", &read).expect("saved");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);

        assert!(matches!(
            save(&path, b"again", &Precondition::Absent),
            Err(ApiError::EditConflict {
                conflict: Conflict::Exists,
                ..
            })
        ));
        let new = dir.path().join("b.toml");
        save(&new, b"[flow]", &Precondition::Absent).expect("created");
        assert_eq!(std::fs::read(&new).expect("read"), b"[flow]");
        assert!(matches!(
            save(&dir.path().join("c.rhai"), b"x", &Precondition::Exists),
            Err(ApiError::EditConflict {
                conflict: Conflict::Deleted,
                version: None
            })
        ));
        // No temp file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.rhai", "b.toml"]);
    }
}
