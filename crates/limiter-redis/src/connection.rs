//! The kept connections: opened through the topology's source, replaced when a call shows
//! them broken or stalled, and the calls made on them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, RedisError, Script};
use limiter_core::{Error, ErrorKind};
use parking_lot::Mutex;

use crate::adjust::{ADJUST_SCRIPT, Adjust};
use crate::error::{classify, classify_pool};
use crate::script::{Answer, Call, SCRIPT, answers, probe_key};
use crate::topology::{Conn, Connect, Source};
use crate::{BACKEND, RedisConfig, batch};

/// The longest a call may wait on a connection before its cancellation (a caller's deadline)
/// marks the connection as stalled; shorter deadlines scale it down (a fifth of
/// [`RedisConfig::timeout`]). Redis answers a healthy local call in well under a millisecond,
/// and in about 6 ms at the 99th percentile under full load.
const STALLED_AFTER: Duration = Duration::from_millis(10);

/// The limiter's state, shared with the tasks that send batched checks.
pub(crate) struct Inner {
    pub(crate) source: Source,
    kept: Box<[Kept]>,
    next: AtomicUsize,
    generation: AtomicU64,
    /// The SHA-1 of [`SCRIPT`], for `EVALSHA`.
    sha: String,
    /// The SHA-1 of [`ADJUST_SCRIPT`], for `EVALSHA`.
    adjust_sha: String,
    /// One per connection when checks are batched; none when each check is its own call.
    pub(crate) lanes: Box<[batch::Lane]>,
    pub(crate) config: RedisConfig,
}

/// One kept connection, tagged with a generation so that a failure on an old connection
/// never throws away its replacement.
#[derive(Default)]
struct Kept {
    conn: Mutex<Option<(u64, Conn)>>,
    /// Held while the connection is being opened, so the callers that find none wait for
    /// one new connection instead of each opening its own (a herd that exhausts the pool).
    opening: tokio::sync::Mutex<()>,
}

impl Inner {
    /// The state for `config`'s Redis, reached through `source`; nothing is opened yet.
    pub(crate) fn new(config: RedisConfig, source: Source) -> Self {
        let batched = config.max_batch > 1 && !matches!(source, Source::Cluster(_));
        let lanes = if batched { config.connections } else { 0 };
        Self {
            source,
            kept: (0..config.connections).map(|_| Kept::default()).collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            sha: Script::new(SCRIPT).get_hash().to_owned(),
            adjust_sha: Script::new(ADJUST_SCRIPT).get_hash().to_owned(),
            lanes: (0..lanes).map(|_| batch::Lane::default()).collect(),
            config,
        }
    }

    /// The next kept connection in turn.
    pub(crate) fn next_connection(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.kept.len()
    }

    /// Every connection answers `PING` (one that fails as unavailable is replaced and asked
    /// again once: `PING` is safe to repeat, unlike a check), then the script decides a
    /// probe. Each step is bounded by the connect and response timeouts; a caller bounds
    /// the whole.
    pub(crate) async fn warm_up(&self) -> Result<(), Error> {
        for i in 0..self.kept.len() {
            if let Err(e) = self.ping(i).await {
                if !e.is_unavailable() {
                    return Err(e);
                }
                self.ping(i).await?;
            }
        }
        self.probe(self.next_connection(), probe_key()).await
    }

    /// `PING` on connection `i`, opening it if needed.
    pub(crate) async fn ping(&self, i: usize) -> Result<(), Error> {
        let (generation, mut conn) = self.connection(i).await?;
        let guard = StallGuard::new(self, i, generation);
        let result = redis::cmd("PING").query_async::<String>(&mut conn).await;
        guard.disarm();
        result.map(drop).map_err(|e| self.failed(i, generation, e))
    }

