//! `edaflow completions` and `edaflow man`: shell completion scripts and roff man pages,
//! both generated from the clap definitions in `crate::cli`, so they never drift from
//! what the binary accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Error;
use crate::cli::Cli;

/// What writing man pages into a folder can fail on.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InstallError {
    #[error("cannot write man pages into {}", path.display())]
    #[diagnostic(
        code(edaflow::man::write),
        help("give a folder you can write to, e.g. ~/.local/share/man/man1")
    )]
    ManDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<(), Error> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "edaflow", &mut script);
    write_stdout(&script)
}

/// Prints edaflow(1) on stdout, or writes it and a page per subcommand (edaflow-run(1), …)
/// into `dir`, creating the folder when missing.
pub fn man(dir: Option<&Path>) -> Result<(), Error> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map_err(|source| Error::Stdout { source })?;
        return write_stdout(&page);
    };
    let failed = |source| InstallError::ManDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(command, dir).map_err(failed)?;
    println!(
        "wrote the man pages (edaflow.1, edaflow-run.1, …) into {}",
        dir.display()
    );
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Stdout { source })
}
