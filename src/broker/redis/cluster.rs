//! Where the broker's connections go: one Redis, or the master of a Redis Cluster that owns
//! the namespace's slot.
//!
//! Every key of a namespace is `edaflow:{NS}:…`, so on a cluster they all hash to one slot
//! (the hash tag `NS`), and every script stays a single-slot script, atomic as on one Redis.
//! At connect the broker asks the URL's server (the first of its seed nodes that answers)
//! `INFO cluster`; on a cluster it finds the
//! slot (`CLUSTER KEYSLOT`) and its master (`CLUSTER SLOTS`) and connects everything there
//! (the shared connection, blocking reads, the synchronous connection, store reads,
//! pub/sub for taps and replies: PUBLISH reaches subscribers on every node of a cluster),
//! with the URL's credentials and TLS settings. One shard lives on one master; a namespace
//! spread over several shards (see `spread`) has one `Node` per shard.
//!
//! Failover and resharding: a watcher asks the cluster every `CLUSTER_CHECK_EVERY` (see
//! `defaults`) who owns the
//! slot (the current master first, then any node seen before). When the owner changes it
//! connects to the new one and swaps the client; connections to the old master fail
//! (`MOVED`, refused, reset) and are opened again on the new one. Meanwhile commands fail
//! as `Unavailable`: ingest answers 503, consumers back off and retry. The watcher logs each
//! change of state once (slot moved, no node answers, no master serves the slot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, Value};
use tracing::{debug, info, warn};

use super::defaults;
use super::failure::{unavailable, unexpected};
use super::reply::{int, items, nth, text};
use super::url::RedisUrl;
use crate::broker::BrokerError;

/// A node's address, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Addr {
    host: String,
    port: u16,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The server every connection of one broker goes to; on a cluster it can change.
pub(crate) struct Node {
    client: RwLock<redis::Client>,
    conn: RwLock<ConnectionManager>,
    /// Bumped at each reroute, so pooled connections to the old master are not reused.
    generation: AtomicU64,
    /// How long a command on the shared connection waits for its reply.
    response_timeout: Duration,
    cluster: Option<Cluster>,
}

struct Cluster {
    /// The URL's connection settings (credentials, TLS, database 0); only the address
    /// changes from node to node.
    base: ConnectionInfo,
    /// The URL's own addresses (its seed nodes), asked last when every known node is
    /// silent.
    seeds: Vec<Addr>,
    slot: u16,
    owner: Mutex<Addr>,
    /// Every node `CLUSTER SLOTS` listed last time (masters and replicas).
    known: Mutex<Vec<Addr>>,
    /// What the watcher last reported, so each change is logged once.
    state: Mutex<State>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    NoAnswer,
    NoOwner,
}