    /// One check of the script on `key`, on connection `i`: whether Redis can decide, which
    /// takes running the script, reading and writing.
    pub(crate) async fn probe(&self, i: usize, key: String) -> Result<(), Error> {
        let call = Call::probe(key);
        let reply = self.run_on(i, &call).await?;
        match reply.allowed(1, |_| call.keys[0].clone()) {
            // The probe's key holds something else: it is the probe's own, so it is cleared
            // and the probe asked again, or the circuit could never close.
            Err(e) if e.is_per_check() => {
                let (generation, mut conn) = self.connection(i).await?;
                redis::cmd("DEL")
                    .arg(&call.keys[0])
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| self.failed(i, generation, e))?;
                let reply = self.run_on(i, &call).await?;
                reply.allowed(1, |_| call.keys[0].clone()).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// How long a call may wait on a connection before its cancellation marks the
    /// connection as stalled: a fifth of the check's deadline, at most [`STALLED_AFTER`].
    pub(crate) fn stalled_after(&self) -> Duration {
        (self.config.timeout / 5).min(STALLED_AFTER)
    }

    /// One check as its own script call, on connection `i`.
    pub(crate) async fn run_on(&self, i: usize, call: &Call) -> Result<Answer, Error> {
        let reply = self
            .eval_on(i, |mut conn| async move {
                call.eval(&mut conn, &self.sha).await
            })
            .await?;
        first(answers(&reply, call.sizes())?)
    }

    /// One peek or refund (`lua/adjust.lua`), on connection `i`: its answer has the format
    /// of one check's.
    pub(crate) async fn adjust_on(&self, i: usize, call: &Adjust) -> Result<Answer, Error> {
        let reply = self
            .eval_on(i, |mut conn| async move {
                call.eval(&mut conn, &self.adjust_sha).await
            })
            .await?;
        first(answers(&reply, std::iter::once(call.keys.len()))?)
    }

    /// `eval` on connection `i` (opened if needed), watched for a stall, its failure
    /// classified and the connection dropped if the failure may lie in it.
    async fn eval_on<F, R>(&self, i: usize, eval: F) -> Result<Vec<i64>, Error>
    where
        F: FnOnce(Conn) -> R,
        R: Future<Output = redis::RedisResult<Vec<i64>>>,
    {
        let (generation, conn) = self.connection(i).await?;
        let guard = StallGuard::new(self, i, generation);
        let result = eval(conn).await;
        guard.disarm();
        result.map_err(|e| self.failed(i, generation, e))
    }

    /// The script's SHA-1, for `EVALSHA`.
    pub(crate) fn sha(&self) -> &str {
        &self.sha
    }

    /// Connection `i`, opened through the source if there is none.
    pub(crate) async fn connection(&self, i: usize) -> Result<(u64, Conn), Error> {
        let kept = &self.kept[i];
        if let Some(conn) = kept.conn.lock().clone() {
            return Ok(conn);
        }
        let _opening = kept.opening.lock().await;
        if let Some(conn) = kept.conn.lock().clone() {
            return Ok(conn); // opened while this caller waited
        }
        let conn = self.source.connect().await.map_err(|e| match e {
            Connect::Pool(e) => classify_pool(e),
            Connect::Redis(e) => classify(e),
        })?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *kept.conn.lock() = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Classifies a failure on connection `i` and drops the connection when the failure may
    /// lie in it: a dead socket, credentials Redis no longer takes (a new connection logs in
    /// again, with a restored password), a reply out of step. A refusal that a new
    /// connection would meet the same (out of memory, writes stopped, a missing permission,
    /// a script error) keeps it.
    pub(crate) fn failed(&self, i: usize, generation: u64, e: RedisError) -> Error {
        let error = classify(e);
        if matches!(
            error.kind(),
            ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Auth
                | ErrorKind::Reply
                | ErrorKind::Client
        ) {
            self.forget(i, generation);
        }
        error
    }

    /// Drops connection `i` if it is still `generation`, so the next call opens a new one.
    pub(crate) fn forget(&self, i: usize, generation: u64) {
        if !self.source.replaces_failed() {
            return;
        }
        let mut kept = self.kept[i].conn.lock();
        if kept.as_ref().is_some_and(|(g, _)| *g == generation) {
            *kept = None;
        }
    }

    /// The error of a check that missed [`RedisConfig::timeout`].
    pub(crate) fn timed_out(&self) -> Error {
        Error::Timeout {
            backend: BACKEND,
            after: self.config.timeout,
        }
    }
}

/// The answer of a call of one check.
fn first(mut answers: impl Iterator<Item = Answer>) -> Result<Answer, Error> {
    answers
        .next()
        .ok_or_else(|| Error::backend(BACKEND, ErrorKind::Reply, "a call of no checks was sent"))
}

/// Replaces a connection whose call was abandoned after waiting [`Inner::stalled_after`]: a
/// caller's deadline (the fallback's, say) cancels the call before any error reaches this
/// backend, so without this a connection stuck behind a network partition would stay kept,
/// and every later call on it would hang until TCP gave up.
struct StallGuard<'a> {
    limiter: &'a Inner,
    connection: usize,
    generation: u64,
    started: Instant,
    armed: bool,
}

impl<'a> StallGuard<'a> {
    fn new(limiter: &'a Inner, connection: usize, generation: u64) -> Self {
        Self {
            limiter,
            connection,
            generation,
            started: Instant::now(),
            armed: true,
        }
    }

    /// The call finished: its own result says what to do with the connection.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StallGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.started.elapsed() >= self.limiter.stalled_after() {
            self.limiter.forget(self.connection, self.generation);
        }
    }
}
