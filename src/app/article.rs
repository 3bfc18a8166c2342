//! `edaflow api-server` and `edaflow consumer`: the article's commands, each an
//! `edaflow run` of one of the built-in flows of `crate::article` (written to a temporary
//! folder) on Redis, in the namespace `article`, without watching files. The flows and
//! their substitutions are `crate::article`'s; this module only runs them.

use std::ffi::OsString;

use clap::Parser as _;
use tracing::info;

use super::run::run_blocking;
use super::Error;
use crate::article::{ArticleCommand, ArticleError};
use crate::cli::{ApiServerArgs, ConsumerArgs, RunArgs};

/// `edaflow api-server`.
pub(super) fn api_server(args: ApiServerArgs) -> Result<(), Error> {
    run_article(
        ArticleCommand::ApiServer,
        &args.redis.redis,
        Some(args.listen),
    )
}

/// `edaflow consumer`: `--topic T`, `-d --master` or `-d`.
pub(super) fn consumer(args: ConsumerArgs) -> Result<(), Error> {
    let command = match (args.topic, args.master) {
        (Some(topic), _) => ArticleCommand::Topic(topic),
        (None, true) => ArticleCommand::Master,
        (None, false) => ArticleCommand::Worker { poll: args.poll },
    };
    run_article(command, &args.redis.redis, None)
}

/// `edaflow run`'s options alone: the built-in command line is parsed with them.
#[derive(clap::Parser)]
#[command(name = "edaflow run")]
struct BuiltinRun {
    #[command(flatten)]
    args: RunArgs,
}

/// One of the article's commands: `edaflow run` of its built-in flow, written to a
/// temporary folder, on Redis (namespace `article`), without watching files.
fn run_article(command: ArticleCommand, redis: &str, listen: Option<String>) -> Result<(), Error> {
    let text = command.flow_text()?;
    let dir = tempfile::Builder::new()
        .prefix("edaflow-article-")
        .tempdir()
        .map_err(|source| ArticleError::Write { source })?;
    let path = dir.path().join(command.file_name());
    std::fs::write(&path, text).map_err(|source| ArticleError::Write { source })?;
    let mut argv: Vec<OsString> = vec!["edaflow run".into(), path.into(), "--no-watch".into()];
    // `--name=value`, so that no value can read as an option of its own.
    argv.push("--namespace=article".into());
    argv.push(format!("--broker={redis}").into());
    if let Some(listen) = listen {
        argv.push(format!("--listen={listen}").into());
    }
    // Parsed like a command line, so every other option of `run` keeps its default and
    // the `EDAFLOW_*` variables of `run` apply as they would to `edaflow run`; a variable
    // that does not parse is an error here as it would be there.
    let args = BuiltinRun::try_parse_from(argv)
        .map_err(|source| Error::BuiltinOptions { source })?
        .args;
    info!(flow = %format!("flows/article/{}", command.file_name()), redis = %redis, "the article's command, as a built-in flow");
    let result = run_blocking(args);
    drop(dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_built_in_command_line_is_consistent() {
        BuiltinRun::command().debug_assert();
    }

    #[test]
    fn the_built_in_command_line_parses_as_run_would() {
        let run = BuiltinRun::try_parse_from([
            "edaflow run",
            "/tmp/flow.toml",
            "--no-watch",
            "--namespace=article",
            "--broker=redis://:pw@127.0.0.1:6379/0",
            "--listen=127.0.0.1:0",
        ])
        .expect("parses")
        .args;
        assert!(run.no_watch);
        assert_eq!(run.namespace.as_deref(), Some("article"));
        assert_eq!(
            run.broker.as_ref().map(|url| url.expose()),
            Some("redis://:pw@127.0.0.1:6379/0")
        );
        assert_eq!(run.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            run.grace,
            std::time::Duration::from_secs(5),
            "defaults apply"
        );
    }
}
