//! AIMD: a host's rate, lowered on the remote's refusals and raised after runs of good
//! answers, shared by the fleet in Redis (this process's own while Redis is unavailable).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use limiter_core::{Policy, Quota};
use limiter_redis::RedisLimiter;
use limiter_redis::redis::{self, Script};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::Aimd;

/// Applies one answer to a host's rate: KEYS[1] the host's AIMD hash (`rate`, `ok`,
/// `cut`); ARGV: 1 `throttle` or `ok`, 2 min, 3 max, 4 decrease, 5 step, 6 after. Replies
/// the rate. A throttle within a second of the last cut is ignored (the requests of one
/// burst answer together), and the key expires after an hour without answers.
const SCRIPT: &str = r"
local min, max = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'throttle' then
  local cut = tonumber(redis.call('HGET', KEYS[1], 'cut') or '0')
  if now - cut >= 1000 then
    rate = math.max(min, rate * tonumber(ARGV[4]))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ok', 0, 'cut', now)
  end
else
  local ok = redis.call('HINCRBY', KEYS[1], 'ok', 1)
  if ok >= tonumber(ARGV[6]) then
    rate = math.min(max, rate + tonumber(ARGV[5]))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ok', 0)
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(rate)
";

/// A rate read from Redis is used this long before it is read again.
const FRESH: Duration = Duration::from_millis(100);
/// After Redis fails, it is not asked again for this long.
const BACKOFF: Duration = Duration::from_secs(1);
/// The longest an AIMD call may take before Redis counts as down.
const DEADLINE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Local {
    rate: f64,
    ok: u32,
    cut: Option<Instant>,
    read: Option<Instant>,
}

/// Every AIMD host's rate.
#[derive(Debug)]
pub(crate) struct Rates {
    redis: Option<(Arc<RedisLimiter>, Script)>,
    hosts: Mutex<HashMap<String, Local>>,
    skip_until: Mutex<Option<Instant>>,
}

fn key(authority: &str) -> String {
    format!("rl:out:{{{authority}}}:aimd")
}

impl Rates {
    pub(crate) fn new(redis: Option<Arc<RedisLimiter>>) -> Self {
        Self {
            redis: redis.map(|r| (r, Script::new(SCRIPT))),
            hosts: Mutex::new(HashMap::new()),
            skip_until: Mutex::new(None),
        }
    }

    fn shared(&self) -> Option<&(Arc<RedisLimiter>, Script)> {
        match *self.skip_until.lock() {
            Some(until) if Instant::now() < until => None,
            _ => self.redis.as_ref(),
        }
    }

    fn failed(&self) {
        *self.skip_until.lock() = Some(Instant::now() + BACKOFF);
    }

    fn local(&self, authority: &str, aimd: &Aimd) -> Local {
        *self
            .hosts
            .lock()
            .entry(authority.to_owned())
            .or_insert(Local {
                rate: aimd.max,
                ok: 0,
                cut: None,
                read: None,
            })
    }

    /// The host's rate now, as a policy of one quota (`None` if it cannot be one).
    pub(crate) async fn policy(&self, authority: &str, aimd: &Aimd) -> Option<Policy> {
        let local = self.local(authority, aimd);
        let fresh = local.read.is_some_and(|at| at.elapsed() < FRESH);
        let rate = match self.shared() {
            Some((redis, _)) if !fresh => {
                let read = async {
                    let mut conn = redis.connection().await.ok()?;
                    redis::cmd("HGET")
                        .arg(key(authority))
                        .arg("rate")
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .ok()
                };
                match tokio::time::timeout(DEADLINE, read).await.ok().flatten() {
                    Some(rate) => {
                        let rate = rate.and_then(|r| r.parse().ok()).unwrap_or(aimd.max);
                        self.remember(authority, rate);
                        rate
                    }
                    None => {
                        self.failed();
                        local.rate
                    }
                }
            }
            _ => local.rate,
        };
        policy_at(rate.clamp(aimd.min, aimd.max))
    }

    fn remember(&self, authority: &str, rate: f64) {
        metrics::gauge!("outbound_aimd_rate", "host" => authority.to_owned()).set(rate);
        if let Some(local) = self.hosts.lock().get_mut(authority) {
            local.rate = rate;
            local.read = Some(Instant::now());
        }
    }

    /// Takes one answer into account: `throttled` for a 429 or 503.
    pub(crate) async fn answered(&self, authority: &str, aimd: &Aimd, throttled: bool) {
        if let Some((redis, script)) = self.shared() {
            let call = async {
                let mut conn = redis.connection().await.ok()?;
                script
                    .key(key(authority))
                    .arg(if throttled { "throttle" } else { "ok" })
                    .arg(aimd.min)
                    .arg(aimd.max)
                    .arg(aimd.decrease)
                    .arg(aimd.step)
                    .arg(aimd.after)
                    .invoke_async::<String>(&mut conn)
                    .await
                    .ok()
            };
            match tokio::time::timeout(DEADLINE, call).await.ok().flatten() {
                Some(rate) => {
                    self.local(authority, aimd);
                    self.remember(authority, rate.parse().unwrap_or(aimd.max));
                    return;
                }
                None => self.failed(),
            }
        }
        let mut hosts = self.hosts.lock();
        let local = hosts.entry(authority.to_owned()).or_insert(Local {
            rate: aimd.max,
            ok: 0,
            cut: None,
            read: None,
        });
        if throttled {
            if local
                .cut
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
            {
                local.rate = (local.rate * aimd.decrease).max(aimd.min);
                local.ok = 0;
                local.cut = Some(Instant::now());
            }
        } else {
            local.ok += 1;
            if local.ok >= aimd.after {
                local.rate = (local.rate + aimd.step).min(aimd.max);
                local.ok = 0;
            }
        }
    }
}

/// `rate` requests a second as a quota: exact to a hundredth of a request per second,
/// without bursts. Each rate is a policy of its own whose bucket starts full, so a burst
/// allowance would be handed out again at every change of rate.
fn policy_at(rate: f64) -> Option<Policy> {
    let per_100s = (rate * 100.0).round().max(1.0) as u64;
    let quota = Quota::new(per_100s, Duration::from_secs(100))
        .and_then(|q| q.allow_burst(1))
        .ok()?;
    Policy::new("outbound.aimd", [quota]).ok()
}
