//! What every command's outcome tells the broker about Redis, and what it reports.
//!
//! Each command's result goes through `track`: an unreachable Redis feeds the outage log
//! (`outage`) and the circuit (`circuit`), `-OOM` the out-of-memory episode (`oom`), and
//! an answer closes both. `guarded` runs a command through the circuit first. `report`
//! is `/healthz`'s view (`Broker::health`), `incidents` what was healed or endured
//! (`Broker::incidents`).
//!
//! This module owns no state of its own: it must not decide anything the circuit, the
//! outage log or the episode do not already know.

use redis::Value;

use super::failure::{self, unavailable};
use super::{circuit, defaults, outage, ShardBroker};
use crate::broker::{BrokerError, BrokerHealth, BrokerIncidents};

impl ShardBroker {
    /// Notes the outcome of a command for the outage log, the circuit, the out-of-memory
    /// episode and `/healthz`: an unreachable Redis is logged once per outage, and Redis
    /// out of memory once per episode, not once per failed command.
    pub(crate) fn track<T>(
        &self,
        what: &str,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        match &result {
            Ok(_) => {
                self.inner.circuit.answered();
                self.inner.outage.recovered();
            }
            Err(e @ BrokerError::Unavailable { source }) => {
                self.inner.outage.failed(what, e);
                if self.inner.circuit.failed(source) == circuit::Failed::Opened {
                    self.start_probe();
                }
            }
            Err(BrokerError::OutOfMemory) => {
                self.inner.circuit.answered();
                self.inner.outage.recovered();
                self.inner.oom.refused(what);
            }
            Err(_) => {}
        }
        result
    }

    /// Runs a command through the circuit: refused at once while it is open (see
    /// `circuit`), else run and its outcome noted (`track`).
    pub(super) async fn guarded<T>(
        &self,
        what: &str,
        command: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        self.inner.circuit.admit()?;
        self.track(what, command.await)
    }

    /// A write that landed: ends an out-of-memory episode once writes settle.
    pub(super) fn wrote(&self) {
        self.inner.oom.wrote();
    }
}

/// Whether Redis can serve requests now (see `Broker::health`).
pub(super) async fn report(broker: &ShardBroker) -> BrokerHealth {
    let inner = &broker.inner;
    let down_for = || {
        inner
            .outage
            .down()
            .map_or(0, |(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    if inner.circuit.is_open() {
        let reason = inner
            .outage
            .down()
            .map_or_else(|| "no answer".to_owned(), |(_, reason)| reason);
        return BrokerHealth::Down {
            reason: format!(
                "redis unreachable: {reason} (commands are refused at once; a probe tries Redis every {} ms)",
                circuit::PROBE_EVERY.as_millis()
            ),
            for_ms: down_for(),
        };
    }
    let wait = inner.options.response_timeout.min(defaults::PING_WAIT);
    let mut conn = broker.conn();
    let ping = redis::cmd("PING");
    let result = match tokio::time::timeout(wait, ping.query_async::<Value>(&mut conn)).await {
        Ok(answered) => answered.map(|_| ()).map_err(unavailable),
        Err(_) => Err(failure::unreachable(format!(
            "no answer to PING within {} ms",
            wait.as_millis()
        ))),
    };
    match broker.track("health check", result) {
        Ok(()) => match inner.oom.current() {
            Some(lasted) => BrokerHealth::Degraded {
                code: "out_of_memory",
                reason: "redis is out of memory (maxmemory): it refuses writes, so ingest answers 503 and commits wait".to_owned(),
                for_ms: u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
            },
            None => BrokerHealth::Up,
        },
        Err(e) => BrokerHealth::Down {
            reason: format!("redis unreachable: {}", outage::describe(&e)),
            for_ms: down_for(),
        },
    }
}

/// What the broker noticed going wrong with Redis so far (see `Broker::incidents`).
pub(super) fn incidents(broker: &ShardBroker) -> BrokerIncidents {
    let inner = &broker.inner;
    BrokerIncidents {
        state_lost: inner.epoch.heals(),
        last_state_loss: inner.epoch.last(),
        out_of_memory_episodes: inner.oom.episodes(),
    }
}