impl Node {
    /// Connects to the URL's server, or on a cluster to the master owning the slot of
    /// `prefix`, and starts the watcher there (it ends when the node is dropped). With
    /// several seeds (one client each, in the URL's order) the first that answers is asked;
    /// they must be nodes of one cluster.
    ///
    /// # Errors
    /// `BadUrl`, `Unavailable` when no seed can be reached, `Cluster` when the cluster has
    /// no master for the slot, the URL names a database other than 0, or several seeds
    /// were given and the one that answered is a single Redis.
    pub(crate) async fn connect(
        url: &RedisUrl,
        seed_clients: Vec<redis::Client>,
        prefix: &str,
        response_timeout: Duration,
    ) -> Result<Arc<Node>, BrokerError> {
        let bad = || BrokerError::BadUrl {
            url: url.to_string(),
        };
        let seeds = seed_clients
            .iter()
            .map(|c| addr_of(c.get_connection_info()).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let several = seed_clients.len() > 1;
        let mut unreachable = None;
        for seed_client in seed_clients {
            let seed = addr_of(seed_client.get_connection_info()).ok_or_else(bad)?;
            match Node::connect_via(url, seed_client, &seeds, prefix, response_timeout).await {
                Err(e @ BrokerError::Unavailable { .. }) if several => {
                    debug!(%seed, error = %e, "seed node unreachable; trying the next");
                    unreachable = Some(e);
                }
                other => return other,
            }
        }
        Err(unreachable.unwrap_or_else(bad))
    }

    /// `connect` through one seed.
    async fn connect_via(
        url: &RedisUrl,
        seed_client: redis::Client,
        seeds: &[Addr],
        prefix: &str,
        response_timeout: Duration,
    ) -> Result<Arc<Node>, BrokerError> {
        let bad = || BrokerError::BadUrl {
            url: url.to_string(),
        };
        let info = seed_client.get_connection_info().clone();
        let db = info.redis_settings().db();
        let base = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_db(0));
        // Database 0 for the question: a cluster refuses SELECT.
        let mut probe = open(&redis::Client::open(base.clone()).map_err(|_| bad())?).await?;
        let server: String = match redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut probe)
            .await
        {
            Ok(server) => server,
            // A user whose ACL forbids INFO: such a server is taken for a single Redis.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                debug!(error = %e, "INFO refused; assuming a single Redis, not a cluster");
                String::new()
            }
            Err(e) => return Err(unavailable(e)),
        };
        let refuse = |reason: String| BrokerError::Cluster {
            url: url.to_string(),
            reason,
        };
        if !is_cluster(&server) {
            if seeds.len() > 1 {
                let seed = addr_of(&base).ok_or_else(bad)?;
                return Err(refuse(format!(
                    "several seed nodes are for a Redis Cluster, and {seed} is a single Redis"
                )));
            }
            let conn = manager(&seed_client, response_timeout).await?;
            return Ok(Arc::new(Node {
                client: RwLock::new(seed_client),
                conn: RwLock::new(conn),
                generation: AtomicU64::new(0),
                response_timeout,
                cluster: None,
            }));
        }
        if db != 0 {
            return Err(refuse(format!(
                "a cluster has only database 0, and the URL names database {db}"
            )));
        }
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(prefix)
            .query_async(&mut probe)
            .await
            .map_err(unavailable)?;
        let slot = u16::try_from(slot).map_err(|_| refuse(format!("slot {slot}?")))?;
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut probe)
            .await
            .map_err(unavailable)?;
        let seed = addr_of(&base).ok_or_else(bad)?;
        let view = View::parse(&slots, slot, &seed.host)?;
        let owner = view.owner.ok_or_else(|| {
            refuse(format!(
                "no master serves slot {slot} of `{prefix}` (is cluster_state ok?)"
            ))
        })?;
        let client = redis::Client::open(with_addr(&base, &owner)).map_err(|_| bad())?;
        let conn = manager(&client, response_timeout).await?;
        info!(%slot, master = %owner, "Redis Cluster: the namespace's slot is served here");
        let node = Arc::new(Node {
            client: RwLock::new(client),
            conn: RwLock::new(conn),
            generation: AtomicU64::new(0),
            response_timeout,
            cluster: Some(Cluster {
                base,
                seeds: seeds.to_vec(),
                slot,
                owner: Mutex::new(owner),
                known: Mutex::new(view.nodes),
                state: Mutex::new(State::Serving),
            }),
        });
        let span = tracing::info_span!("redis_cluster_watch", component = "broker");
        // Tracked by ownership: it holds a Weak and ends once the node is gone.
        tokio::spawn(tracing::Instrument::instrument(
            watch(Arc::downgrade(&node)),
            span,
        ));
        Ok(node)
    }

    /// The client of the current server (for connections of their own).
    pub(crate) fn client(&self) -> redis::Client {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The shared connection to the current server.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes whenever connections move to another master.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The slot and the master serving it, on a cluster.
    pub(crate) fn cluster_slot(&self) -> Option<(u16, String)> {
        let cluster = self.cluster.as_ref()?;
        Some((cluster.slot, lock(&cluster.owner).to_string()))
    }

    /// One look at who owns the slot; moves the connections when it changed.
    async fn check(&self) {
        let Some(cluster) = &self.cluster else { return };
        let current = lock(&cluster.owner).clone();
        let mut ask = vec![current.clone()];
        for addr in lock(&cluster.known).iter().chain(&cluster.seeds) {
            if !ask.contains(addr) {
                ask.push(addr.clone());
            }
        }
        let mut answered = None;
        for addr in &ask {
            if let Ok(view) = cluster.ask(addr).await {
                if view.owner.is_some() || answered.is_none() {
                    answered = Some(view);
                }
                if answered.as_ref().is_some_and(|v| v.owner.is_some()) {
                    break;
                }
            }
        }
        let Some(view) = answered else {
            cluster.report(
                State::NoAnswer,
                || warn!(slot = cluster.slot, master = %current, "no Redis Cluster node answers; the broker is unavailable until one does"),
            );
            return;
        };
        if !view.nodes.is_empty() {
            *lock(&cluster.known) = view.nodes;
        }
        let Some(owner) = view.owner else {
            cluster.report(State::NoOwner, || {
                warn!(slot = cluster.slot, "no master serves the namespace's slot (CLUSTERDOWN?); waiting for the cluster to recover");
            });
            return;
        };
        if owner == current {
            cluster.report(State::Serving, || {
                info!(slot = cluster.slot, master = %owner, "the namespace's master answers again");
            });
            return;
        }
        match self.reroute(cluster, &owner).await {
            Ok(()) => {
                warn!(slot = cluster.slot, from = %current, to = %owner, "the namespace's slot moved to another master (failover or resharding); connections now go there");
                *lock(&cluster.state) = State::Serving;
            }
            Err(e) => cluster.report(State::NoAnswer, || {
                warn!(slot = cluster.slot, to = %owner, error = %e, "the namespace's slot moved, but its new master cannot be reached yet");
            }),
        }
    }

    async fn reroute(&self, cluster: &Cluster, owner: &Addr) -> Result<(), BrokerError> {
        let client = redis::Client::open(with_addr(&cluster.base, owner)).map_err(unavailable)?;
        let conn = manager(&client, self.response_timeout).await?;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
        *lock(&cluster.owner) = owner.clone();
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Cluster {
    /// `CLUSTER SLOTS` as one node sees it.
    async fn ask(&self, addr: &Addr) -> Result<View, BrokerError> {
        let client = redis::Client::open(with_addr(&self.base, addr)).map_err(unavailable)?;
        let mut conn = open(&client).await?;
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        View::parse(&slots, self.slot, &addr.host)
    }

    /// Logs through `log` when the state changes to `state`.
    fn report(&self, state: State, log: impl FnOnce()) {
        let mut last = lock(&self.state);
        if *last != state {
            *last = state;
            log();
        }
    }
}

/// Looks at the cluster every `CLUSTER_CHECK_EVERY` until the node is dropped.
async fn watch(node: Weak<Node>) {
    loop {
        tokio::time::sleep(defaults::CLUSTER_CHECK_EVERY).await;
        let Some(node) = node.upgrade() else { return };
        node.check().await;
    }
}

/// What one `CLUSTER SLOTS` reply says.
#[derive(Debug, PartialEq)]
struct View {
    /// The master serving the slot.
    owner: Option<Addr>,
    /// Every node listed.
    nodes: Vec<Addr>,
}

impl View {
    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replica…], …]`.
    /// A node listed without a host (`""`, `"?"` or nil) is on the host that answered.
    ///
    /// # Errors
    /// An unexpected reply for anything of another shape.
    fn parse(reply: &Value, slot: u16, asked_host: &str) -> Result<View, BrokerError> {
        let mut view = View {
            owner: None,
            nodes: Vec::new(),
        };
        for range in items(reply)? {
            let range = items(range)?;
            let (start, end) = (int(nth(range, 0)?)?, int(nth(range, 1)?)?);
            for (i, node) in range.iter().skip(2).enumerate() {
                let node = items(node)?;
                let host = match nth(node, 0)? {
                    Value::Nil => String::new(),
                    host => text(host)?,
                };
                let port = int(nth(node, 1)?)?;
                let port = u16::try_from(port).map_err(|_| unexpected("a node's port", &node))?;
                let host = match host.as_str() {
                    "" | "?" => asked_host.to_owned(),
                    _ => host,
                };
                let addr = Addr { host, port };
                if i == 0 && (start..=end).contains(&i64::from(slot)) {
                    view.owner = Some(addr.clone());
                }
                if !view.nodes.contains(&addr) {
                    view.nodes.push(addr);
                }
            }
        }
        Ok(view)
    }
}

fn is_cluster(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

fn addr_of(info: &ConnectionInfo) -> Option<Addr> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => Some(Addr {
            host: host.clone(),
            port: *port,
        }),
        _ => None,
    }
}

/// The same settings (credentials, TLS) at another address.
fn with_addr(base: &ConnectionInfo, addr: &Addr) -> ConnectionInfo {
    let to = match base.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: addr.host.clone(),
            port: addr.port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
    };
    base.clone().set_addr(to)
}

/// A short-lived connection for a question.
async fn open(client: &redis::Client) -> Result<MultiplexedConnection, BrokerError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(defaults::CONNECT_TIMEOUT))
        .set_response_timeout(Some(defaults::CLUSTER_QUESTION_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)
}

/// The shared connection (reconnects by itself to the same address).
async fn manager(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(defaults::CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(defaults::RECONNECT_RETRIES)
        .set_max_delay(defaults::RECONNECT_MAX_DELAY);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(unavailable)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key prefix of a namespace, `edaflow:{NS}:` with literal braces: the namespace is
/// the hash tag of every key, so a namespace's keys share one cluster slot.
///
/// # Errors
/// `BadNamespace` for an empty namespace (an empty tag is no tag) or one holding a brace
/// (it would end the tag early).
pub(crate) fn prefix(namespace: &str) -> Result<String, BrokerError> {
    let bad = |reason: &str| BrokerError::BadNamespace {
        namespace: namespace.to_owned(),
        reason: reason.to_owned(),
    };
    if namespace.is_empty() {
        return Err(bad("it is empty"));
    }
    if namespace.contains(['{', '}']) {
        return Err(bad(
            "it holds a brace, which would break the key's hash tag",
        ));
    }
    Ok(format!("edaflow:{{{namespace}}}:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            bulk(host),
            Value::Int(port),
            bulk(id),
            Value::Array(vec![]),
        ])
    }

    #[test]
    fn the_namespace_is_the_hash_tag() {
        assert_eq!(prefix("orders").unwrap(), "edaflow:{orders}:");
        for bad in ["", "a{b", "a}b", "{x}"] {
            assert!(
                matches!(prefix(bad), Err(BrokerError::BadNamespace { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cluster_slots_name_the_owner_and_every_node() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7001, "a"),
                node("127.0.0.1", 7004, "d"),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("", 7002, "b"),
            ]),
        ]);
        let view = View::parse(&reply, 5461, "10.0.0.9").unwrap();
        assert_eq!(
            view.owner,
            Some(Addr {
                host: "10.0.0.9".into(),
                port: 7002
            })
        );
        let ports: Vec<u16> = view.nodes.iter().map(|a| a.port).collect();
        assert_eq!(ports, [7001, 7004, 7002]);
        // A replica never counts as the owner, and an unserved slot has none.
        assert_eq!(
            View::parse(&reply, 5460, "h")
                .unwrap()
                .owner
                .map(|a| a.port),
            Some(7001)
        );
        assert_eq!(View::parse(&reply, 16000, "h").unwrap().owner, None);
        // A reply of another shape is an error, not an empty view.
        assert!(View::parse(&Value::Array(vec![Value::Int(0)]), 0, "h").is_err());
        assert!(View::parse(&Value::Nil, 0, "h").is_err());
    }

    #[test]
    fn only_cluster_enabled_1_is_a_cluster() {
        assert!(is_cluster("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!is_cluster("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!is_cluster(""));
    }

    #[test]
    fn another_address_keeps_the_credentials() {
        let client = redis::Client::open("redis://app:hunter2@10.0.0.1:6379/0").unwrap();
        let moved = with_addr(
            client.get_connection_info(),
            &Addr {
                host: "10.0.0.2".into(),
                port: 7000,
            },
        );
        assert!(matches!(moved.addr(), ConnectionAddr::Tcp(h, 7000) if h == "10.0.0.2"));
        assert_eq!(moved.redis_settings().username(), Some("app"));
        assert_eq!(moved.redis_settings().password(), Some("hunter2"));
    }
}
