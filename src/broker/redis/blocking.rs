//! Blocking reads (`XREAD BLOCK`, `XREADGROUP BLOCK`) that end when this process says so.
//!
//! Redis ends a blocked command's timeout only when its event loop next looks, which with
//! no traffic is its next cron tick: every 100 ms at the default `hz 10`. A `BLOCK 50`
//! returns after about 100 ms. So a wait that must end at a due time (a mover waiting for
//! the next item, a consumer waiting for its queue's) is timed here, and the blocked read is
//! ended with `CLIENT UNBLOCK` on the reading connection's id. The same ends a read that
//! nobody waits for any more.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Value;

use super::failure::unavailable;
use super::ShardBroker;
use crate::broker::BrokerError;

/// A connection of its own for blocking reads, with its `CLIENT ID`.
pub(super) struct BlockingConn {
    conn: MultiplexedConnection,
    id: i64,
}

/// How a blocking read ended.
pub(super) enum Ended {
    /// Redis answered: entries, or nil when its BLOCK time passed or the read was cut short.
    /// A read cut short still carries what Redis handed over before the cut.
    Reply(Value),
    /// Cut short, and Redis could not be told: the read may still be blocked there, so its
    /// late reply would arrive behind the next command. Drop the connection.
    Abandoned,
}

impl BlockingConn {
    pub(super) async fn open(broker: &ShardBroker) -> Result<Self, BrokerError> {
        let mut conn = broker.dedicated().await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(BlockingConn { conn, id })
    }

    /// Runs the blocking `cmd`; if `cut` completes first, ends it with `CLIENT UNBLOCK`
    /// (sent on `shared`, a connection that is not blocked) and returns what Redis then
    /// answers.
    pub(super) async fn read(
        &mut self,
        mut shared: ConnectionManager,
        cmd: &redis::Cmd,
        cut: impl Future<Output = ()>,
    ) -> redis::RedisResult<Ended> {
        let mut conn = self.conn.clone();
        let read = cmd.query_async::<Value>(&mut conn);
        tokio::pin!(read);
        tokio::select! {
            done = &mut read => return done.map(Ended::Reply),
            () = cut => {}
        }
        let unblocked = redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(self.id)
            .query_async::<Value>(&mut shared)
            .await
            .is_ok();
        if !unblocked {
            return Ok(Ended::Abandoned);
        }
        read.await.map(Ended::Reply)
    }
}

/// Completes after `wait`, or never when there is none.
pub(super) async fn after(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
