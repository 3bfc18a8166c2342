//! The article's commands (`api-server`, `consumer --topic T`, `consumer -d --master`,
//! `consumer -d`) as built-in flows: the readable flow files of `flows/article/`, embedded
//! in the binary so the aliases work from any directory.
//!
//! This module owns those files and the two substitutions the aliases make in them (the
//! topic of `consumer --topic T`, and a shorter poll for tests). Running them is `app`'s
//! job: an alias is `edaflow run` of one of these flows on Redis.

use std::time::Duration;

use crate::pattern::{validate_topic, PatternError};

/// `flows/article/api-server.toml`.
pub const API_SERVER: &str = include_str!("../flows/article/api-server.toml");
/// `flows/article/consumer-topic.toml`.
pub const CONSUMER_TOPIC: &str = include_str!("../flows/article/consumer-topic.toml");
/// `flows/article/master.toml`.
pub const MASTER: &str = include_str!("../flows/article/master.toml");
/// `flows/article/worker.toml`.
pub const WORKER: &str = include_str!("../flows/article/worker.toml");

/// The Redis the article's tool uses (it hard-codes localhost:6379).
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// The line of `consumer-topic.toml` that `--topic` replaces.
const TOPIC_LINE: &str = "topic = \"orderCreated\"";
/// The line of `worker.toml` that a poll override replaces.
const POLL_LINE: &str = "poll = \"10s\"";

/// Which of the article's commands to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArticleCommand {
    /// `api-server`.
    ApiServer,
    /// `consumer --topic T`.
    Topic(String),
    /// `consumer -d --master`.
    Master,
    /// `consumer -d`, optionally looking at the list more often than every 10 s.
    Worker { poll: Option<Duration> },
}

/// A bad argument to one of the article's commands.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ArticleError {
    #[error("`{topic}` is not a topic name")]
    #[diagnostic(
        code(edaflow::article::topic),
        help("a topic name, e.g. `--topic orderCreated` (letters, digits, `_`, `-`, `:`, `.`)")
    )]
    BadTopic {
        topic: String,
        #[source]
        reason: PatternError,
    },
    #[error("cannot write the built-in flow to a temporary folder")]
    #[diagnostic(code(edaflow::article::write), help("is TMPDIR writable?"))]
    Write {
        #[source]
        source: std::io::Error,
    },
    #[error("a poll interval must be longer than zero")]
    #[diagnostic(code(edaflow::article::poll))]
    ZeroPoll,
}

impl ArticleCommand {
    /// The name of its file in `flows/article/`.
    pub fn file_name(&self) -> &'static str {
        match self {
            ArticleCommand::ApiServer => "api-server.toml",
            ArticleCommand::Topic(_) => "consumer-topic.toml",
            ArticleCommand::Master => "master.toml",
            ArticleCommand::Worker { .. } => "worker.toml",
        }
    }

    /// The flow to run: the embedded file, with the command's arguments put in.
    ///
    /// # Errors
    /// A topic that is not a topic name, or a zero poll.
    pub fn flow_text(&self) -> Result<String, ArticleError> {
        Ok(match self {
            ArticleCommand::ApiServer => API_SERVER.to_owned(),
            ArticleCommand::Topic(topic) => {
                validate_topic(topic).map_err(|reason| ArticleError::BadTopic {
                    topic: topic.clone(),
                    reason,
                })?;
                // A valid topic name has no quote or backslash to escape.
                CONSUMER_TOPIC.replacen(TOPIC_LINE, &format!("topic = \"{topic}\""), 1)
            }
            ArticleCommand::Master => MASTER.to_owned(),
            ArticleCommand::Worker { poll: None } => WORKER.to_owned(),
            ArticleCommand::Worker { poll: Some(poll) } => {
                if poll.is_zero() {
                    return Err(ArticleError::ZeroPoll);
                }
                let ms = poll.as_millis().max(1);
                WORKER.replacen(POLL_LINE, &format!("poll = \"{ms}ms\""), 1)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::model::{SubscriberInput, TopicMode};

    /// Loads a flow text the way the aliases do: from a file.
    fn load(command: &ArticleCommand) -> crate::flow::Loaded {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(command.file_name());
        std::fs::write(&path, command.flow_text().unwrap()).unwrap();
        crate::flow::load(&[path]).expect("the built-in flow loads")
    }

    #[test]
    fn the_embedded_files_are_the_repository_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/article");
        for (name, text) in [
            ("api-server.toml", API_SERVER),
            ("consumer-topic.toml", CONSUMER_TOPIC),
            ("master.toml", MASTER),
            ("worker.toml", WORKER),
        ] {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), text);
        }
    }

    #[test]
    fn the_substituted_lines_exist_once() {
        assert_eq!(CONSUMER_TOPIC.matches(TOPIC_LINE).count(), 1);
        assert_eq!(WORKER.matches(POLL_LINE).count(), 1);
    }

    #[test]
    fn the_worker_looks_every_ten_seconds_and_takes_one_item() {
        let loaded = load(&ArticleCommand::Worker { poll: None });
        let queue = &loaded.flows.queues["tasks"];
        assert_eq!(queue.poll, Some(Duration::from_secs(10)));
        assert_eq!(queue.per_poll, Some(1));
        assert_eq!(queue.list.as_deref(), Some("message:queue"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

        let fast = load(&ArticleCommand::Worker {
            poll: Some(Duration::from_millis(200)),
        });
        assert_eq!(
            fast.flows.queues["tasks"].poll,
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn consumer_topic_subscribes_to_the_given_topic_over_pubsub() {
        let loaded = load(&ArticleCommand::Topic("payments.done".into()));
        let consumer = &loaded.flows.subscribers["consumer"];
        let SubscriberInput::Topics(patterns) = &consumer.input else {
            panic!("a topic subscriber");
        };
        assert_eq!(patterns.len(), 1);
        assert_eq!(patterns[0].as_str(), "payments.done");
        assert_eq!(loaded.flows.topic_mode("payments.done"), TopicMode::Pubsub);
        assert!(consumer.script.is_none());
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn master_moves_the_master_channel_into_the_list() {
        let loaded = load(&ArticleCommand::Master);
        let relay = &loaded.flows.relays["master"];
        assert_eq!(relay.from.as_str(), "master");
        assert_eq!(
            loaded.flows.queues[&relay.to].list.as_deref(),
            Some("message:queue")
        );
        assert_eq!(loaded.flows.topic_mode("master"), TopicMode::Pubsub);
    }

    #[test]
    fn api_server_publishes_every_topic_over_pubsub() {
        let loaded = load(&ArticleCommand::ApiServer);
        assert_eq!(loaded.flows.topic_mode("orderCreated"), TopicMode::Pubsub);
        assert_eq!(
            loaded.flows.files[0].deferred_topic.as_deref(),
            Some("master")
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(matches!(
            ArticleCommand::Topic("order created".into()).flow_text(),
            Err(ArticleError::BadTopic { .. })
        ));
        assert!(matches!(
            ArticleCommand::Topic("orders.*".into()).flow_text(),
            Err(ArticleError::BadTopic { .. })
        ));
        assert!(matches!(
            ArticleCommand::Worker {
                poll: Some(Duration::ZERO)
            }
            .flow_text(),
            Err(ArticleError::ZeroPoll)
        ));
    }
}
