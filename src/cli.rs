//! The command line: clap definitions and the help text that teaches by example.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  edaflow run flows/orders.toml              run the demo: HTTP ingest on 127.0.0.1:3000
  edaflow run flows/ --listen 127.0.0.1:8080 every *.toml in a folder, on another port
  edaflow run flows/ --broker redis://127.0.0.1:6379   several processes sharing the work
  edaflow validate flows/orders.toml         report every problem in flows and scripts
  edaflow test flows/orders.toml             run the [[tests]] declared in the flow file
  edaflow publish orderCreated '{\"order_id\":123,\"customer\":\"John Doe\",\"total\":49.99}'
  edaflow tail 'order*'                      watch events on matching topics

The article's curl works against `edaflow run flows/orders.toml`:
  curl -X POST -H \"Content-Type: application/json\" \\
    -d '{\"order_id\": 123, \"customer\": \"John Doe\", \"total\": 49.99}' \\
    http://localhost:3000/topics/orderCreated";

/// edaflow runs event-driven systems described in files: TOML flows declare producers,
/// topic subscribers, queues and chains; Rhai scripts handle each event.
#[derive(Debug, Parser)]
#[command(name = "edaflow", version, about, long_about = None, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "EDAFLOW_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `edaflow graph --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormatArg {
    /// A Mermaid flowchart (GitHub renders it in Markdown).
    Mermaid,
    /// Graphviz dot.
    Dot,
    /// Nodes and edges with their kinds, for tools (see docs/cli.md).
    Json,
}

/// `--format` of `validate`, `test` and `trace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout, for tools and CI (fields in docs/cli.md).
    Json,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// With several Redis shards, what places an event on one (`--spread-by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SpreadByArg {
    /// Each topic on one shard: a topic's events keep their order; a hop to a topic on
    /// another shard goes through that shard's outbox.
    #[default]
    Topic,
    /// Each journey (correlation id) on one shard: every hop commits on its own shard, and
    /// the shards share the load evenly; order holds within a journey only.
    Journey,
}

