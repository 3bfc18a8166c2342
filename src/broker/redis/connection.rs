//! The broker's connections to Redis and how they are made: plain or TLS clients, the
//! shared asynchronous connection, connections of their own for blocking reads, and the
//! one synchronous connection the synchronous parts of the `Broker` trait need.
//!
//! Every connection goes to the node `cluster` chose (one Redis, or the master of the
//! namespace's slot).
//!
//! # Synchronous calls
//!
//! No `async fn` of the broker makes a synchronous Redis call. Three kinds of caller must,
//! as long as the methods they serve are synchronous, and they are the only ones:
//!
//! - the synchronous connection here (`with_sync`), for the check in
//!   `consumers`/`queue_consumers` that a group or queue this process did not declare
//!   exists: one round trip each, within `response_timeout`;
//! - the pool of `stores`, for `StoreRead::get`/`scan` (`GET /stores/…`, `edaflow
//!   test`); handlers read ahead, asynchronously, on the shared connection;
//! - the thread of each tap (`tap`), which subscribes on a connection of its own, off the
//!   tokio workers; `tap_within` waits for it to be subscribed (at most
//!   `TAP_SUBSCRIBE_WAIT`).
//!
//! Each becomes asynchronous once the method it serves is.

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use tracing::warn;

use super::failure::unavailable;
use super::url::RedisUrl;
use super::{defaults, ShardBroker};
use crate::broker::BrokerError;

/// The client for `secret`, one seed of `url`: plain, or TLS verified against the system's
/// roots or `ca` (a PEM file). The redis crate's own URL errors are not shown, since they
/// could quote the URL.
pub(super) fn client_for(
    url: &RedisUrl,
    secret: &str,
    ca: Option<&std::path::Path>,
) -> Result<redis::Client, BrokerError> {
    let bad_url = || BrokerError::BadUrl {
        url: url.to_string(),
    };
    if !url.is_tls() {
        if let Some(ca) = ca {
            warn!(ca = %ca.display(), "a Redis CA is set but the broker URL is not rediss://; the CA is not used");
        }
        return redis::Client::open(secret).map_err(|_| bad_url());
    }
    // One crypto provider for rustls, chosen here rather than by feature unification
    // (fails harmlessly when one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(ca) = ca else {
        return redis::Client::open(secret).map_err(|_| bad_url());
    };
    let tls_ca = |detail: String| BrokerError::TlsCa {
        path: ca.display().to_string(),
        detail,
    };
    let pem = std::fs::read(ca).map_err(|e| tls_ca(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(tls_ca("no PEM certificate in it".to_owned()));
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(secret, certificates).map_err(|e| match e.kind() {
        redis::ErrorKind::InvalidClientConfig => bad_url(),
        _ => tls_ca(e.to_string()),
    })
}

impl ShardBroker {
    /// The shared connection (reconnects by itself; see `cluster::Node`).
    pub(super) fn conn(&self) -> ConnectionManager {
        self.inner.node.conn()
    }

    /// A connection of its own, for a blocking read (which would hold up every other
    /// command on a shared one).
    pub(super) async fn dedicated(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(defaults::CONNECT_TIMEOUT))
            .set_response_timeout(Some(
                self.inner.options.block + self.inner.options.response_timeout,
            ));
        self.inner
            .node
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)
    }

    /// Runs `f` on the synchronous connection, reconnecting once if it is broken (refused
    /// at once while the circuit is open). For the synchronous trait methods only (see the
    /// module docs).
    pub(super) fn with_sync<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.inner.circuit.admit()?;
        let mut guard = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                let conn = self
                    .inner
                    .node
                    .client()
                    .get_connection_with_timeout(defaults::SYNC_CONNECT_TIMEOUT)
                    .map_err(unavailable)?;
                conn.set_read_timeout(Some(self.inner.options.response_timeout))
                    .map_err(unavailable)?;
                *guard = Some(conn);
            }
            let Some(conn) = guard.as_mut() else { break };
            match f(conn) {
                Ok(value) => return Ok(value),
                Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                    *guard = None;
                }
                Err(e) => {
                    *guard = None;
                    return Err(unavailable(e));
                }
            }
        }
        Err(BrokerError::Closed)
    }
}
