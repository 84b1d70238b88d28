//! [`SharedRedis`]: the Redis one outbound feature (pauses, leases, AIMD) shares with the
//! fleet, with its script, left alone for a while after it fails so that no request waits
//! on a Redis that is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use limiter_redis::RedisLimiter;
use limiter_redis::redis::Script;
use parking_lot::Mutex;

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// A feature's Redis and script, and when it may be asked again after a failure.
#[derive(Debug)]
pub(crate) struct SharedRedis {
    redis: (Arc<RedisLimiter>, Script),
    skip_until: Mutex<Option<Instant>>,
}

impl SharedRedis {
    pub(crate) fn new(redis: Arc<RedisLimiter>, script: &str) -> Self {
        Self {
            redis: (redis, Script::new(script)),
            skip_until: Mutex::new(None),
        }
    }

    /// Redis and the script, unless Redis failed within [`BACKOFF`].
    pub(crate) fn get(&self) -> Option<&(Arc<RedisLimiter>, Script)> {
        match *self.skip_until.lock() {
            Some(until) if Instant::now() < until => None,
            _ => Some(&self.redis),
        }
    }

    /// Redis failed: not asked again for [`BACKOFF`].
    pub(crate) fn failed(&self) {
        *self.skip_until.lock() = Some(Instant::now() + BACKOFF);
    }
}
