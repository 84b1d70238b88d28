//! The token-bucket script and its contract: the keys it reads, the arguments it takes, the
//! reply it gives (`lua/token_bucket.lua`'s header states the same). Its replies' format is
//! also `lua/adjust.lua`'s (see `adjust.rs`).

use std::fmt;

use deadpool_redis::redis::{self, ErrorKind as RedisErrorKind, ServerErrorKind};
use limiter_core::bucket::{self, Measure, Outcome};
use limiter_core::{ClientKey, Error, ErrorKind, MAX_QUOTAS, Policy, Quota};

use crate::BACKEND;
use crate::topology::Conn;

/// The token-bucket script, `lua/token_bucket.lua`: its header states the contract.
pub const SCRIPT: &str = include_str!("../../../lua/token_bucket.lua");

/// The key of the probe that [`RedisLimiter::warm_up`](crate::RedisLimiter::warm_up) (and so
/// `ping`) runs the script on, `rl:{probe}:write:v2`: no client's, and it lives two
/// milliseconds.
pub(crate) fn probe_key() -> String {
    key("probe", format_args!("write:{FORMAT}"))
}

/// The stored format's version, the last part of every key the script writes: a worker
/// running an older script (whose buckets were text, `"<level> <updated>"`) never reads
/// this one's, nor this one its, during a rolling upgrade.
pub(crate) const FORMAT: &str = "v2";

/// A key of this backend: `rl:{<tag>}:<rest>`. The hash tag decides the cluster slot: a
/// client's hash for its buckets, so all of one client's keys live together.
pub(crate) fn key(tag: impl fmt::Display, rest: fmt::Arguments<'_>) -> String {
    format!("rl:{{{tag}}}:{rest}")
}

/// The key of `client`'s bucket of quota `q` under `policy`:
/// `rl:{<hash>}:<policy>:<tokens>-<period µs>-<capacity>[-t<tick>]:v2`.
pub(crate) fn bucket_key(client: &ClientKey, policy: &Policy, q: &Quota) -> String {
    let name = policy.name();
    let (tokens, period, capacity) = (q.tokens(), q.period_micros(), q.capacity());
    match q.tick() {
        1 => key(
            client,
            format_args!("{name}:{tokens}-{period}-{capacity}:{FORMAT}"),
        ),
        tick => key(
            client,
            format_args!("{name}:{tokens}-{period}-{capacity}-t{tick}:{FORMAT}"),
        ),
    }
}

/// The keys and arguments of one script call, in the script's order: one check's, or a
/// batch's, one check after the other, with each policy's quotas sent once.
#[derive(Default)]
pub(crate) struct Call {
    pub(crate) keys: Vec<String>,
    /// Each policy's arguments: its number of quotas, then unit, refill, max, tick for each.
    policies: Vec<Vec<u64>>,
    /// Each check's policy (its index in `policies`) and cost.
    checks: Vec<(usize, u64)>,
}

impl Call {
    pub(crate) fn new(client: &ClientKey, policy: &Policy, cost: u64) -> Self {
        let quotas = policy.quotas();
        let mut args = Vec::with_capacity(1 + 4 * quotas.len());
        args.push(quotas.len() as u64);
        for q in quotas {
            args.extend([q.unit(), q.refill(), q.max_level(), q.tick()]);
        }
        Self {
            keys: quotas
                .iter()
                .map(|q| bucket_key(client, policy, q))
                .collect(),
            policies: vec![args],
            checks: vec![(0, cost)],
        }
    }

    /// The probe's check: cost 1 on a quota of one token per millisecond (unit 1000, refill
    /// 1, max 1000, tick 1), so the key it writes expires two milliseconds later.
    pub(crate) fn probe(key: String) -> Self {
        Self {
            keys: vec![key],
            policies: vec![vec![1, 1_000, 1, 1_000, 1]],
            checks: vec![(0, 1)],
        }
    }

    /// Appends `other`'s checks, leaving it empty; a policy both calls hold is sent once.
    pub(crate) fn append(&mut self, other: &mut Call) {
        let renumbered: Vec<usize> = other
            .policies
            .drain(..)
            .map(|args| match self.policies.iter().position(|p| *p == args) {
                Some(at) => at,
                None => {
                    self.policies.push(args);
                    self.policies.len() - 1
                }
            })
            .collect();
        self.checks.extend(
            other
                .checks
                .drain(..)
                .map(|(policy, cost)| (renumbered[policy], cost)),
        );
        self.keys.append(&mut other.keys);
    }

