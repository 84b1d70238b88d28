//! The token-bucket script and its contract: the keys it reads, the arguments it takes, the
//! reply it gives (`lua/token_bucket.lua`'s header states the same).

use std::fmt;

use deadpool_redis::redis::{self, ErrorKind as RedisErrorKind, ServerErrorKind};
use limiter_core::bucket::Outcome;
use limiter_core::{ClientKey, Error, ErrorKind, Policy, Quota};

use crate::BACKEND;
use crate::topology::Conn;

/// The token-bucket script, `lua/token_bucket.lua`: its header states the contract.
pub const SCRIPT: &str = include_str!("../../../lua/token_bucket.lua");

/// The key of the probe that [`RedisLimiter::warm_up`](crate::RedisLimiter::warm_up) (and so
/// `ping`) runs the script on, `rl:{probe}:write`: no client's, and it lives a millisecond.
pub(crate) fn probe_key() -> String {
    key("probe", format_args!("write"))
}

/// A key of this backend: `rl:{<tag>}:<rest>`. The hash tag decides the cluster slot: a
/// client's hash for its buckets, so all of one client's keys live together.
pub(crate) fn key(tag: impl fmt::Display, rest: fmt::Arguments<'_>) -> String {
    format!("rl:{{{tag}}}:{rest}")
}

/// The key of `client`'s bucket of quota `q` under `policy`:
/// `rl:{<hash>}:<policy>:<tokens>-<period µs>-<capacity>[-t<tick>]`.
pub(crate) fn bucket_key(client: &ClientKey, policy: &Policy, q: &Quota) -> String {
    let name = policy.name();
    let (tokens, period, capacity) = (q.tokens(), q.period_micros(), q.capacity());
    match q.tick() {
        1 => key(client, format_args!("{name}:{tokens}-{period}-{capacity}")),
        tick => key(
            client,
            format_args!("{name}:{tokens}-{period}-{capacity}-t{tick}"),
        ),
    }
}

/// The keys and arguments of one script call, in the script's order: one check's, or a
/// batch's, one check after the other.
#[derive(Default)]
pub(crate) struct Call {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<u64>,
}

impl Call {
    pub(crate) fn new(client: &ClientKey, policy: &Policy, cost: u64) -> Self {
        let quotas = policy.quotas();
        let mut args = Vec::with_capacity(2 + 4 * quotas.len());
        args.extend([cost, quotas.len() as u64]);
        for q in quotas {
            args.extend([q.unit(), q.refill(), q.max_level(), q.tick()]);
        }
        Self {
            keys: quotas
                .iter()
                .map(|q| bucket_key(client, policy, q))
                .collect(),
            args,
        }
    }

    /// The probe's check: cost 1 on a quota of one token per millisecond (unit 1000, refill
    /// 1, max 1000, tick 1), so the key it writes expires a millisecond later.
    pub(crate) fn probe(key: String) -> Self {
        Self {
            keys: vec![key],
            args: vec![1, 1, 1_000, 1, 1_000, 1],
        }
    }

    /// Appends `other`'s check, leaving it empty.
    pub(crate) fn append(&mut self, other: &mut Call) {
        self.keys.append(&mut other.keys);
        self.args.append(&mut other.args);
    }

    /// Runs the script on this call's checks: `EVALSHA` of `sha`, and on `NOSCRIPT` (a
    /// restart, a `SCRIPT FLUSH`, a failover) `EVAL` with the script itself, which leaves it
    /// cached. On a cluster `EVAL` goes wherever the keys are by then, MOVED and ASK
    /// followed: loading the script separately could land on another node while slots move.
    pub(crate) async fn eval(&self, conn: &mut Conn, sha: &str) -> redis::RedisResult<Vec<i64>> {
        let command = |name: &str, script: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(script)
                .arg(self.keys.len())
                .arg(&self.keys)
                .arg(&self.args);
            cmd
        };
        match command("EVALSHA", sha).query_async(conn).await {
            Err(e) if e.kind() == RedisErrorKind::Server(ServerErrorKind::NoScript) => {
                command("EVAL", SCRIPT).query_async(conn).await
            }
            other => other,
        }
    }
}

/// The script's reply as an [`Outcome`], refusing anything out of range. `key_of(q)` names
/// quota `q`'s key, for the error when it holds something that is not a bucket.
pub(crate) fn parse_reply(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::RedisLimiter;

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
        assert_eq!(probe_key(), "rl:{probe}:write");
        let probe = Call::probe(probe_key());
        assert_eq!(
            probe.args,
            [1, 1, q.unit(), q.refill(), q.max_level(), q.tick()]
        );
    }
}