/// The subcommands.
// Parsed once at start and then taken apart: `run`'s many options are not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run flows: producers, subscribers and the HTTP API, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  edaflow run flows/orders.toml\n  edaflow run flows/ --listen 127.0.0.1:0\n\nCtrl-C or SIGTERM stops ingest, lets queued events drain (--grace), finishes\nthe events in flight and exits 0. The memory broker keeps nothing across restarts."
    )]
    Run(RunArgs),
    /// Check flow files and their scripts; print every problem; exit 1 if any is an error.
    #[command(
        after_help = "Examples:\n  edaflow validate flows/orders.toml\n  edaflow validate flows/\n  edaflow validate flows/ --format json | jq '.diagnostics[]'"
    )]
    Validate {
        /// Flow files, or folders of them.
        #[arg(required = true, value_name = "FLOW")]
        flows: Vec<PathBuf>,
        /// Output format: every diagnostic on stdout as JSON with `json`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Publish an event to a running instance (its HTTP producer).
    #[command(
        after_help = "Examples:\n  edaflow publish orderCreated '{\"order_id\":123,\"total\":49.99}'\n  cat orders.jsonl | edaflow publish orderCreated -"
    )]
    Publish {
        /// The topic.
        topic: String,
        /// The event data as JSON, or `-` to read one event per line from stdin.
        data: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the events of a running instance as they happen.
    #[command(
        after_help = "Patterns: `orderCreated`, `order*` (glob inside a segment), `orders.*` (one\nsegment), `orders.>` (the rest), `>` (everything).\n\nExamples:\n  edaflow tail 'order*'\n  edaflow tail '>' --json"
    )]
    Tail {
        /// Topic pattern.
        #[arg(default_value = ">")]
        pattern: String,
        /// Print each event as its CloudEvents JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Inspect, replay and drop the dead letters of a running instance.
    #[command(
        after_help = "Examples:\n  edaflow dead list\n  edaflow dead list orderCreated\n  edaflow dead replay orderCreated --delay 10s\n  edaflow dead replay --id 01JD…\n  edaflow dead replay --all\n  edaflow dead drop 'order*'\n  edaflow dead drop --all"
    )]
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Ask a running instance a query and print the reply (request/reply over HTTP).
    #[command(
        after_help = "Examples:\n  edaflow query orders.query.get '{\"order_id\":1}'\n  edaflow query orders.query.by_customer '{\"customer\":\"ann\"}'"
    )]
    Query {
        /// The query topic.
        topic: String,
        /// The query as JSON.
        #[arg(default_value = "{}")]
        data: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// A live view of a running instance: rates, work in flight, errors, queue depths,
    /// dead letters, chains and processes, redrawn in place until Ctrl-C.
    #[command(after_help = TOP_HELP)]
    Top {
        /// How often to poll the instance (rates are per second whatever this is).
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Print one plain frame (after two samples, so that rates exist) and exit; what
        /// top does when stdout is not a terminal.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the tree of events of one journey (a correlation id) from a running instance.
    #[command(
        after_help = "Examples:\n  edaflow trace 01M8BARPKC0ECJ9W797NG2TCS7\n  edaflow trace 01M8BARPKC0ECJ9W797NG2TCS7 --format json\n\nThe id is the one `POST /topics/...` answered with (the first event's id)."
    )]
    Trace {
        /// The correlation id: the id of the journey's first event.
        correlation_id: String,
        /// Output format: the events with their parent ids as JSON with `json`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
        #[command(flatten)]
        remote: Remote,
    },
    /// Draw the declared wiring of flows: producers, topics, subscribers, queues, relays,
    /// stores and chains.
    #[command(
        after_help = "Examples:\n  edaflow graph flows/orders.toml\n  edaflow graph flows/orders.toml --format dot | dot -Tsvg > orders.svg\n  edaflow graph flows/orders.toml --format json\n  edaflow graph flows/orders.toml --live http://127.0.0.1:3000"
    )]
    Graph {
        /// Flow files, or folders of them.
        #[arg(required = true, value_name = "FLOW")]
        flows: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormatArg::Mermaid)]
        format: GraphFormatArg,
        /// Annotate with the event counts of a running instance (its /metrics).
        #[arg(long, value_name = "URL")]
        live: Option<String>,
        /// Bearer token for --live, when the instance sets one.
        #[arg(long, env = "EDAFLOW_TOKEN", hide_env_values = true)]
        token: Option<crate::client::BearerToken>,
    },
    /// The article's API server on Redis ("Topics" and "Deferred Execution"): POST
    /// /topics/{topic} publishes the body to the Redis channel {topic}, POST /deferred-exec
    /// to the channel `master`, with plain PUBLISH as the article's `eda` tool does.
    #[command(name = "api-server", after_help = API_SERVER_HELP)]
    ApiServer(ApiServerArgs),
    /// The article's consumers on Redis: `--topic T` prints each event of a topic ("Topics"),
    /// `-d --master` is the master node and `-d` the deferred worker ("Deferred Execution").
    #[command(after_help = CONSUMER_HELP)]
    Consumer(ConsumerArgs),
    /// Run the [[tests]] of flow files, in process, on virtual time.
    #[command(
        after_help = "Examples:\n  edaflow test flows/orders.toml\n  edaflow test flows/\n  edaflow test flows/ --junit target/edaflow-tests.xml   also write a JUnit report for CI\n  edaflow test flows/ --format json"
    )]
    Test {
        /// Flow files, or folders of them.
        #[arg(required = true, value_name = "FLOW")]
        flows: Vec<PathBuf>,
        /// Output format: the results on stdout as JSON with `json`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
        /// Also write the results as a JUnit XML report to this file (for CI test
        /// reporters), whatever --format prints.
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
    },
    /// Create a flow folder to start from: an HTTP producer, a Rhai handler and a flow test.
    #[command(
        after_help = "Examples:\n  edaflow init hello\n  edaflow init . --force\n\nThen: edaflow test hello && edaflow run hello"
    )]
    Init {
        /// The folder to create the flow in (created if missing).
        #[arg(default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// Overwrite the files init writes when they already exist.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of flow files (for editors: Taplo, Even Better TOML).
    #[command(
        after_help = "Examples:\n  edaflow schema > flow.schema.json\n\nThen put `#:schema ./flow.schema.json` on the first line of a flow file (see docs/schemas.md)."
    )]
    Schema,
    /// Print an AsyncAPI 3.0.0 document (JSON) of flows: channels, operations, payloads.
    #[command(
        after_help = "Examples:\n  edaflow asyncapi flows/orders.toml > asyncapi.json\n  edaflow asyncapi flows/"
    )]
    Asyncapi {
        /// Flow files, or folders of them.
        #[arg(required = true, value_name = "FLOW")]
        flows: Vec<PathBuf>,
    },
    /// Print a shell completion script for edaflow.
    #[command(
        after_help = "Examples:\n  source <(edaflow completions bash)\n  edaflow completions zsh > ~/.zfunc/_edaflow\n  edaflow completions fish > ~/.config/fish/completions/edaflow.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: edaflow(1) to stdout, or it and one page per subcommand into DIR.
    #[command(
        after_help = "Examples:\n  edaflow man | man -l -\n  edaflow man /usr/local/share/man/man1"
    )]
    Man {
        /// The folder to write edaflow.1, edaflow-run.1, … into.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List dead letters: id, origin, subscriber, attempts, error.
    List {
        /// Only those whose original topic or queue matches this pattern.
        origin: Option<String>,
        /// Print each dead letter as its CloudEvents JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-publish dead letters to their original topic or queue, and remove them.
    Replay {
        /// Only those whose original topic or queue matches this pattern.
        origin: Option<String>,
        /// Only these dead letters (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Make them due again only after this long (e.g. 10s).
        #[arg(long, value_name = "DURATION")]
        delay: Option<String>,
        /// Replay every dead letter (required when no origin or id is given).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete dead letters.
    Drop {
        /// Only those whose original topic or queue matches this pattern.
        origin: Option<String>,
        /// Only these dead letters (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Drop every dead letter (required when no origin or id is given).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Options of `edaflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Flow files, or folders of them (every *.toml inside).
    #[arg(required = true, value_name = "FLOW")]
    pub flows: Vec<PathBuf>,
    /// Override the HTTP producer's listen address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", env = "EDAFLOW_LISTEN")]
    pub listen: Option<String>,
    /// Serve the browser console, with the read and admin routes but not ingest, on this
    /// address of its own, whether or not a flow has an `http` producer (port 0 picks a
    /// free port). Its token is --token, else the first `http` producer's `token`.
    #[arg(long, value_name = "ADDR", env = "EDAFLOW_CONSOLE")]
    pub console: Option<String>,
    /// Serve only /healthz, /livez, /readyz, /metrics and /stats on this address of its
    /// own, for probes, scrapers and `edaflow top`, whether or not a flow has an `http`
    /// producer (port 0 picks a free port). /metrics and /stats take the same token as
    /// --console.
    #[arg(long, value_name = "ADDR", env = "EDAFLOW_ADMIN")]
    pub admin: Option<String>,
    /// Export a span for each handler run to this OpenTelemetry collector (OTLP over
    /// HTTP, e.g. http://localhost:4318; /v1/traces is appended). Off when unset, unless
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set; the
    /// service name is OTEL_SERVICE_NAME, else edaflow. See docs/tracing.md.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The bearer token every HTTP producer requires, in place of the flow files' `token`
    /// (keeps the secret out of them). Never logged.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EDAFLOW_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<crate::flow::model::ApiToken>,
    /// Run only subscribers with this role (repeatable); producers without a role still run.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Do not watch files; reload only on SIGHUP or `POST /admin/reload`.
    #[arg(long)]
    pub no_watch: bool,
    /// Quiet period after the last file event before reloading (editors save in steps).
    #[arg(long, value_name = "DURATION", default_value = "15ms", value_parser = parse_duration_arg)]
    pub debounce: Duration,
    /// How long queued events may drain at shutdown (memory broker; Redis keeps them).
    /// The process exits within this plus 1.5 s whatever is stuck; a second Ctrl-C or
    /// SIGTERM exits at once.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_arg)]
    pub grace: Duration,
    /// How long a handler's commit waits for room in a full group (memory broker) before
    /// the run fails and is retried with the subscriber's backoff.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_arg)]
    pub full_wait: Duration,
    /// The broker: `memory` (the default), `redis://[:password@]host:port/db`, or
    /// `rediss://…` for Redis over TLS. For a Redis Cluster, any node, or several seed
    /// nodes comma-separated: `redis://:pw@node1:7000,node2:7000/0`.
    /// Overrides `[flow] broker`; not reloadable.
    #[arg(
        long,
        value_name = "URL",
        env = "EDAFLOW_BROKER",
        hide_env_values = true,
        help_heading = "Broker"
    )]
    pub broker: Option<crate::broker::SecretUrl>,
    /// Redis key namespace (`edaflow:{NAME}:…`); defaults to the first flow's `[flow] name`.
    #[arg(
        long,
        value_name = "NAME",
        env = "EDAFLOW_NAMESPACE",
        help_heading = "Broker"
    )]
    pub namespace: Option<String>,
    /// Redis: spread the namespace over N shards, each in a cluster slot of its own (on a
    /// Redis Cluster, one per master spreads one flow set over all of them). Every process
    /// of a flow set must give the same N; see docs/redis.md, "Redis Cluster".
    #[arg(
        long,
        value_name = "N",
        env = "EDAFLOW_SHARDS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64),
        help_heading = "Broker"
    )]
    pub shards: u16,
    /// Redis, with --shards above 1: place each event by its topic (`topic`: a topic's
    /// events stay in order) or by its journey (`journey`: a chain of handlers commits on one
    /// shard, with no hop between shards, and the shards share the load evenly). Topics
    /// given a `shard` in the flow stay there either way.
    #[arg(
        long,
        value_name = "BY",
        env = "EDAFLOW_SPREAD_BY",
        default_value = "topic",
        help_heading = "Broker"
    )]
    pub spread_by: SpreadByArg,
    /// Redis: how long an event may stay with an unresponsive process before another
    /// process claims it (keep it above the slowest handler).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg, help_heading = "Broker")]
    pub claim_idle: Duration,
    /// Redis: how long before its due time a queue item may go to an idle worker, which
    /// holds it and starts it on time (Redis's share of the work is done by then, so a
    /// burst falling due at once starts sooner). 0 turns it off. Capped at a quarter of
    /// --claim-idle; queues with `poll` or a `capacity` never take ahead.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration_arg, help_heading = "Broker")]
    pub take_ahead: Duration,
    /// Redis: most queue items taken ahead (not due yet) that one subscriber holds in this
    /// process, about 1 KiB each. A burst within --take-ahead is read before it falls due,
    /// so only the handlers are left to run on time. 0 holds one per waiting worker.
    #[arg(
        long,
        value_name = "ITEMS",
        default_value_t = 50_000,
        help_heading = "Broker"
    )]
    pub hold_ahead: usize,
    /// Redis over TLS (`rediss://`): trust the CA in this PEM file instead of the system's
    /// roots (for a private CA).
    #[arg(
        long,
        value_name = "PEM",
        env = "EDAFLOW_REDIS_CA",
        help_heading = "Broker"
    )]
    pub redis_ca: Option<PathBuf>,
    /// Redis: how long a command may wait for its reply before it counts as failed (and
    /// is retried; ingest answers 503).
    #[arg(long, value_name = "DURATION", default_value = "5s", env = "EDAFLOW_REDIS_TIMEOUT", value_parser = parse_duration_arg, help_heading = "Broker")]
    pub redis_timeout: Duration,
    /// Redis: how long events are kept on a topic that no group reads and that has no
    /// `retention` of its own (nobody will handle them; without a bound such a topic grows
    /// Redis for ever). 0s keeps them for ever.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration_arg, help_heading = "Broker")]
    pub unread_retention: Duration,
    /// Worker threads that run handlers and serve HTTP. Default: one per CPU, less one
    /// when the broker is a Redis on this machine (Redis needs a core of its own); at
    /// least one.
    #[arg(long, value_name = "N", env = "EDAFLOW_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