    /// Each check's number of quotas, in order: its answer holds 1 + 2 × that many values.
    pub(crate) fn sizes(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        // A policy's arguments are its number of quotas and four per quota.
        self.checks
            .iter()
            .map(|&(policy, _)| (self.policies[policy].len() - 1) / 4)
    }

    /// Runs the script on this call's checks, by [`evalsha`] of `sha`.
    pub(crate) async fn eval(&self, conn: &mut Conn, sha: &str) -> redis::RedisResult<Vec<i64>> {
        evalsha(conn, sha, SCRIPT, |cmd| {
            cmd.arg(self.keys.len())
                .arg(&self.keys)
                .arg(self.policies.len());
            for policy in &self.policies {
                cmd.arg(policy);
            }
            for &(policy, cost) in &self.checks {
                cmd.arg(policy + 1).arg(cost);
            }
        })
        .await
    }
}

/// `EVALSHA sha` with the keys and arguments `args` writes (from the number of keys on),
/// and on `NOSCRIPT` (a restart, a `SCRIPT FLUSH`, a failover) `EVAL` of `script` itself,
/// which leaves it cached. On a cluster `EVAL` goes wherever the keys are by then, MOVED
/// and ASK followed: loading the script separately could land on another node while slots
/// move.
pub(crate) async fn evalsha(
    conn: &mut Conn,
    sha: &str,
    script: &str,
    args: impl Fn(&mut redis::Cmd),
) -> redis::RedisResult<Vec<i64>> {
    let command = |name: &str, body: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(body);
        args(&mut cmd);
        cmd
    };
    match command("EVALSHA", sha).query_async(conn).await {
        Err(e) if e.kind() == RedisErrorKind::Server(ServerErrorKind::NoScript) => {
            command("EVAL", script).query_async(conn).await
        }
        other => other,
    }
}

/// One check's part of the script's reply: Redis's time, the check's code, and each
/// bucket's level and stamp offset, as replied (checked by [`Answer::outcome`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer {
    now: i64,
    code: i64,
    buckets: [[i64; 2]; MAX_QUOTAS],
    len: usize,
}

/// Splits a call's reply into its checks' answers, `sizes` giving each check's number of
/// quotas; an error if the reply has not exactly their shape.
pub(crate) fn answers<'a>(
    reply: &'a [i64],
    sizes: impl Iterator<Item = usize> + Clone + 'a,
) -> Result<impl Iterator<Item = Answer> + 'a, Error> {
    let expected = 1 + sizes.clone().map(|n| 1 + 2 * n).sum::<usize>();
    if reply.len() != expected || sizes.clone().any(|n| n > MAX_QUOTAS) {
        return Err(Error::backend(
            BACKEND,
            ErrorKind::Reply,
            format!("script replied {} values, expected {expected}", reply.len()),
        ));
    }
    let now = reply[0];
    let mut rest = &reply[1..];
    Ok(sizes.map(move |n| {
        let (this, next) = rest.split_at(1 + 2 * n);
        rest = next;
        let mut answer = Answer {
            now,
            code: this[0],
            buckets: [[0; 2]; MAX_QUOTAS],
            len: n,
        };
        for (bucket, pair) in answer.buckets.iter_mut().zip(this[1..].chunks_exact(2)) {
            *bucket = [pair[0], pair[1]];
        }
        answer
    }))
}

impl Answer {
    /// The check's [`Outcome`] under `quotas` at `cost`, computed by the core from the
    /// buckets the script measured, refusing anything that cannot be such a decision.
    /// `key_of(q)` names quota `q`'s key, for the error when it holds something that is not
    /// a bucket.
    pub(crate) fn outcome(
        &self,
        quotas: &[Quota],
        cost: u64,
        key_of: impl FnOnce(usize) -> String,
    ) -> Result<Outcome, Error> {
        let allowed = self.allowed(quotas.len(), key_of)?;
        self.measured(quotas, |now, measures| {
            bucket::outcome_of(quotas, measures, now, cost, allowed)
        })
    }

