//! Token buckets shared by every worker, decided atomically inside Redis.
//!
//! Checks are decided by [`SCRIPT`] (`lua/token_bucket.lua`, the transliteration of
//! [`limiter_core::bucket::check`]) over every quota of the client's policy, by `EVALSHA`:
//! one call per check when the worker is idle, one call for many concurrent checks when it
//! is busy (see [Batching](#batching)). Time is Redis's `TIME`; keys carry a TTL equal to
//! their time to refill, so idle clients cost nothing.
//!
//! ```no_run
//! use limiter_core::{ClientKeyHasher, RateLimiter, Tier, TierPolicies};
//! use limiter_redis::{RedisConfig, RedisLimiter};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), limiter_core::Error> {
//! let limiter = RedisLimiter::new(RedisConfig::from_url("redis://127.0.0.1:6379"))?;
//! let hasher = ClientKeyHasher::new(std::env::var("RATELIMIT_HASH_SECRET").unwrap_or_default())?;
//! let tiers = TierPolicies::default();
//!
//! let decision = limiter.check(&hasher.hash("203.0.113.9"), tiers.get(Tier::Anonymous), 1).await?;
//! println!("allowed: {}, remaining: {}", decision.allowed, decision.remaining);
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//! `rl:{<hash>}:<policy>:<tokens>-<period µs>-<capacity>`, one per quota, where `<hash>` is the
//! client's [`ClientKey`] in hex: never the raw ID. A quota that counts time in ticks coarser
//! than a microsecond ([`Quota::tick`]) adds `-t<tick>`, so its buckets are never read in
//! other units. The `{<hash>}` hash tag puts every key of
//! one client on one Redis Cluster slot, so the script runs unchanged on a cluster. The
//! quota's numbers are part of the key, so changing a policy starts fresh buckets instead of
//! reading state kept in other units.
//!
//! # Connections
//! The limiter keeps [`RedisConfig::connections`] multiplexed connections open and spreads
//! checks over them in turn; each carries many checks at once (in one batched call, or, with
//! `max_batch = 1` and on a cluster, as many calls in flight). The `deadpool-redis` pool
//! creates and replaces them (bounded by its wait and connect timeouts): checking a
//! connection out of the pool for every call would cost a recycling round trip each time. A connection that
//! fails with an outage error is dropped and replaced on next use.
//!
//! Checks must run inside a Tokio runtime (the connections and timers are Tokio's).
//!
//! # Batching
//! Each connection carries one script call at a time. A check that finds its connection
//! idle is sent at once; the checks that arrive while a call is in flight wait in the
//! connection's queue and go together in the next call, up to [`RedisConfig::max_batch`]
//! (default 64). There is no timer: batches form from the load alone, so an idle worker pays
//! nothing and a busy one sends fewer, larger calls. Each check in a call is decided as if it
//! had been sent alone, in order; a key that is not a bucket fails only its own check; a
//! check whose caller gave up before its batch left is never sent. On a Redis Cluster every
//! check is its own call (different clients' keys live in different slots).
//!
//! # Errors
//! Every check is bounded by [`RedisConfig::timeout`]. Refused, dropped and timed-out
//! connections, an exhausted pool, and Redis saying it cannot serve (`LOADING`, `BUSY`,
//! `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`, `READONLY`, a `MOVED` or `ASK` still there after
//! the cluster client's retries) are [`Error::is_unavailable`]. Redis refusing to decide
//! (`OOM`, `MISCONF`, `NOAUTH`, `WRONGPASS`, `NOPERM`, a failed script, a reply of the wrong
//! shape) is [`Error::Backend`] with its [`ErrorKind`]: a fallback treats both as outages, so
//! a Redis that answers with errors never switches limiting off. A key that holds something
//! other than a bucket fails only its own check ([`Error::UnreadableBucket`]). On one Redis
//! or Sentinel, a connection whose call failed in a way that may lie in the connection (I/O,
//! a refused login, a reply out of step) is replaced on next use, so a restored password or
//! a restarted server is picked up.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_redis::PoolError;
use deadpool_redis::redis::{ErrorKind as RedisErrorKind, RedisError, Script, ServerErrorKind};
use limiter_core::bucket::{self, Outcome};
use limiter_core::{Backend, ClientKey, Decision, Error, ErrorKind, Policy, Quota, RateLimiter};
use parking_lot::Mutex;

