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
        // A place in the line before anything else is awaited: Tokio's mutex queues a
        // waiter when it is first polled, so poll once now and keep the future.
        let mut turn = std::pin::pin!(queue.turn.lock());
        let mut held = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match turn.as_mut().poll(cx) {
                std::task::Poll::Ready(guard) => Some(guard),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        // The turn of the last in line comes when the tokens for everyone up to it have:
        // if that is already too late, fail now rather than at the deadline.
        let mut expected = None;
        if held.is_none() {
            expected = self
                .expected_wait(authority, &target, ahead as u64 + 1)
                .await;
            if let Some(wait) = expected.filter(|w| *w > target.max_delay) {
                return Err(too_long(Some(wait)));
            }
        }
        let _turn = match held.take() {
            Some(guard) => guard,
            None => match tokio::time::timeout_at(deadline, turn).await {
                Ok(guard) => guard,
                Err(_) => return Err(too_long(expected)),
            },
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
                None => break,
                Some(wait) => {
                    if Instant::now() + wait > deadline {
                        return Err(too_long(Some(wait)));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // The tokens first, then a place under the in-flight caps: a request never holds
        // a place while it sleeps for tokens. If no place comes in time, the tokens go back.
        match self
            .leases
            .acquire(authority, target.in_flight, deadline)
            .await
        {
            Ok(lease) => Ok(Turn {
                waited: started.elapsed(),
                lease,
            }),
            Err(()) => {
                self.give_back(authority, &target).await;
                Err(too_long(None))
            }
        }
    }

    /// Gives back the tokens of one turn, best effort.
    async fn give_back(&self, authority: &str, target: &Target<'_>) {
        for (key, policy) in target.buckets() {
            if let Err(e) = self.limiter.refund(&key, policy, 1).await {
                tracing::debug!(host = authority, error = %e, "token not given back");
            }
        }
        if let Some(bounds) = &target.aimd {
            self.rates.untake(authority, bounds).await;
        }
    }

    /// Pauses `authority` until `until` (a remote's `Retry-After`), fleet-wide with Redis.
    pub async fn pause(&self, authority: &str, until: SystemTime) {
        self.signals.pause(authority, until).await;
    }

    /// Takes a token from every bucket of a turn, all or none: `None` when taken, else how
    /// long until they could be. Whatever happens after the first is taken (a denial, an
    /// error), the tokens taken go back, best effort.
    async fn take(&self, authority: &str, target: &Target<'_>) -> Result<Option<Duration>, Error> {
        let mut outcome = Ok(None);
        let mut taken = 0;
        for (key, policy) in target.buckets() {
            match self.limiter.check(&key, policy, 1).await {
                Ok(d) if d.allowed => taken += 1,
                Ok(d) => {
                    outcome = Ok(Some(wait_of(&d)));
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if matches!(outcome, Ok(None))
            && let Some(bounds) = &target.aimd
            && let Some(wait) = self.rates.take(authority, bounds).await
        {
            outcome = Ok(Some(wait.max(Duration::from_millis(1))));
        }
        if !matches!(outcome, Ok(None)) {
            for (key, policy) in target.buckets().take(taken) {
                if let Err(e) = self.limiter.refund(&key, policy, 1).await {
                    tracing::debug!(host = authority, error = %e, "token not given back");
                }
            }
        }
        outcome
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

    /// When the `n`th turn from now would come, by peeking (nothing taken): the tokens a
    /// bucket can hold now, then one per refill interval for the rest; and no sooner than
    /// a pause ends. `None` if it cannot say.
    async fn expected_wait(
        &self,
        authority: &str,
        target: &Target<'_>,
        n: u64,
    ) -> Option<Duration> {
        let mut longest = self
            .signals
            .paused_until(authority)
            .await
            .and_then(|until| until.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        for (key, policy) in target.buckets() {
            let capacity = policy.quotas().iter().map(|q| q.capacity()).min()?;
            let now = n.min(capacity);
            let peek = self.limiter.peek(&key, policy, now).await.ok()?;
            let mut wait = if peek.allowed {
                Duration::ZERO
            } else {
                wait_of(&peek)
            };
            // The slowest quota's interval between tokens, for the turns beyond.
            let interval = policy
                .quotas()
                .iter()
                .map(|q| q.period() / u32::try_from(q.tokens()).unwrap_or(u32::MAX).max(1))
                .max()?;
            let beyond = u32::try_from(n - now).unwrap_or(u32::MAX);
            wait += interval.saturating_mul(beyond);
            longest = longest.max(wait);
        }
        // An AIMD host paces at no more than its highest rate.
        if let Some(bounds) = &target.aimd {
            let beyond = u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX);
            longest = longest.max(Duration::from_secs_f64(1.0 / bounds.max).saturating_mul(beyond));
        }
        Some(longest)
    }

    fn queue(&self, authority: &str, role: Option<&str>) -> Arc<Queue> {
        let mut queues = self.queues.lock();
        // Queues nobody waits in are dropped, so a crawler of many hosts keeps few; the
        // sweep runs when the map has doubled since the last, so its cost is amortised.
        if queues.len() > 1024 && queues.len().is_power_of_two() {
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