const TOP_HELP: &str = "\
Reads GET /stats from the HTTP producer, the --console or the --admin listener of
`edaflow run`; rates come from the difference between two polls. WAITING is what is
queued for a subscriber (in its group, or due in its queue); a queue's READY items are
due now, its DELAYED ones not yet. `-` is a rate not known yet.

Examples:
  edaflow top
  edaflow top --url http://127.0.0.1:9100 --interval 2s
  edaflow top --once > snapshot.txt";

const API_SERVER_HELP: &str = "\
Replays the article's \"Topics\" and \"Deferred Execution\" sections (it is the
built-in flow flows/article/api-server.toml). Each POSTed body is published exactly as
sent, so the article's consumers, `redis-cli SUBSCRIBE orderCreated` and edaflow's own
consumers all see the same bytes. Pub/sub keeps nothing: start the consumers first.

Examples:
  edaflow api-server
  curl -X POST -H \"Content-Type: application/json\" \\
    -d '{\"order_id\": 123, \"customer\": \"John Doe\", \"total\": 49.99}' \\
    http://localhost:3000/topics/orderCreated
  curl -X POST -H \"Content-Type: application/json\" \\
    -d '{\"task_id\": 456, \"description\": \"Process data files\"}' \\
    http://localhost:3000/deferred-exec";