mod batch;
mod topology;

use topology::{Conn, Connect, Source};
pub use topology::{Topology, hash_slot};

/// The `redis` crate this backend is built on, so users share one version.
pub use deadpool_redis::redis;

/// The token-bucket script, `lua/token_bucket.lua`: its header states the contract.
pub const SCRIPT: &str = include_str!("../../../lua/token_bucket.lua");

const BACKEND: &str = "redis";

/// The workspace README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Settings of a [`RedisLimiter`]. Every wait is bounded by default: no call waits forever.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` with TLS support compiled in).
    pub url: String,
    /// Multiplexed connections kept open; checks are spread over them. Default 4.
    pub connections: usize,
    /// Longest wait for the pool to hand out a new connection. Default 50 ms.
    pub pool_wait_timeout: Duration,
    /// Longest wait to open a connection. Default 250 ms.
    pub connect_timeout: Duration,
    /// Longest wait for a reply on an open connection. Default 250 ms.
    pub response_timeout: Duration,
    /// Deadline of a whole check: connecting, the script and its reply. Default 500 ms. A
    /// call abandoned after a fifth of it (at most 10 ms), by this deadline or a caller's,
    /// marks its connection as stalled, and the connection is replaced.
    pub timeout: Duration,
    /// Most checks sent in one script call. Each connection carries one call at a time; the
    /// checks that arrive while it is in flight go together in the next, so a lone check is
    /// sent at once and a busy worker sends fewer, larger calls. 1 sends every check as its
    /// own call, concurrently. Default 64. A Redis Cluster sends every check on its own
    /// (checks of different clients live on different slots). So must anything that shards
    /// keys behind a single `redis://` address (a proxy such as Envoy's or twemproxy, a
    /// clustered database behind one endpoint): set 1 there, or batches that span shards
    /// are refused.
    pub max_batch: usize,
}

impl RedisConfig {
    /// The defaults, for the Redis at `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connections: 4,
            pool_wait_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(250),
            timeout: Duration::from_millis(500),
            max_batch: 64,
        }
    }
}

/// Prints the URL without its password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("connections", &self.connections)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// `url` with every password replaced by `<redacted>`, for logs and error messages: the
/// user information of `redis://user:password@host` (and of every other scheme), and the
/// `pass` and `password` parameters of `redis+unix:///path?pass=…`.
pub fn redacted(url: &str) -> String {
    // The query is what follows the first `?` after the user information (whose password
    // may hold a `?`), or the first `?` at all when an `@` is only in the query (a password
    // there may hold one too). Its password parameters go first, then the user information.
    let after_userinfo = url.rfind('@').map_or(0, |at| at + 1);
    let query = url[after_userinfo..]
        .find('?')
        .map(|q| after_userinfo + q)
        .or_else(|| url.find('?'));
    let mut out = String::with_capacity(url.len());
    match query {
        Some(q) => {
            out.push_str(&url[..=q]);
            for (n, param) in url[q + 1..].split('&').enumerate() {
                if n > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass")
                            || name.eq_ignore_ascii_case("password") =>
                    {
                        out.push_str(name);
                        out.push_str("=<redacted>");
                    }
                    _ => out.push_str(param),
                }
            }
        }
        None => out.push_str(url),
    }
    match (out.find("://"), out.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>{}", &out[..scheme], &out[at..])
        }
        _ => out,
    }
}