    /// The [`Outcome`] of a refund of `tokens` under `quotas` (`lua/adjust.lua` in refund
    /// mode), computed by the core from the buckets the script measured after the refund,
    /// refusing anything that cannot be such a refund. `key_of` as for
    /// [`outcome`](Self::outcome).
    pub(crate) fn refund_outcome(
        &self,
        quotas: &[Quota],
        tokens: u64,
        key_of: impl FnOnce(usize) -> String,
    ) -> Result<Outcome, Error> {
        if !self.allowed(quotas.len(), key_of)? {
            return Err(self.out_of_range(quotas.len()));
        }
        self.measured(quotas, |now, measures| {
            bucket::refund_outcome_of(quotas, measures, now, tokens)
        })
    }

    /// The error of an answer no script call could give for `quotas` quotas.
    fn out_of_range(&self, quotas: usize) -> Error {
        Error::backend(
            BACKEND,
            ErrorKind::Reply,
            format!("script replied {self:?} for {quotas} quotas, out of range"),
        )
    }

    /// `outcome_of(now, measures)`, `now` and `measures` read from the answer; a reply error
    /// if they are out of range or `outcome_of` refuses them.
    #[inline]
    fn measured(
        &self,
        quotas: &[Quota],
        outcome_of: impl FnOnce(u64, &[Measure]) -> Option<Outcome>,
    ) -> Result<Outcome, Error> {
        let bad = || self.out_of_range(quotas.len());
        let now = u64::try_from(self.now).map_err(|_| bad())?;
        let mut measures = [Measure { level: 0, stamp: 0 }; MAX_QUOTAS];
        for ((m, &[level, offset]), q) in measures.iter_mut().zip(&self.buckets).zip(quotas) {
            *m = Measure {
                level: u64::try_from(level).map_err(|_| bad())?,
                stamp: u64::try_from(offset)
                    .ok()
                    .and_then(|offset| q.ticks(now).checked_add(offset))
                    .ok_or_else(bad)?,
            };
        }
        let measures = measures.get(..self.len).ok_or_else(bad)?;
        outcome_of(now, measures).ok_or_else(bad)
    }

