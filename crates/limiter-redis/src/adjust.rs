//! Peeks and refunds: `lua/adjust.lua` on one client's buckets under one policy, a sibling
//! of the check script with the same keys, stored value and reply format.

use deadpool_redis::redis;
use limiter_core::{ClientKey, Policy};

use crate::script::{bucket_key, evalsha};
use crate::topology::Conn;

/// The peek and refund script, `lua/adjust.lua`: its header states the contract. Checks
/// never run it, so [`SCRIPT`](crate::SCRIPT), tuned for them, stays as it is.
pub const ADJUST_SCRIPT: &str = include_str!("../../../lua/adjust.lua");

/// What a call of [`ADJUST_SCRIPT`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// What a check would answer, writing nothing.
    Peek,
    /// Tokens given back to every bucket.
    Refund,
}

/// The keys and arguments of one call of [`ADJUST_SCRIPT`]: one client's buckets under one
/// policy, in the script's order.
pub(crate) struct Adjust {
    mode: Mode,
    tokens: u64,
    pub(crate) keys: Vec<String>,
    /// unit, refill, max, tick of each quota.
    quotas: Vec<u64>,
}

impl Adjust {
    /// A peek of `tokens` or a refund of them for `client` under `policy`, whose keys are the
    /// check's ([`bucket_key`]): under the client's hash tag, so on a cluster the call goes to
    /// the slot that holds them, as a check does.
    pub(crate) fn new(mode: Mode, client: &ClientKey, policy: &Policy, tokens: u64) -> Self {
        let quotas = policy.quotas();
        Self {
            mode,
            tokens,
            keys: quotas
                .iter()
                .map(|q| bucket_key(client, policy, q))
                .collect(),
            quotas: quotas
                .iter()
                .flat_map(|q| [q.unit(), q.refill(), q.max_level(), q.tick()])
                .collect(),
        }
    }

    /// Runs the script by `EVALSHA` of `sha` (`EVAL` on `NOSCRIPT`).
    pub(crate) async fn eval(&self, conn: &mut Conn, sha: &str) -> redis::RedisResult<Vec<i64>> {
        let mode = match self.mode {
            Mode::Peek => "peek",
            Mode::Refund => "refund",
        };
        evalsha(conn, sha, ADJUST_SCRIPT, |cmd| {
            cmd.arg(self.keys.len())
                .arg(&self.keys)
                .arg(mode)
                .arg(self.tokens)
                .arg(&self.quotas);
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_core::Quota;

    #[test]
    fn a_call_names_the_checks_keys_and_each_quota_once() {
        let policy = Policy::new(
            "api",
            [
                Quota::per_second(10).unwrap(),
                Quota::per_day(20_011).unwrap(),
            ],
        )
        .unwrap();
        let client = ClientKey::from(0xabcd_u128);
        let call = Adjust::new(Mode::Refund, &client, &policy, 3);
        assert_eq!(
            call.keys,
            crate::RedisLimiter::bucket_keys(&client, &policy)
        );
        let [a, b] = policy.quotas() else { panic!() };
        assert_eq!(
            call.quotas,
            [
                a.unit(),
                a.refill(),
                a.max_level(),
                a.tick(),
                b.unit(),
                b.refill(),
                b.max_level(),
                b.tick()
            ]
        );
        assert!(ADJUST_SCRIPT.contains("redis.call('TIME')"));
    }
}