/// The Redis backend. See the [crate docs](crate).
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// The limiter's state, shared with the tasks that send batched checks.
struct Inner {
    source: Source,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    generation: AtomicU64,
    /// The SHA-1 of [`SCRIPT`], for `EVALSHA`.
    sha: String,
    /// One per connection when checks are batched; none when each check is its own call.
    lanes: Box<[batch::Lane]>,
    config: RedisConfig,
}

/// One kept connection, tagged with a generation so that a failure on an old connection
/// never throws away its replacement.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<(u64, Conn)>>,
    /// Held while the slot is being filled, so the callers that find it empty wait for one
    /// new connection instead of each opening its own (a herd that exhausts the pool).
    filling: tokio::sync::Mutex<()>,
}

impl RedisLimiter {
    /// A limiter for the Redis at `config.url`. Connections open on first use, so a worker
    /// starts even while Redis is down.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a malformed URL, zero connections or a zero batch size.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        if config.connections == 0 {
            return Err(invalid("connections must be at least 1"));
        }
        if config.max_batch == 0 {
            return Err(invalid("max_batch must be at least 1"));
        }
        let source = Source::new(&config)?;
        let batched = config.max_batch > 1 && !matches!(source, Source::Cluster(_));
        let lanes = if batched { config.connections } else { 0 };
        Ok(Self {
            inner: Arc::new(Inner {
                source,
                slots: (0..config.connections).map(|_| Slot::default()).collect(),
                next_slot: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                sha: Script::new(SCRIPT).get_hash().to_owned(),
                lanes: (0..lanes).map(|_| batch::Lane::default()).collect(),
                config,
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis keys of `client`'s buckets under `policy`, one per quota, in order.
    pub fn bucket_keys(client: &ClientKey, policy: &Policy) -> Vec<String> {
        policy
            .quotas()
            .iter()
            .map(|q| bucket_key(client, policy, q))
            .collect()
    }

    /// Opens every connection now and checks that Redis answers on each, instead of on
    /// first use, then that it can decide: one check of the script on a probe key of its
    /// own (`rl:{probe}:write`, which lives a millisecond), so a Redis that answers `PING`
    /// but refuses writes (`OOM`, `MISCONF`) or the script (`NOPERM`) is not taken for
    /// healthy. A kept connection that fails (Redis restarted since it was opened) is
    /// replaced and asked again once: `PING` is safe to repeat, unlike a check.
    ///
    /// This is also the backend's [`RateLimiter::ping`], so a fallback's successful probe
    /// leaves no dead connection behind to fail the next checks.
    ///
    /// # Errors
    /// As for [`RateLimiter::check`]: unavailable when Redis cannot be reached in time.
    pub async fn warm_up(&self) -> Result<(), Error> {
        self.inner.warm_up().await
    }

    /// One `PING` on the next connection in turn: the bare round trip of this client, for
    /// comparing a check's latency with. ([`RateLimiter::ping`] pings every connection.)
    ///
    /// # Errors
    /// As for [`RateLimiter::check`].
    pub async fn ping_once(&self) -> Result<(), Error> {
        let i = self.inner.next_slot();
        self.inner.ping_slot(i).await
    }
}

impl Inner {
    /// The next connection in turn.
    fn next_slot(&self) -> usize {
        self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    async fn warm_up(&self) -> Result<(), Error> {
        let all = async {
            for i in 0..self.slots.len() {
                if let Err(e) = self.ping_slot(i).await {
                    if !e.is_unavailable() {
                        return Err(e);
                    }
                    self.ping_slot(i).await?;
                }
            }
            self.probe(self.next_slot(), PROBE_KEY.to_owned()).await
        };
        tokio::time::timeout(self.config.timeout, all)
            .await
            .map_err(|_| self.timed_out())?
    }

    /// `PING` on slot `i`'s connection, opening it if needed; a failure that means the
    /// connection is unusable empties the slot.
    async fn ping_slot(&self, i: usize) -> Result<(), Error> {
        let (generation, mut conn) = self.connection(i).await?;
        let guard = StallGuard::new(self, i, generation);
        let result = redis::cmd("PING").query_async::<String>(&mut conn).await;
        guard.disarm();
        result.map(drop).map_err(|e| self.failed(i, generation, e))
    }

    /// One check of the script on `key`, on connection `i`: whether Redis can decide, which
    /// takes running the script, reading and writing.
    async fn probe(&self, i: usize, key: String) -> Result<(), Error> {
        let call = Call::probe(key);
        let reply = self.run_on(i, &call).await?;
        match parse_reply(reply, 1, |_| call.keys[0].clone()) {
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
                parse_reply(reply, 1, |_| call.keys[0].clone()).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// How long a call may wait on a connection before its cancellation marks the
    /// connection as stalled: a fifth of the check's deadline, at most [`STALLED_AFTER`].
    fn stalled_after(&self) -> Duration {
        (self.config.timeout / 5).min(STALLED_AFTER)
    }

    /// One check as its own script call, on connection `i`.
    async fn run_on(&self, i: usize, call: &Call) -> Result<[i64; 5], Error> {
        let (generation, mut conn) = self.connection(i).await?;
        let guard = StallGuard::new(self, i, generation);
        let result = self.eval(&mut conn, call).await;
        guard.disarm();
        let reply = result.map_err(|e| self.failed(i, generation, e))?;
        <[i64; 5]>::try_from(reply).map_err(|reply| {
            Error::backend(
                BACKEND,
                ErrorKind::Reply,
                format!("script replied {} values, expected 5", reply.len()),
            )
        })
    }

    /// Runs the script on `call`'s checks: `EVALSHA`, and on `NOSCRIPT` (a restart, a
    /// `SCRIPT FLUSH`, a failover) `EVAL` with the script itself, which leaves it cached. On
    /// a cluster `EVAL` goes wherever the keys are by then, MOVED and ASK followed: loading
    /// the script separately could land on another node while slots move.
    async fn eval(&self, conn: &mut Conn, call: &Call) -> redis::RedisResult<Vec<i64>> {
        let command = |name: &str, script: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(script)
                .arg(call.keys.len())
                .arg(&call.keys)
                .arg(&call.args);
            cmd
        };
        match command("EVALSHA", &self.sha).query_async(conn).await {
            Err(e) if e.kind() == RedisErrorKind::Server(ServerErrorKind::NoScript) => {
                command("EVAL", SCRIPT).query_async(conn).await
            }
            other => other,
        }
    }

    /// The connection of slot `i`, opened through the pool if the slot is empty.
    async fn connection(&self, i: usize) -> Result<(u64, Conn), Error> {
        let slot = &self.slots[i];
        if let Some(kept) = slot.conn.lock().clone() {
            return Ok(kept);
        }
        let _filling = slot.filling.lock().await;
        if let Some(kept) = slot.conn.lock().clone() {
            return Ok(kept); // filled while this caller waited
        }
        let conn = self.source.connect().await.map_err(|e| match e {
            Connect::Pool(e) => classify_pool(e),
            Connect::Redis(e) => classify(e),
        })?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *slot.conn.lock() = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Classifies a failure on slot `i`'s connection and drops that connection when the
    /// failure may lie in it: a dead socket, credentials Redis no longer takes (a new
    /// connection logs in again, with a restored password), a reply out of step. A refusal
    /// that a new connection would meet the same (out of memory, writes stopped, a missing
    /// permission, a script error) keeps it.
    fn failed(&self, i: usize, generation: u64, e: RedisError) -> Error {
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

    /// Empties slot `i` if it still holds connection `generation`, so the next call opens a
    /// new one.
    fn forget(&self, i: usize, generation: u64) {
        if !self.source.replaces_failed() {
            return;
        }
        let mut slot = self.slots[i].conn.lock();
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            backend: BACKEND,
            after: self.config.timeout,
        }
    }
}

/// The keys and arguments of one script call, in the script's order: one check's, or a
/// batch's, one check after the other.
#[derive(Default)]
struct Call {
    keys: Vec<String>,
    args: Vec<u64>,
}

impl Call {
    fn new(client: &ClientKey, policy: &Policy, cost: u64) -> Self {
        let quotas = policy.quotas();
        let mut args = Vec::with_capacity(2 + 4 * quotas.len());
        args.extend([cost, quotas.len() as u64]);
        for q in quotas {
            args.extend([q.unit(), q.refill(), q.max_level(), q.tick()]);
        }
        Self {
            keys: RedisLimiter::bucket_keys(client, policy),
            args,
        }
    }

    /// The probe's check: cost 1 on a quota of one token per millisecond (unit 1000, refill
    /// 1, max 1000, tick 1), so the key it writes expires a millisecond later.
    fn probe(key: String) -> Self {
        Self {
            keys: vec![key],
            args: vec![1, 1, 1_000, 1, 1_000, 1],
        }
    }

    /// Appends `other`'s check, leaving it empty.
    fn append(&mut self, other: &mut Call) {
        self.keys.append(&mut other.keys);
        self.args.append(&mut other.args);
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        let quotas = policy.quotas();
        bucket::validate(quotas, cost)?;
        let call = Call::new(key, policy, cost);
        let inner = &self.inner;
        let reply = async {
            if inner.lanes.is_empty() {
                inner.run_on(inner.next_slot(), &call).await
            } else {
                batch::run(inner, call).await
            }
        };
        let reply = tokio::time::timeout(inner.config.timeout, reply)
            .await
            .map_err(|_| inner.timed_out())??;
        let outcome = parse_reply(reply, quotas.len(), |q| bucket_key(key, policy, &quotas[q]))?;
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Redis))
    }

    /// [`RedisLimiter::warm_up`]: every connection answers `PING`, dead ones replaced, and
    /// the script decides a probe. It runs to its own end (bounded by
    /// [`RedisConfig::timeout`]) even if the caller stops waiting sooner, as a fallback's
    /// probe does at its deadline: so a connection that stalled is found and replaced however
    /// short the caller's deadline.
    async fn ping(&self) -> Result<(), Error> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.warm_up().await;
        };
        let inner = Arc::clone(&self.inner);
        runtime
            .spawn(async move { inner.warm_up().await })
            .await
            .unwrap_or_else(|e| Err(Error::unavailable(BACKEND, e)))
    }

    /// On a cluster, the 16384 hash slots; otherwise 1.
    fn partitions(&self) -> usize {
        match self.inner.source {
            Source::Cluster(_) => topology::SLOTS,
            _ => 1,
        }
    }

    /// On a cluster, the client's [`hash_slot`].
    fn partition_of(&self, key: &ClientKey) -> usize {
        match self.inner.source {
            Source::Cluster(_) => usize::from(hash_slot(key)),
            _ => 0,
        }
    }

    /// On a cluster, one check of the script on a probe key of the slot, answered only by
    /// the master that owns it now and only if it can decide (reads, writes, the script);
    /// otherwise [`ping`].
    ///
    /// [`ping`]: RateLimiter::ping
    async fn ping_partition(&self, partition: usize) -> Result<(), Error> {
        let Ok(slot) = u16::try_from(partition) else {
            return Err(invalid(format_args!("no hash slot {partition}")));
        };
        let inner = &self.inner;
        if !matches!(inner.source, Source::Cluster(_)) {
            return inner.warm_up().await;
        }
        let probe = inner.probe(inner.next_slot(), topology::slot_probe_key(slot));
        tokio::time::timeout(inner.config.timeout, probe)
            .await
            .map_err(|_| inner.timed_out())?
    }

    /// On a cluster, every slot range of the master that owns `partition`, read from
    /// `CLUSTER SLOTS` (asked of any node that answers); `partition` alone if none does.
    async fn colocated(&self, partition: usize) -> Vec<std::ops::Range<usize>> {
        #[allow(
            clippy::single_range_in_vec_init,
            reason = "one range: the partition alone"
        )]
        let alone = vec![partition..partition + 1];
        let inner = &self.inner;
        if !matches!(inner.source, Source::Cluster(_)) {
            return alone;
        }
        let i = inner.next_slot();
        let ask = async {
            let (_, conn) = inner.connection(i).await.ok()?;
            conn.slot_owners().await
        };
        match tokio::time::timeout(inner.config.timeout, ask).await {
            Ok(Some(owners)) => topology::colocated(&owners, partition).unwrap_or(alone),
            _ => alone,
        }
    }
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisLimiter")
            .field("config", &inner.config)
            .field("topology", &Topology::of(&inner.config.url))
            .field("batched", &!inner.lanes.is_empty())
            .field("connections", &inner.source.status())
            .finish_non_exhaustive()
    }
}