    /// Whether the check was admitted; [`Error::UnreadableBucket`] if a key of it held
    /// something that is not a bucket. `quotas` is the check's number of quotas.
    pub(crate) fn allowed(
        &self,
        quotas: usize,
        key_of: impl FnOnce(usize) -> String,
    ) -> Result<bool, Error> {
        match self.code {
            1 => Ok(true),
            0 => Ok(false),
            code if code < 0 && code.unsigned_abs() <= quotas as u64 => {
                let key = key_of(code.unsigned_abs() as usize - 1);
                Err(Error::UnreadableBucket {
                    backend: BACKEND,
                    reason: format!("{key} holds something that is not a bucket"),
                })
            }
            _ => Err(Error::backend(
                BACKEND,
                ErrorKind::Reply,
                format!("script replied {self:?}, out of range"),
            )),
        }
    }
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
                "rl:{0000000000000000000000000000abcd}:api:10-1000000-10:v2",
                "rl:{0000000000000000000000000000abcd}:api:5000-3600000000-5000:v2",
            ]
        );
    }

    #[test]
    fn coarse_quotas_key_their_tick() {
        let policy = Policy::new("p", [Quota::per_day(20_011).unwrap()]).unwrap();
        let keys = RedisLimiter::bucket_keys(&ClientKey::from(1_u128), &policy);
        assert_eq!(
            keys,
            ["rl:{00000000000000000000000000000001}:p:20011-86400000000-20011-t2:v2"]
        );
    }

    #[test]
    fn the_probe_is_one_token_per_millisecond() {
        let q = Quota::new(1, Duration::from_millis(1)).unwrap();
        assert_eq!(probe_key(), "rl:{probe}:write:v2");
        let probe = Call::probe(probe_key());
        assert_eq!(
            probe.policies,
            [[1, q.unit(), q.refill(), q.max_level(), q.tick()]]
        );
        assert_eq!(probe.checks, [(0, 1)]);
    }

    #[test]
    fn a_batch_sends_each_policy_once() {
        let one = Policy::new("one", [Quota::per_second(10).unwrap()]).unwrap();
        let two = Policy::new(
            "two",
            [Quota::per_second(5).unwrap(), Quota::per_hour(100).unwrap()],
        )
        .unwrap();
        let client = ClientKey::from(7_u128);
        let mut call = Call::new(&client, &one, 1);
        for (policy, cost) in [(&two, 2), (&one, 3), (&two, 4)] {
            call.append(&mut Call::new(&client, policy, cost));
        }
        assert_eq!(call.policies.len(), 2);
        assert_eq!(call.checks, [(0, 1), (1, 2), (0, 3), (1, 4)]);
        assert_eq!(call.sizes().collect::<Vec<_>>(), [1, 2, 1, 2]);
        assert_eq!(call.keys.len(), 6);
    }

    #[test]
    fn replies_are_split_per_check_and_checked() {
        let one = [Quota::per_second(10).unwrap()];
        let two = [Quota::per_second(5).unwrap(), Quota::per_hour(100).unwrap()];
        let now = 1_796_232_460_540_357_i64;
        let full = |q: &Quota| q.max_level() as i64;
        // One admitted check of `one`, one denied check of `two`, one unreadable of `two`.
        let reply = [
            now,
            1,
            full(&one[0]) - one[0].unit() as i64,
            0,
            0,
            full(&two[0]),
            0,
            0,
            5,
            -2,
            0,
            0,
            0,
            0,
        ];
        let sizes = [1, 2, 2];
        let split: Vec<Answer> = answers(&reply, sizes.iter().copied()).unwrap().collect();
        let key = |q| format!("key{q}");
        let admitted = split[0].outcome(&one, 1, key).unwrap();
        assert!(admitted.allowed);
        assert_eq!(admitted.remaining, 9);
        assert_eq!(admitted.reset_after_us, 100_000);
        let denied = split[1].outcome(&two, 1, key).unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.quota, 1);
        let err = split[2].outcome(&two, 1, key).unwrap_err();
        assert!(err.to_string().contains("key1 holds something"), "{err}");
        assert!(err.is_per_check(), "{err}");

        // The wrong number of values fails the whole call.
        let err = answers(&reply[..13], sizes.iter().copied()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Reply);
    }

    #[test]
    fn refund_answers_are_checked_as_refunds() {
        let quotas = [Quota::per_second(10).unwrap()];
        let (max, unit) = (quotas[0].max_level() as i64, quotas[0].unit() as i64);
        let now = 1_796_232_460_540_357_i64;
        let answer = |reply: [i64; 4]| answers(&reply, [1].into_iter()).unwrap().next().unwrap();
        let key = |q| format!("key{q}");
        let full = answer([now, 1, max, 0])
            .refund_outcome(&quotas, 3, key)
            .unwrap();
        assert!(full.allowed);
        assert_eq!((full.remaining, full.reset_after_us), (10, 0));
        let some = answer([now, 1, 4 * unit, 0])
            .refund_outcome(&quotas, 3, key)
            .unwrap();
        assert_eq!((some.remaining, some.reset_after_us), (4, 600_000));
        let err = answer([now, -1, 0, 0])
            .refund_outcome(&quotas, 3, key)
            .unwrap_err();
        assert!(err.is_per_check(), "{err}");
        for bad in [
            [now, 0, max, 0],          // a refund is never denied
            [now, 1, 3 * unit - 1, 0], // below the tokens given back
            [now, 1, max + 1, 0],      // above full
            [now, 1, max, -1],         // stamped before now
        ] {
            let err = answer(bad).refund_outcome(&quotas, 3, key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Reply, "{bad:?}");
        }
    }

    #[test]
    fn answers_out_of_range_are_backend_errors() {
        let quotas = [Quota::per_second(10).unwrap()];
        let (max, unit) = (quotas[0].max_level() as i64, quotas[0].unit() as i64);
        let now = 1_796_232_460_540_357_i64;
        for bad in [
            [now, 2, max - unit, 0],  // an unknown code
            [now, -2, 0, 0],          // a quota the check does not have
            [now, 1, max, 0],         // admitted, but nothing was taken
            [now, 1, -5, 0],          // a negative level
            [now, 0, max, 0],         // denied by a full bucket
            [now, 1, max - unit, -1], // stamped before now
            [-1, 1, max - unit, 0],   // a negative time
            [now, 0, max + 1, 0],     // more than the bucket holds
        ] {
            let answer = answers(&bad, [1].into_iter()).unwrap().next().unwrap();
            let err = answer
                .outcome(&quotas, 1, |q| format!("key{q}"))
                .unwrap_err();
            assert!(
                !err.is_unavailable() && !err.is_invalid_input() && !err.is_per_check(),
                "{bad:?}: {err}"
            );
            assert_eq!(err.kind(), ErrorKind::Reply);
        }
    }
}