const CONSUMER_HELP: &str = "\
The three consumers of the article (built-in flows in flows/article/):
  edaflow consumer --topic orderCreated   \"Topics\": SUBSCRIBE to the channel and print
                                          Received event on topic: orderCreated
                                          Event data: {...the body as POSTed...}
  edaflow consumer -d --master            \"Deferred Execution\", the master node: move each
                                          message of the channel `master` onto the Redis
                                          list `message:queue` (LPUSH)
  edaflow consumer -d                     \"Deferred Execution\", the worker: every 10 s take
                                          one item of `message:queue` (RPOP, oldest first)
                                          and print Processing event: {...}

The article's lines go to stdout, logs to stderr. Processes of the article's `eda` tool
and of edaflow can be mixed on one Redis.";

/// Options of `edaflow api-server`.
#[derive(Debug, Args)]
pub struct ApiServerArgs {
    #[command(flatten)]
    pub redis: ArticleRedis,
    /// Where to serve HTTP (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub listen: String,
}

/// Options of `edaflow consumer`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["topic", "deferred"])))]
pub struct ConsumerArgs {
    /// Print every event published to this topic (the article's "Topics").
    #[arg(short, long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Deferred execution: the worker, or with --master the master node.
    #[arg(short = 'd', long = "deferred", conflicts_with = "topic")]
    pub deferred: bool,
    /// With -d: run the master node (channel `master` -> list `message:queue`).
    #[arg(long, requires = "deferred")]
    pub master: bool,
    #[command(flatten)]
    pub redis: ArticleRedis,
    /// With -d: look at the list this often instead of every 10 s (for tests and demos).
    #[arg(long, value_name = "DURATION", hide = true, value_parser = parse_duration_arg, conflicts_with = "master")]
    pub poll: Option<Duration>,
}