/// The longest a call may wait on a connection before its cancellation (a caller's deadline)
/// marks the connection as stalled; shorter deadlines scale it down (a fifth of
/// [`RedisConfig::timeout`]). Redis answers a healthy local call in well under a millisecond,
/// and in about 6 ms at the 99th percentile under full load.
const STALLED_AFTER: Duration = Duration::from_millis(10);

/// The key of the probe that [`RedisLimiter::warm_up`] (and so [`RateLimiter::ping`]) runs
/// the script on: no client's, and it lives a millisecond.
const PROBE_KEY: &str = "rl:{probe}:write";

/// Replaces a connection whose call was abandoned after waiting [`Inner::stalled_after`]: a caller's
/// deadline (the fallback's, say) cancels the call before any error reaches this backend, so
/// without this a connection stuck behind a network partition would stay in its slot, and
/// every later call on it would hang until TCP gave up.
struct StallGuard<'a> {
    limiter: &'a Inner,
    slot: usize,
    generation: u64,
    started: Instant,
    armed: bool,
}

impl<'a> StallGuard<'a> {
    fn new(limiter: &'a Inner, slot: usize, generation: u64) -> Self {
        Self {
            limiter,
            slot,
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
            self.limiter.forget(self.slot, self.generation);
        }
    }
}

