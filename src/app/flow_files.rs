//! The commands that read flow files without running them: `edaflow validate` and
//! `edaflow test`, and the loading every flow command shares (warnings go to stderr,
//! errors come back as one report).

use std::path::PathBuf;

use super::{render, Error};
use crate::flow::diagnostic::render as render_diagnostic;
use crate::runtime::{prepare, Prepared};

/// Loads and compiles, printing warnings to stderr.
pub(super) fn load(flows: &[PathBuf]) -> Result<Prepared, Error> {
    let prepared = prepare(flows)?;
    for warning in &prepared.warnings {
        eprintln!("{}", render_diagnostic(warning, terminal_width()));
    }
    Ok(prepared)
}

/// The width diagnostics wrap at: `COLUMNS`, else the terminal's (stdout's), else 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
        .unwrap_or(100)
}

/// `edaflow validate`: loads and compiles, and prints what the flows declare.
pub(super) fn validate(flows: &[PathBuf]) -> Result<(), Error> {
    let prepared = load(flows)?;
    render::emit(&render::validation(&prepared))
}

/// `edaflow test`: runs the flows' `[[tests]]` on paused virtual time and prints a report.
pub(super) fn test(flows: &[PathBuf]) -> Result<(), Error> {
    let prepared = load(flows)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(Error::Io)?;
    let reports = rt.block_on(crate::flowtest::run_all(&prepared))?;
    render::emit(&render::test_reports(&reports))?;
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    if failed > 0 {
        return Err(Error::TestsFailed {
            failed,
            total: reports.len(),
        });
    }
    Ok(())
}