/// The Redis of the article's commands.
#[derive(Debug, Args)]
pub struct ArticleRedis {
    /// The Redis to use (the article's tool always uses localhost:6379).
    #[arg(long, value_name = "URL", default_value = crate::article::DEFAULT_REDIS)]
    pub redis: String,
}

/// Where a running instance is.
#[derive(Debug, Args)]
pub struct Remote {
    /// Base URL of the running instance's HTTP producer.
    #[arg(long, default_value = "http://127.0.0.1:3000", env = "EDAFLOW_URL")]
    pub url: String,
    /// Bearer token, when the HTTP producer sets `token`. Never printed (its `Debug` is
    /// `<redacted>`).
    #[arg(long, env = "EDAFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<crate::client::BearerToken>,
    /// How long to wait to connect, and for each answer (`tail` waits for events as long
    /// as it runs).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
}

impl Remote {
    /// The instance to talk to.
    ///
    /// # Errors
    /// A URL that is not `http://host:port[/prefix]`.
    pub fn target(&self) -> Result<crate::client::Target, crate::client::ClientError> {
        crate::client::Target::parse(&self.url, self.token.clone())
            .map(|target| target.with_timeout(self.timeout))
    }
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(text).map_err(|e| format!("{e} (try 500ms, 5s, 1m)"))
}

/// A duration that must not be zero.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration_arg(text)? {
        d if d.is_zero() => Err("must be more than 0 (try 500ms, 1s)".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The Redis defaults `--help` shows are the broker's own (`broker::redis::defaults`).
    #[test]
    fn redis_defaults_are_the_brokers() {
        use crate::broker::redis::defaults;
        let cli = Cli::try_parse_from(["edaflow", "run", "flow.toml"]).expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.claim_idle, defaults::CLAIM_IDLE);
        assert_eq!(run.take_ahead, defaults::TAKE_AHEAD);
        assert_eq!(run.hold_ahead, defaults::HOLD_AHEAD);
        assert_eq!(run.redis_timeout, defaults::RESPONSE_TIMEOUT);
        assert_eq!(run.unread_retention, defaults::UNREAD_RETENTION);
    }

    #[test]
    fn client_tokens_never_show_in_debug_output() {
        for argv in [
            vec!["edaflow", "dead", "list", "--token", "s3cret"],
            vec!["edaflow", "publish", "t", "{}", "--token", "s3cret"],
            vec![
                "edaflow",
                "graph",
                "f.toml",
                "--live",
                "http://h:1",
                "--token",
                "s3cret",
            ],
            vec!["edaflow", "run", "f.toml", "--token", "s3cret"],
        ] {
            let cli = Cli::try_parse_from(argv.iter().copied()).expect("a valid command line");
            let shown = format!("{cli:?}");
            assert!(!shown.contains("s3cret"), "{argv:?}: {shown}");
            assert!(shown.contains("redacted"), "{argv:?}: {shown}");
        }
    }
}
