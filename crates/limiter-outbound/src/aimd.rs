//! AIMD: a host's rate, lowered on the remote's refusals and raised after runs of good
//! answers, and the host's pace at that rate: one bucket per host whatever the rate (GCRA:
//! the theoretical arrival time of the next request, moved on by one interval per turn),
//! shared by the fleet in one Redis hash, this process's own while Redis is unavailable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use limiter_redis::RedisLimiter;

use crate::shared::SharedRedis;
use limiter_redis::redis::Script;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::Aimd;

/// One AIMD operation on a host's hash (`rate`, `ok`, `cut`, `tat`), KEYS[1]. ARGV: 1 the
/// operation, 2 min, 3 max, 4 decrease, 5 step, 6 after.
/// - `take`: a turn at the current rate, without bursts: replies 0 and moves `tat` on by
///   one interval when `tat` has come, else replies the ms until it comes;
/// - `untake`: gives a turn back (`tat` one interval earlier, not before now);
/// - `throttle`: the rate times `decrease`, at most once a second (one burst of refusals
///   counts once);
/// - `ok`: one good answer; `after` in a row add `step`.
///
/// The rate stays within [min, max] and starts at max; the key expires an hour after its
/// last use. Times are Redis's, in ms.
const SCRIPT: &str = r"
local min, max = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op = ARGV[1]
local reply = 0
if op == 'take' or op == 'untake' then
  local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
  local interval = 1000 / rate
  if op == 'take' then
    if tat > now then
      reply = math.ceil(tat - now)
    else
      redis.call('HSET', KEYS[1], 'tat', tostring(math.max(tat, now) + interval))
    end
  else
    redis.call('HSET', KEYS[1], 'tat', tostring(math.max(now - interval, tat - interval)))
  end
elseif op == 'throttle' then
  local cut = tonumber(redis.call('HGET', KEYS[1], 'cut') or '0')
  if now - cut >= 1000 then
    rate = math.max(min, rate * tonumber(ARGV[4]))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ok', 0, 'cut', tostring(now))
  end
else
  local ok = redis.call('HINCRBY', KEYS[1], 'ok', 1)
  if ok >= tonumber(ARGV[6]) then
    rate = math.min(max, rate + tonumber(ARGV[5]))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'ok', 0)
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return {reply, tostring(rate)}
";

/// The longest an AIMD call may take before Redis counts as down.
const DEADLINE: Duration = Duration::from_millis(100);

/// A host's AIMD state in this process: the rate, the run of good answers, the last cut,
/// and the theoretical arrival time of the next turn.
#[derive(Debug, Clone, Copy)]
struct Local {
    rate: f64,
    ok: u32,
    cut: Option<Instant>,
    tat: Instant,
}

/// Every AIMD host's rate and pace.
#[derive(Debug)]
pub(crate) struct Rates {
    redis: Option<SharedRedis>,
    hosts: Mutex<HashMap<String, Local>>,
}

fn key(authority: &str) -> String {
    format!("rl:out:{{{authority}}}:aimd")
}

/// What the operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Take,
    Untake,
    Throttle,
    Ok,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Untake => "untake",
            Op::Throttle => "throttle",
            Op::Ok => "ok",
        }
    }
}

impl Rates {
    pub(crate) fn new(redis: Option<Arc<RedisLimiter>>) -> Self {
        Self {
            redis: redis.map(|r| SharedRedis::new(r, SCRIPT)),
            hosts: Mutex::new(HashMap::new()),
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

    /// Runs `op` for the fleet in Redis: (ms to wait, the rate), or `None` if Redis failed.
    async fn shared_op(&self, authority: &str, aimd: &Aimd, op: Op) -> Option<(u64, f64)> {
        let (redis, script) = self.shared()?;
        let call = async {
            let mut conn = redis.connection().await.ok()?;
            script
                .key(key(authority))
                .arg(op.as_str())
                .arg(aimd.min)
                .arg(aimd.max)
                .arg(aimd.decrease)
                .arg(aimd.step)
                .arg(aimd.after)
                .invoke_async::<(u64, String)>(&mut conn)
                .await
                .ok()
        };
        match tokio::time::timeout(DEADLINE, call).await.ok().flatten() {
            Some((wait, rate)) => {
                let rate = rate.parse().unwrap_or(aimd.max);
                metrics::gauge!("outbound_aimd_rate", "host" => authority.to_owned()).set(rate);
                Some((wait, rate))
            }
            None => {
                self.failed();
                None
            }
        }
    }

    /// The same operation on this process's own state.
    fn local_op(&self, authority: &str, aimd: &Aimd, op: Op) -> Duration {
        let now = Instant::now();
        let mut hosts = self.hosts.lock();
        let local = hosts.entry(authority.to_owned()).or_insert(Local {
            rate: aimd.max,
            ok: 0,
            cut: None,
            tat: now,
        });
        let interval = Duration::from_secs_f64(1.0 / local.rate);
        let mut wait = Duration::ZERO;
        match op {
            Op::Take if local.tat > now => wait = local.tat - now,
            Op::Take => local.tat = local.tat.max(now) + interval,
            Op::Untake => local.tat = (local.tat.checked_sub(interval).unwrap_or(now)).max(now),
            Op::Throttle => {
                if local
                    .cut
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                {
                    local.rate = (local.rate * aimd.decrease).max(aimd.min);
                    local.ok = 0;
                    local.cut = Some(now);
                }
            }
            Op::Ok => {
                local.ok += 1;
                if local.ok >= aimd.after {
                    local.rate = (local.rate + aimd.step).min(aimd.max);
                    local.ok = 0;
                }
            }
        }
        metrics::gauge!("outbound_aimd_rate", "host" => authority.to_owned()).set(local.rate);
        wait
    }

    async fn run(&self, authority: &str, aimd: &Aimd, op: Op) -> Duration {
        match self.shared_op(authority, aimd, op).await {
            Some((wait_ms, rate)) => {
                // Keep this process's rate near the fleet's, for an outage.
                if let Some(local) = self.hosts.lock().get_mut(authority) {
                    local.rate = rate;
                }
                Duration::from_millis(wait_ms)
            }
            None => self.local_op(authority, aimd, op),
        }
    }

    /// A turn at the host's rate: `None` when taken, else how long until it comes.
    pub(crate) async fn take(&self, authority: &str, aimd: &Aimd) -> Option<Duration> {
        let wait = self.run(authority, aimd, Op::Take).await;
        (!wait.is_zero()).then_some(wait)
    }

    /// Gives back a turn taken for a request that is not sent.
    pub(crate) async fn untake(&self, authority: &str, aimd: &Aimd) {
        self.run(authority, aimd, Op::Untake).await;
    }

    /// Takes one answer into account: `throttled` for a 429 or 503.
    pub(crate) async fn answered(&self, authority: &str, aimd: &Aimd, throttled: bool) {
        let op = if throttled { Op::Throttle } else { Op::Ok };
        self.run(authority, aimd, op).await;
    }
}
