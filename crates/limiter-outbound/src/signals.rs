//! The remote's own signals: a host paused until its `Retry-After`, in this process and,
//! with Redis, for the whole fleet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use limiter_redis::RedisLimiter;

use crate::shared::SharedRedis;
use limiter_redis::redis::{self, Script};
use parking_lot::Mutex;

/// The longest pause a remote may ask for: a hostile or broken `Retry-After` of a year
/// must not stop a crawler for a year.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// Sets a host's pause unless a later one is set: KEYS[1] the pause key, ARGV[1] the end
/// in ms since the epoch (also the key's expiry, PXAT).
const PAUSE_SCRIPT: &str = r"
local pause_end = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause_end > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1])
end
return 1
";

/// Where pauses are kept.
#[derive(Debug)]
pub(crate) struct Signals {
    local: Mutex<HashMap<String, SystemTime>>,
    redis: Option<SharedRedis>,
}

/// The longest a pause read or write may take before Redis counts as down.
const DEADLINE: Duration = Duration::from_millis(100);

fn key(authority: &str) -> String {
    // One hash tag per host: the key lives on one cluster slot.
    format!("rl:out:{{{authority}}}:paused")
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Signals {
    pub(crate) fn local() -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis: None,
        }
    }

    pub(crate) fn redis(redis: Arc<RedisLimiter>) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis: Some(SharedRedis::new(redis, PAUSE_SCRIPT)),
        }
    }

    fn shared(&self) -> Option<&(Arc<RedisLimiter>, Script)> {
        self.redis.as_ref().and_then(SharedRedis::get)
    }

    fn failed(&self) {
        if let Some(redis) = &self.redis {
            redis.failed();
        }
    }

    /// Writes a pause to Redis, if it is there.
    async fn share(&self, authority: &str, until: SystemTime) {
        if let Some((redis, script)) = self.shared() {
            let sent = async {
                let mut conn = redis.connection().await.ok()?;
                script
                    .key(key(authority))
                    .arg(millis(until))
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .ok()
            };
            if tokio::time::timeout(DEADLINE, sent)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                self.failed();
                tracing::warn!(
                    host = authority,
                    "pause not shared with the fleet: Redis unavailable"
                );
            }
        }
    }

    /// Pauses `authority` until `until` (at most [`MAX_PAUSE`] from now).
    pub(crate) async fn pause(&self, authority: &str, until: SystemTime) {
        let until = until.min(SystemTime::now() + MAX_PAUSE);
        {
            let mut local = self.local.lock();
            // Ended pauses are forgotten once many hosts have paused.
            if local.len() > 1024 {
                let now = SystemTime::now();
                local.retain(|_, end| *end > now);
            }
            let entry = local.entry(authority.to_owned()).or_insert(until);
            *entry = (*entry).max(until);
        }
        self.share(authority, until).await;
    }

    /// Until when `authority` is paused, if it is: the later of this process's pause and
    /// the fleet's (Redis unavailable: this process's alone).
    pub(crate) async fn paused_until(&self, authority: &str) -> Option<SystemTime> {
        let now = SystemTime::now();
        let local = {
            let mut local = self.local.lock();
            match local.get(authority) {
                Some(&until) if until > now => Some(until),
                Some(_) => {
                    local.remove(authority);
                    None
                }
                None => None,
            }
        };
        let shared = match self.shared() {
            Some((redis, _)) => {
                let read = async {
                    let mut conn = redis.connection().await.ok()?;
                    redis::cmd("GET")
                        .arg(key(authority))
                        .query_async::<Option<u64>>(&mut conn)
                        .await
                        .ok()
                };
                match tokio::time::timeout(DEADLINE, read).await.ok().flatten() {
                    Some(until) => until.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
                    None => {
                        self.failed();
                        None
                    }
                }
            }
            None => None,
        }
        .filter(|&until| until > now);
        // A pause this process saw while Redis was away, later than the fleet's: share it
        // now, so the other workers stop too.
        if let Some(mine) = local
            && self.shared().is_some()
            && shared.is_none_or(|theirs| millis(theirs) < millis(mine))
        {
            self.share(authority, mine).await;
        }
        local.max(shared)
    }
}
