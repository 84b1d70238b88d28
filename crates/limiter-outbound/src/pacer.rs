//! [`Pacer`]: a turn for each request, per host and role, first come first served among
//! this process's waiters, never longer than the role's `max_delay`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use limiter_core::{Decision, Error, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::aimd::Rates;
use crate::config::{ConfigError, OutboundConfig};
use crate::error::{OutboundError, TooLongWait};
use crate::leases::{Lease, Leases};
use crate::plan::{Plan, Target};
use crate::signals::Signals;

/// A host and a role.
type QueueKey = (String, Option<String>);

/// The waiters of one host and role, in arrival order (Tokio's mutex is fair).
#[derive(Debug, Default)]
struct Queue {
    turn: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// Paces requests per host and role with any [`RateLimiter`]: the fleet shares one budget
/// per host (and per role) when the limiter is Redis or a fallback to it.
#[derive(Debug)]
pub struct Pacer {
    limiter: Arc<dyn RateLimiter>,
    plan: Plan,
    signals: Signals,
    leases: Leases,
    rates: Rates,
    queues: Mutex<HashMap<QueueKey, Arc<Queue>>>,
}

/// A turn granted: a token of the host (and role), and a place under the in-flight caps
/// that lasts as long as the turn (the middleware keeps it until the response body is
/// read or dropped).
#[derive(Debug)]
pub struct Turn {
    /// How long the request waited for it.
    pub waited: Duration,
    /// The place under the in-flight caps, when any cap applies.
    pub lease: Option<Lease>,
}

impl Pacer {
    /// A pacer for `config`, deciding with `limiter`. Remote pauses (`Retry-After`) are kept
    /// in this process only; [`Pacer::with_redis`] shares them with the fleet.
    ///
    /// # Errors
    /// A [`ConfigError`] when the configuration does not validate.
    pub fn new(
        config: &OutboundConfig,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Self, ConfigError> {
        Self::build(config, limiter, None)
    }

    /// As [`new`](Self::new), with a remote's pauses and the in-flight caps shared through
    /// `redis` (the same Redis as the limiter's): a `Retry-After` seen by one worker pauses
    /// the host for all, and the caps count every worker's requests.
    ///
    /// # Errors
    /// A [`ConfigError`] when the configuration does not validate.
    pub fn with_redis(
        config: &OutboundConfig,
        limiter: Arc<dyn RateLimiter>,
        redis: Arc<limiter_redis::RedisLimiter>,
    ) -> Result<Self, ConfigError> {
        Self::build(config, limiter, Some(redis))
    }

    fn build(
        config: &OutboundConfig,
        limiter: Arc<dyn RateLimiter>,
        redis: Option<Arc<limiter_redis::RedisLimiter>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let plan = Plan::new(config).map_err(|e| ConfigError::from_core(&e))?;
        let signals = match &redis {
            Some(redis) => Signals::redis(Arc::clone(redis)),
            None => Signals::local(),
        };
        Ok(Self {
            limiter,
            plan,
            signals,
            leases: Leases::new(redis.clone(), config.lease_ttl, config.in_flight_total),
            rates: Rates::new(redis),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// The role a request for `path` on `authority` has when it names none.
    pub fn classify(&self, authority: &str, path: &str) -> Option<&str> {
        self.plan.classify(authority, path)
    }

    /// Waits for the turn of one request to `authority` (`host` or `host:port`) in `role`.
    ///
    /// # Errors
    /// [`OutboundError::TooLongWait`] when the turn would come after the role's
    /// `max_delay` (known at once when the queue ahead already needs longer); then the
    /// request must not be sent. [`OutboundError::Limiter`] when the limiter cannot decide.
    pub async fn acquire(
        &self,
        authority: &str,
        role: Option<&str>,
    ) -> Result<Turn, OutboundError> {
        let started = Instant::now();
        let target = self.plan.target(authority, role);
        let deadline = started + target.max_delay;
        let too_long = |retry_after: Option<Duration>| {
            OutboundError::TooLongWait(TooLongWait {
                host: authority.to_owned(),
                role: role.map(str::to_owned),
                retry_after,
                max_delay: target.max_delay,
            })
        };
        let queue = self.queue(authority, role);
        let ahead = queue.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&queue);
        // The turn of the last in line comes when the tokens for everyone up to it have:
        // if that is already too late, fail now rather than at the deadline.
        if ahead > 0
            && let Some(wait) = self.expected_wait(&target, ahead as u64 + 1).await
            && wait > target.max_delay
        {
            return Err(too_long(Some(wait)));
        }
        let Ok(_turn) = tokio::time::timeout_at(deadline, queue.turn.lock()).await else {
            return Err(too_long(None));
        };
        // A place under the in-flight caps first, so no token is spent waiting for one.
        let Ok(lease) = self
            .leases
            .acquire(authority, target.in_flight, deadline)
            .await
        else {
            return Err(too_long(None));
        };
        loop {
            if let Some(until) = self.signals.paused_until(authority).await {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                if Instant::now() + wait > deadline {
                    return Err(too_long(Some(wait)));
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            match self
                .take(authority, &target)
                .await
                .map_err(OutboundError::Limiter)?
            {
                None => {
                    return Ok(Turn {
                        waited: started.elapsed(),
                        lease,
                    });
                }
                Some(wait) => {
                    if Instant::now() + wait > deadline {
                        return Err(too_long(Some(wait)));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Pauses `authority` until `until` (a remote's `Retry-After`), fleet-wide with Redis.
    pub async fn pause(&self, authority: &str, until: SystemTime) {
        self.signals.pause(authority, until).await;
    }

    /// Takes a token from the role's bucket, the host's and the host's AIMD rate, all or
    /// none: `None` when taken, else how long until they could be.
    async fn take(&self, authority: &str, target: &Target) -> Result<Option<Duration>, Error> {
        let aimd = match &target.aimd {
            Some(bounds) => self
                .rates
                .policy(authority, bounds)
                .await
                .map(|policy| (target.host.0, policy)),
            None => None,
        };
        let buckets = target
            .role
            .iter()
            .chain(std::iter::once(&target.host))
            .chain(aimd.as_ref());
        let mut taken: Vec<&(limiter_core::ClientKey, limiter_core::Policy)> = Vec::new();
        for bucket in buckets {
            let (key, policy) = bucket;
            let decision = self.limiter.check(key, policy, 1).await?;
            if !decision.allowed {
                // A later bucket said no: the tokens taken go back, exactly.
                for (key, policy) in taken {
                    self.limiter.refund(key, policy, 1).await?;
                }
                return Ok(Some(wait_of(&decision)));
            }
            taken.push(bucket);
        }
        Ok(None)
    }

    /// Takes a response's status into account: a `429` or `503` lowers an AIMD host's
    /// rate, a run of other answers raises it.
    pub async fn answered(&self, authority: &str, status: u16) {
        if let Some(bounds) = self.plan.aimd(authority) {
            self.rates
                .answered(authority, &bounds, matches!(status, 429 | 503))
                .await;
        }
    }

    /// When `n` tokens would be there for the role and the host, by peeking (nothing
    /// taken); `None` if it cannot say.
    async fn expected_wait(&self, target: &Target, n: u64) -> Option<Duration> {
        let mut longest = Duration::ZERO;
        let buckets = std::iter::once(&target.host).chain(target.role.as_ref());
        for (key, policy) in buckets {
            let capacity = policy.quotas().iter().map(|q| q.capacity()).min()?;
            let peek = self.limiter.peek(key, policy, n.min(capacity)).await.ok()?;
            if !peek.allowed {
                longest = longest.max(wait_of(&peek));
            }
        }
        Some(longest)
    }

    fn queue(&self, authority: &str, role: Option<&str>) -> Arc<Queue> {
        let mut queues = self.queues.lock();
        // Queues nobody waits in are dropped, so a crawler of many hosts keeps few.
        if queues.len() > 1024 {
            queues.retain(|_, q| Arc::strong_count(q) > 1);
        }
        Arc::clone(
            queues
                .entry((authority.to_owned(), role.map(str::to_owned)))
                .or_default(),
        )
    }
}

/// A denial's wait, at least a millisecond so a loop never spins.
fn wait_of(d: &Decision) -> Duration {
    d.retry_after
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}

/// One place in a queue, given back however the wait ends.
struct Waiting<'a>(&'a Queue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConfigError {
    pub(crate) fn from_core(e: &Error) -> Self {
        Self::new(format!("quotas: {e}"))
    }
}
