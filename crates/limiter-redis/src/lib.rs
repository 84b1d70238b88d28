//! Token buckets shared by every worker, decided atomically inside Redis.
//!
//! Checks are decided by [`SCRIPT`] (`lua/token_bucket.lua`, the Redis half of
//! [`limiter_core::bucket::check`]) over every quota of the client's policy, by `EVALSHA`:
//! one call per check when the worker is idle, one call for many concurrent checks when it
//! is busy (see [Batching](#batching)). The script measures, takes and stores; the worker
//! turns its reply into the decision with the core's own math
//! ([`limiter_core::bucket::outcome_of`]). Time is Redis's `TIME`; a key outlives its
//! bucket's time to refill and expires within twice that ([`Expiry`]), so idle clients cost
//! nothing.
//!
//! Peeks and refunds ([`RateLimiter::peek`], [`RateLimiter::refund`]) run a sibling script,
//! [`ADJUST_SCRIPT`] (`lua/adjust.lua`), on the same keys and stored buckets, one direct
//! call each (never batched), bounded and classified as a single check; the check script
//! is left as it is, tuned for checks alone.
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
//! `rl:{<hash>}:<policy>:<tokens>-<period µs>-<capacity>:v2`, one per quota, where `<hash>`
//! is the client's [`ClientKey`] in hex: never the raw ID. A quota that counts time in ticks
//! coarser than a microsecond ([`Quota::tick`]) adds `-t<tick>` before the `:v2`, so its
//! buckets are never read in other units. The `{<hash>}` hash tag puts every key of one
//! client on one Redis Cluster slot, so the script runs unchanged on a cluster. The quota's
//! numbers are part of the key, so changing a policy starts fresh buckets instead of reading
//! state kept in other units; `:v2` names the stored format ([`StoredBucket`]), so workers
//! of an older version (text buckets, no suffix) and of this one never read each other's
//! buckets during a rolling upgrade.
//!
//! # Connections
//! The limiter keeps [`RedisConfig::connections`] multiplexed connections open and spreads
//! checks over them in turn; each carries many checks at once (in one batched call, or, with
//! `max_batch = 1` and on a cluster, as many calls in flight). The `deadpool-redis` pool
//! creates and replaces them (bounded by its wait and connect timeouts): checking a
//! connection out of the pool for every call would cost a recycling round trip each time.
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

use async_trait::async_trait;
use limiter_core::bucket;
use limiter_core::{Backend, ClientKey, Decision, Error, Partitioned, Policy, RateLimiter};

mod adjust;
mod batch;
mod commands;
mod config;
mod connection;
mod error;
mod script;
mod stored;
mod topology;

pub use adjust::ADJUST_SCRIPT;
pub use commands::RedisConnection;
pub use config::{RedisConfig, redacted};
pub use script::SCRIPT;
pub use stored::{Expiry, StoredBucket};
pub use topology::{Topology, hash_slot};

/// The `redis` crate this backend is built on, so users share one version.
pub use deadpool_redis::redis;

use adjust::{Adjust, Mode};
use connection::Inner;
use script::{Call, bucket_key};
use topology::{Slots, Source};

const BACKEND: &str = "redis";

/// The workspace README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The Redis backend. See the [crate docs](crate).
pub struct RedisLimiter {
    inner: Arc<Inner>,
    /// A cluster's slots, for a fallback's per-slot circuits; `None` elsewhere.
    slots: Option<Slots>,
}

