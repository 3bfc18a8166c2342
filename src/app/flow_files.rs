//! The commands that read flow files without running them: `edaflow validate` and
//! `edaflow test`, and the loading every flow command shares (warnings go to stderr,
//! errors come back as one report). With `--format json` both print one JSON document
//! (`json`) that carries the warnings and errors too; `test --junit` also writes a JUnit
//! report (`junit`).

use std::path::{Path, PathBuf};

use super::json::{TestRunJson, ValidateJson};
use super::{json, junit, render, Error};
use crate::cli::OutputFormat;
use crate::flow::diagnostic::{problems, render as render_diagnostic, warning_problems};
use crate::runtime::{prepare, Prepared};

/// Loads and compiles, printing warnings to stderr.
pub(super) fn load(flows: &[PathBuf]) -> Result<Prepared, Error> {
    let prepared = prepare(flows)?;
    print_warnings(&prepared);
    Ok(prepared)
}

fn print_warnings(prepared: &Prepared) {
    for warning in &prepared.warnings {
        eprintln!("{}", render_diagnostic(warning, terminal_width()));
    }
}

/// The width diagnostics wrap at: `COLUMNS`, else the terminal's (stdout's), else 100.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
        .unwrap_or(100)
}

/// `edaflow validate`: loads and compiles, and prints what the flows declare (or, as
/// JSON, every diagnostic).
pub(super) fn validate(flows: &[PathBuf], format: OutputFormat) -> Result<(), Error> {
    match format {
        OutputFormat::Text => {
            let prepared = load(flows)?;
            render::emit(&render::validation(&prepared))
        }
        OutputFormat::Json => match prepare(flows) {
            Ok(prepared) => {
                let warnings = warning_problems(&prepared.warnings);
                render::emit(&json::to_text(&ValidateJson::valid(&prepared, warnings)))
            }
            Err(report) => {
                render::emit(&json::to_text(&ValidateJson::invalid(problems(&report))))?;
                Err(Error::Reported {
                    summary: report.summary,
                })
            }
        },
    }
}

/// `edaflow test`: runs the flows' `[[tests]]` on paused virtual time and prints a report
/// (text or JSON), and writes a JUnit report when asked.
pub(super) fn test(
    flows: &[PathBuf],
    format: OutputFormat,
    junit_path: Option<&Path>,
) -> Result<(), Error> {
    let prepared = match prepare(flows) {
        Ok(prepared) => prepared,
        Err(report) => {
            if let Some(path) = junit_path {
                let rendered = render_diagnostic(&report, terminal_width());
                write_junit(path, &junit::load_failure(&report.summary, &rendered))?;
            }
            if format == OutputFormat::Json {
                render::emit(&json::to_text(&TestRunJson::invalid(problems(&report))))?;
                return Err(Error::Reported {
                    summary: report.summary,
                });
            }
            return Err(report.into());
        }
    };
    if format == OutputFormat::Text {
        print_warnings(&prepared);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(Error::Io)?;
    let reports = rt.block_on(crate::flowtest::run_all(&prepared))?;
    if let Some(path) = junit_path {
        write_junit(path, &junit::report(&reports))?;
    }
    match format {
        OutputFormat::Text => render::emit(&render::test_reports(&reports))?,
        OutputFormat::Json => {
            let warnings = warning_problems(&prepared.warnings);
            render::emit(&json::to_text(&TestRunJson::of(&reports, warnings)))?;
        }
    }
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    if failed > 0 {
        return Err(Error::TestsFailed {
            failed,
            total: reports.len(),
        });
    }
    Ok(())
}

/// Writes the JUnit report, creating its folder (CI paths such as `target/reports/` may
/// not exist yet).
fn write_junit(path: &Path, xml: &str) -> Result<(), Error> {
    let write = || {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, xml)
    };
    write().map_err(|source| Error::Report {
        path: path.to_owned(),
        source,
    })
}