fn bucket_key(client: &ClientKey, policy: &Policy, q: &Quota) -> String {
    let key = format!(
        "rl:{{{client}}}:{}:{}-{}-{}",
        policy.name(),
        q.tokens(),
        q.period_micros(),
        q.capacity()
    );
    match q.tick() {
        1 => key,
        tick => format!("{key}-t{tick}"),
    }
}

/// The script's reply as an [`Outcome`], refusing anything out of range. `key_of(q)` names
/// quota `q`'s key, for the error when it holds something that is not a bucket.
fn parse_reply(
    reply: [i64; 5],
    quotas: usize,
    key_of: impl FnOnce(usize) -> String,
) -> Result<Outcome, Error> {
    let [allowed, quota, remaining, reset, retry] = reply;
    let bad = || {
        Error::backend(
            BACKEND,
            ErrorKind::Reply,
            format!("script replied {reply:?}, out of range"),
        )
    };
    let quota = usize::try_from(quota)
        .ok()
        .filter(|&q| q < quotas)
        .ok_or_else(bad)?;
    let allowed = match allowed {
        0 => false,
        1 => true,
        -1 => {
            let key = key_of(quota);
            return Err(Error::UnreadableBucket {
                backend: BACKEND,
                reason: format!("{key} holds something that is not a bucket"),
            });
        }
        _ => return Err(bad()),
    };
    let remaining = u64::try_from(remaining).map_err(|_| bad())?;
    let reset_after_us = u64::try_from(reset).map_err(|_| bad())?;
    let retry_after_us = match (allowed, retry) {
        (true, -1) => None,
        (false, r) if r > 0 => Some(r.unsigned_abs()),
        _ => return Err(bad()),
    };
    Ok(Outcome {
        allowed,
        quota,
        remaining,
        reset_after_us,
        retry_after_us,
    })
}

