//! [`RedisConnection`]: the limiter's connections lent for a service's own commands (the
//! rules, statistics and violations a fleet shares), so they reach the same Redis, of any
//! topology, with the same credentials and timeouts.

use std::fmt;
use std::sync::Arc;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use limiter_core::Error;

use crate::RedisLimiter;
use crate::connection::Inner;
use crate::error::classify;
use crate::topology::{Conn, Topology};

/// One of the limiter's multiplexed connections, for commands of the caller's own. It
/// implements redis-rs's `ConnectionLike`, so any `redis::cmd(…)`, pipeline or script runs
/// on it; [`RedisConnection::error`] classifies what fails like the limiter's own errors.
#[derive(Clone)]
pub struct RedisConnection {
    conn: Conn,
    inner: Arc<Inner>,
    /// Which kept connection this is, and its generation: a failure that may lie in the
    /// connection drops it, as the limiter's own calls do, so the next one is new.
    index: usize,
    generation: u64,
}

impl RedisConnection {
    /// A Redis error as the limiter classifies it ([`Error::is_unavailable`] and so on).
    pub fn error(e: RedisError) -> Error {
        classify(e)
    }

    /// Drops the connection from the limiter's set when `result` failed in a way that may
    /// lie in the connection (a dead socket after a restart, say).
    fn judge<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            let _ = self.inner.failed(self.index, self.generation, e.clone());
        }
        result
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.judge(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.judge(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl RedisLimiter {
    /// A connection for the caller's own commands: the next of the limiter's, opened if
    /// needed. Cluster connections route each command by its keys.
    ///
    /// # Errors
    /// As for a check: unavailable when Redis cannot be reached.
    pub async fn connection(&self) -> Result<RedisConnection, Error> {
        let inner = &self.inner;
        let index = inner.next_connection();
        let (generation, conn) = inner.connection(index).await?;
        Ok(RedisConnection {
            conn,
            inner: Arc::clone(inner),
            index,
            generation,
        })
    }

    /// The URL of the one server to subscribe to for notifications, when the topology has
    /// one (`redis://`); `None` for a cluster or Sentinel, whose callers poll instead.
    pub fn pubsub_url(&self) -> Option<&str> {
        let url = self.inner.config.url.as_str();
        (Topology::of(url) == Topology::Single).then_some(url)
    }
}