impl RedisLimiter {
    /// A limiter for the Redis at `config.url`. Connections open on first use, so a worker
    /// starts even while Redis is down.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a missing or malformed URL or a setting out of range
    /// ([`RedisConfig::validate`]).
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        if config.url.is_empty() {
            return Err(Error::config("redis url must be set"));
        }
        config.validate()?;
        let source = Source::new(&config)?;
        let cluster = matches!(source, Source::Cluster(_));
        let inner = Arc::new(Inner::new(config, source));
        Ok(Self {
            slots: cluster.then(|| Slots(Arc::clone(&inner))),
            inner,
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
    /// own (`rl:{probe}:write:v2`, which lives two milliseconds), so a Redis that answers `PING`
    /// but refuses writes (`OOM`, `MISCONF`) or the script (`NOPERM`) is not taken for
    /// healthy. A kept connection that fails (Redis restarted since it was opened) is
    /// replaced and asked again once: `PING` is safe to repeat, unlike a check. Each step is
    /// bounded by the connect and response timeouts; bound the whole as you need (a
    /// fallback's warm-up does).
    ///
    /// This is also the backend's [`RateLimiter::ping`], so a fallback's successful probe
    /// leaves no dead connection behind to fail the next checks.
    ///
    /// # Errors
    /// As for [`RateLimiter::check`]: unavailable when Redis cannot be reached in time.
    pub async fn warm_up(&self) -> Result<(), Error> {
        self.inner.warm_up().await
    }

    /// A peek or a refund of `tokens` (`lua/adjust.lua`): one call on the next connection,
    /// never batched, bounded by [`RedisConfig::timeout`] and its errors classified as a
    /// single check's.
    async fn adjust(
        &self,
        mode: Mode,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        if policy.is_unlimited() {
            return Ok(Decision::unlimited());
        }
        let quotas = policy.quotas();
        bucket::validate(quotas, tokens)?;
        let call = Adjust::new(mode, key, policy, tokens);
        let inner = &self.inner;
        let reply = inner.adjust_on(inner.next_connection(), &call);
        let answer = tokio::time::timeout(inner.config.timeout, reply)
            .await
            .map_err(|_| inner.timed_out())??;
        let key_of = |q| bucket_key(key, policy, &quotas[q]);
        let outcome = match mode {
            Mode::Peek => answer.outcome(quotas, tokens, key_of)?,
            Mode::Refund => answer.refund_outcome(quotas, tokens, key_of)?,
        };
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Redis))
    }

    /// One `PING` on the next connection in turn: the bare round trip of this client, for
    /// comparing a check's latency with. ([`RateLimiter::ping`] pings every connection.)
    ///
    /// # Errors
    /// As for [`RateLimiter::check`].
    pub async fn ping_once(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.ping(inner.next_connection()).await
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
                inner.run_on(inner.next_connection(), &call).await
            } else {
                batch::run(inner, call).await
            }
        };
        let reply = tokio::time::timeout(inner.config.timeout, reply)
            .await
            .map_err(|_| inner.timed_out())??;
        let outcome = reply.outcome(quotas, cost, |q| bucket_key(key, policy, &quotas[q]))?;
        Ok(Decision::from_outcome(&outcome, quotas, Backend::Redis))
    }

    /// `lua/adjust.lua` in peek mode: one call, writing nothing, bounded and classified as
    /// a single check.
    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.adjust(Mode::Peek, key, policy, cost).await
    }

    /// `lua/adjust.lua` in refund mode: one call, bounded and classified as a single check.
    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.adjust(Mode::Refund, key, policy, tokens).await
    }

    /// [`RedisLimiter::warm_up`]: every connection answers `PING`, dead ones replaced, and
    /// the script decides a probe. It runs to its own end (each step bounded by the connect
    /// and response timeouts) even if the caller stops waiting sooner, as a fallback's probe
    /// does at its deadline: so a connection that stalled is found and replaced however
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

    /// On a cluster, its 16384 hash slots ([`hash_slot`]), grouped by master.
    fn partitioning(&self) -> Option<&dyn Partitioned> {
        self.slots.as_ref().map(|slots| slots as &dyn Partitioned)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_print_their_password() {
        let err =
            RedisLimiter::new(RedisConfig::from_url("redis://u:s3cret@[::1:bad")).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(!err.to_string().contains("s3cret"), "{err}");
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