/// Outage or refusal, and of which kind: by the error's kind and code, never its message.
fn classify(e: RedisError) -> Error {
    let cannot_serve = matches!(
        e.kind(),
        RedisErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
                // A redirection still there after the client's retries: the cluster is
                // moving slots or failing over, and will answer again.
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ) | RedisErrorKind::ClusterConnectionNotFound
    ) || e.code() == Some("BUSY");
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || cannot_serve
    {
        return Error::unavailable(BACKEND, e);
    }
    let kind = match (e.kind(), e.code()) {
        (_, Some("OOM")) => ErrorKind::OutOfMemory,
        (_, Some("MISCONF")) => ErrorKind::WritesRefused,
        (RedisErrorKind::AuthenticationFailed, _) | (_, Some("NOAUTH" | "WRONGPASS")) => {
            ErrorKind::Auth
        }
        (RedisErrorKind::Server(ServerErrorKind::NoPerm), _) | (_, Some("NOPERM")) => {
            ErrorKind::Permission
        }
        (RedisErrorKind::Parse | RedisErrorKind::UnexpectedReturnType, _) => ErrorKind::Reply,
        (RedisErrorKind::Server(_) | RedisErrorKind::Extension, _) => ErrorKind::Server,
        _ => ErrorKind::Client,
    };
    Error::backend(BACKEND, kind, e)
}

