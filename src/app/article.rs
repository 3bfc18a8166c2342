//! `edaflow api-server` and `edaflow consumer`: the article's commands, each an
//! `edaflow run` of one of the built-in flows of `crate::article` (written to a temporary
//! folder) on Redis, in the namespace `article`, without watching files. The flows and
//! their substitutions are `crate::article`'s; this module only runs them.

use tracing::info;

use super::run::run_blocking;
use super::Error;
use crate::article::{ArticleCommand, ArticleError};
use crate::cli::{ApiServerArgs, Cli, Command, ConsumerArgs};

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
    let mut argv: Vec<std::ffi::OsString> = vec!["edaflow".into(), "run".into(), path.into()];
    for arg in ["--no-watch", "--namespace", "article", "--broker", redis] {
        argv.push(arg.into());
    }
    if let Some(listen) = listen {
        argv.push("--listen".into());
        argv.push(listen.into());
    }
    // Parsed like a command line, so every other option of `run` keeps its default.
    let args = match <Cli as clap::Parser>::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(args),
            ..
        }) => args,
        Ok(_) => unreachable!("the arguments start with `run`"),
        Err(e) => e.exit(),
    };
    info!(flow = %format!("flows/article/{}", command.file_name()), redis = %redis, "the article's command, as a built-in flow");
    let result = run_blocking(args);
    drop(dir);
    result
}