fn classify_pool(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(_) | PoolError::Closed => Error::unavailable(BACKEND, e),
        other => Error::backend(BACKEND, ErrorKind::Client, other),
    }
}

fn invalid(reason: impl fmt::Display) -> Error {
    Error::InvalidConfig {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_print_their_password() {
        let config = RedisConfig::from_url("redis://worker:s3cret@10.0.0.7:6379/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>@10.0.0.7:6379/2"), "{shown}");
        let err =
            RedisLimiter::new(RedisConfig::from_url("redis://u:s3cret@[::1:bad")).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn every_url_form_is_redacted() {
        for (url, shown) in [
            (
                "redis+unix:///run/redis.sock?db=2&pass=s3cret",
                "redis+unix:///run/redis.sock?db=2&pass=<redacted>",
            ),
            (
                "unix:///run/redis.sock?PASSWORD=s3cret&user=w",
                "unix:///run/redis.sock?PASSWORD=<redacted>&user=w",
            ),
            (
                "redis+unix:///run/redis.sock?pass=s3@cret",
                "redis+unix:///run/redis.sock?pass=<redacted>",
            ),
            (
                "redis+unix:///run/redis.sock?pass=s3?cret&db=1",
                "redis+unix:///run/redis.sock?pass=<redacted>&db=1",
            ),
            (
                "redis://:s3?cret@h:6379/?password=s3cond",
                "redis://<redacted>@h:6379/?password=<redacted>",
            ),
            ("rediss://w:s3cret@h:6380/1", "rediss://<redacted>@h:6380/1"),
            ("redis://:s3?cret@h:6379", "redis://<redacted>@h:6379"),
            (
                "redis+sentinel://w:s3cret@a:1,b:2/m",
                "redis+sentinel://<redacted>@a:1,b:2/m",
            ),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            assert_eq!(redacted(url), shown);
            let config = format!("{:?}", RedisConfig::from_url(url));
            assert!(
                !config.contains("s3") && !config.contains("cret"),
                "{config}"
            );
        }
    }

    #[test]
    fn keys_hold_the_hash_tag_and_never_the_raw_id() {
        let policy = Policy::new(
            "api",
            [
                Quota::per_second(10).unwrap(),
                Quota::per_hour(5000).unwrap(),
            ],
        )
        .unwrap();
        let client = ClientKey::from(0xabcd_u128);
        let keys = RedisLimiter::bucket_keys(&client, &policy);
        assert_eq!(
            keys,
            [
                "rl:{0000000000000000000000000000abcd}:api:10-1000000-10",
                "rl:{0000000000000000000000000000abcd}:api:5000-3600000000-5000",
            ]
        );
    }

    #[test]
    fn replies_out_of_range_are_backend_errors() {
        let key = |q| format!("key{q}");
        assert!(parse_reply([1, 0, 5, 10, -1], 1, key).is_ok());
        assert!(parse_reply([0, 1, 0, 10, 7], 2, key).is_ok());
        let err = parse_reply([-1, 1, 0, 0, 0], 2, key).unwrap_err();
        assert!(err.to_string().contains("key1 holds something"), "{err}");
        assert!(err.is_per_check(), "{err}");
        for bad in [
            [2, 0, 5, 10, -1],
            [1, 1, 5, 10, -1],
            [1, 0, -5, 10, -1],
            [1, 0, 5, -10, -1],
            [1, 0, 5, 10, 3],
            [0, 0, 5, 10, -1],
            [0, 0, 5, 10, 0],
            [-2, 0, 0, 0, 0],
        ] {
            let err = parse_reply(bad, 1, key).unwrap_err();
            assert!(
                !err.is_unavailable() && !err.is_invalid_input() && !err.is_per_check(),
                "{bad:?}: {err}"
            );
            assert_eq!(err.kind(), ErrorKind::Reply);
        }
    }

    #[test]
    fn coarse_quotas_key_their_tick() {
        let policy = Policy::new("p", [Quota::per_day(20_011).unwrap()]).unwrap();
        let keys = RedisLimiter::bucket_keys(&ClientKey::from(1_u128), &policy);
        assert_eq!(
            keys,
            ["rl:{00000000000000000000000000000001}:p:20011-86400000000-20011-t2"]
        );
    }

    #[test]
    fn the_probe_is_one_token_per_millisecond() {
        let q = Quota::new(1, Duration::from_millis(1)).unwrap();
        let probe = Call::probe(PROBE_KEY.to_owned());
        assert_eq!(
            probe.args,
            [1, 1, q.unit(), q.refill(), q.max_level(), q.tick()]
        );
    }

    #[test]
    fn refusals_are_outages_of_their_kind() {
        // Errors as Redis sends them on the wire.
        let server = |line: &str| {
            let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
            classify(value.extract_error().unwrap_err())
        };
        for (line, kind) in [
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                ErrorKind::OutOfMemory,
            ),
            (
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
                ErrorKind::WritesRefused,
            ),
            ("NOAUTH Authentication required.", ErrorKind::Auth),
            (
                "WRONGPASS invalid username-password pair or user is disabled.",
                ErrorKind::Auth,
            ),
            (
                "NOPERM User w has no permissions to run the 'evalsha' command",
                ErrorKind::Permission,
            ),
            ("ERR max number of clients reached", ErrorKind::Server),
            (
                "ERR user_script:1: Script attempted to access nonexistent global variable",
                ErrorKind::Server,
            ),
        ] {
            let e = server(line);
            assert_eq!(e.kind(), kind, "{line}: {e}");
            assert!(!e.is_invalid_input() && !e.is_per_check(), "{line}");
        }
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
        ] {
            assert!(server(line).is_unavailable(), "{line}");
        }
    }

    #[test]
    fn zero_connections_or_batch_size_is_an_error() {
        let mut config = RedisConfig::from_url("redis://127.0.0.1:6379");
        config.connections = 0;
        assert!(RedisLimiter::new(config).unwrap_err().is_invalid_input());
        let mut config = RedisConfig::from_url("redis://127.0.0.1:6379");
        config.max_batch = 0;
        let err = RedisLimiter::new(config).unwrap_err();
        assert!(
            err.is_invalid_input() && err.to_string().contains("max_batch"),
            "{err}"
        );
    }
}
