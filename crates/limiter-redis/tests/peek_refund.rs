//! Peek and refund on Redis (`lua/adjust.lua`): a peek writes nothing and answers what a
//! check would; a refund gives back exactly what a check took, never fills a bucket past
//! full, keeps the key's expiry and never creates a key; both fail like a check on bad input
//! and on a key that is not a bucket; and the same trace of checks, peeks and refunds gives
//! the same decisions here as in the memory backend.
//!
//! Redis decides on its own clock, which moves while a test runs, so the quotas here are
//! slow (10 an hour, 7 a day: a token takes minutes to come back) and every step of a test
//! runs well within one token's time: whole tokens never move on their own, and waits move
//! only by the microseconds that pass, which the tests bound.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

use std::time::{Duration, Instant};

use limiter_core::{ClientKey, ClientKeyHasher, Decision, ManualClock, Policy, Quota, RateLimiter};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::redis::{self, AsyncCommands};
use limiter_redis::{Expiry, RedisConfig, RedisLimiter, StoredBucket};
use limiter_test_support::topology::Topology as Nodes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// 10 an hour, and 25 a day with bursts of 7: two keys per client, and a token takes six
/// minutes or more to come back.
fn slow() -> Policy {
    Policy::new(
        "peek-refund",
        [
            Quota::per_hour(10).unwrap(),
            Quota::per_day(25).unwrap().allow_burst(7).unwrap(),
        ],
    )
    .unwrap()
}

fn client(label: &str) -> ClientKey {
    ClientKeyHasher::new(b"peek-refund-test-secret-0123456789")
        .unwrap()
        .hash(support::unique_id(label))
}

/// The client's stored buckets, `None` for a missing key.
async fn stored(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &ClientKey,
    policy: &Policy,
) -> Vec<Option<StoredBucket>> {
    let mut buckets = Vec::new();
    for k in RedisLimiter::bucket_keys(key, policy) {
        let bytes: Option<Vec<u8>> = conn.get(&k).await.unwrap();
        buckets.push(bytes.map(|b| StoredBucket::decode(&b).expect("a bucket")));
    }
    buckets
}

/// The decisions agree in everything but the waits; a wait on Redis is shorter by at most
/// `slack` (the time that passed on Redis's clock), never longer.
fn assert_close(redis: &Decision, expected: &Decision, slack: Duration, what: &str) {
    assert_eq!(
        (redis.allowed, redis.limit, redis.remaining, redis.quota),
        (
            expected.allowed,
            expected.limit,
            expected.remaining,
            expected.quota
        ),
        "{what}: {redis:?} against {expected:?}"
    );
    let near = |r: Duration, e: Duration| r <= e && e - r <= slack;
    assert!(
        near(redis.reset_after, expected.reset_after),
        "{what}: reset_after {redis:?} against {expected:?}"
    );
    match (redis.retry_after, expected.retry_after) {
        (None, None) => {}
        (Some(r), Some(e)) => assert!(near(r, e), "{what}: retry_after {r:?} against {e:?}"),
        _ => panic!("{what}: retry_after of {redis:?} against {expected:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peeking_consumes_nothing_and_answers_what_a_check_would() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = slow();
    let key = client("peek");
    let started = Instant::now();
    for _ in 0..1_000 {
        let d = limiter.peek(&key, &policy, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(
            (d.quota, d.remaining),
            (Some(1), 6),
            "as a check would report"
        );
    }
    assert_eq!(
        stored(&mut conn, &key, &policy).await,
        [None, None],
        "a peek wrote a key"
    );
    // The whole burst of 7 still passes, then a peek and a check deny alike.
    for left in (0..7).rev() {
        let d = limiter.check(&key, &policy, 1).await.unwrap();
        assert!(d.allowed, "the burst was cut short by peeks");
        assert_eq!(d.remaining, left);
    }
    let before = stored(&mut conn, &key, &policy).await;
    let peeked = limiter.peek(&key, &policy, 1).await.unwrap();
    let checked = limiter.check(&key, &policy, 1).await.unwrap();
    assert!(!peeked.allowed);
    // The check came later: its waits are shorter by what passed in between, at most.
    assert_close(&checked, &peeked, started.elapsed(), "peek then check");
    assert_eq!(
        stored(&mut conn, &key, &policy).await,
        before,
        "a denied peek wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_restores_exactly_what_a_check_took() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = slow();
    let quotas = policy.quotas();
    let key = client("refund");
    assert!(limiter.check(&key, &policy, 2).await.unwrap().allowed);
    let before = stored(&mut conn, &key, &policy).await;
    let started = Instant::now();
    let peeked = limiter.peek(&key, &policy, 3).await.unwrap();
    assert!(limiter.check(&key, &policy, 3).await.unwrap().allowed);
    let taken = stored(&mut conn, &key, &policy).await;
    let given = limiter.refund(&key, &policy, 3).await.unwrap();
    let after = stored(&mut conn, &key, &policy).await;
    // Exactly: each bucket holds what it held before the check, refilled to the refund's
    // stamp, and keeps the expiry the check gave it (KEEPTTL: a refund only brings the
    // moment it is full closer).
    for (i, q) in quotas.iter().enumerate() {
        let (b, t, a) = (before[i].unwrap(), taken[i].unwrap(), after[i].unwrap());
        let was = limiter_core::bucket::BucketState {
            level: b.level,
            updated: b.updated,
        };
        assert!(a.updated >= t.updated, "quota {i}: the stamp moved back");
        assert_eq!(a.level, was.level_at(q, a.updated), "quota {i}");
        assert_eq!(a.expires_ms, t.expires_ms, "quota {i}: the expiry moved");
    }
    let ttl: i64 = conn
        .pttl(&RedisLimiter::bucket_keys(&key, &policy)[1])
        .await
        .unwrap();
    assert!(ttl > 0, "the key lost its expiry: {ttl}");
    // The refund reports the state after: the fewest tokens are the day quota's 5.
    assert!(given.allowed);
    assert_eq!(
        (given.quota, given.remaining, given.retry_after),
        (Some(1), 5, None)
    );
    let again = limiter.peek(&key, &policy, 3).await.unwrap();
    assert_close(
        &again,
        &peeked,
        started.elapsed(),
        "peek after check and refund",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_never_fills_a_bucket_past_full_nor_creates_one() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = slow();
    let key = client("cap");

    // A client never seen: nothing is written, and it is reported full.
    let d = limiter.refund(&key, &policy, 7).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.remaining, d.reset_after), (7, Duration::ZERO));
    assert_eq!(stored(&mut conn, &key, &policy).await, [None, None]);

    limiter.check(&key, &policy, 3).await.unwrap();
    for _ in 0..5 {
        let d = limiter.refund(&key, &policy, 7).await.unwrap();
        assert_eq!((d.quota, d.remaining), (Some(1), 7));
        assert_eq!(d.reset_after, Duration::ZERO);
    }
    for (i, (q, b)) in policy
        .quotas()
        .iter()
        .zip(stored(&mut conn, &key, &policy).await)
        .enumerate()
    {
        assert_eq!(b.unwrap().level, q.max_level(), "quota {i} is not full");
    }
    for _ in 0..7 {
        assert!(limiter.check(&key, &policy, 1).await.unwrap().allowed);
    }
    assert!(
        !limiter.check(&key, &policy, 1).await.unwrap().allowed,
        "refunds raised a bucket past its burst"
    );
}

/// The expiry rule is token_bucket.lua's ([`Expiry::of`]): a key whose stored expiry comes
/// before its bucket is full again (as no check leaves one) gets a new one; otherwise it
/// keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_moves_an_expiry_only_when_it_must() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = Policy::new("expiry", [Quota::per_hour(10).unwrap()]).unwrap();
    let q = policy.quotas()[0];
    let key = client("expiry");
    let k = RedisLimiter::bucket_keys(&key, &policy).remove(0);
    let now = server.time_micros().await;
    let empty = StoredBucket {
        level: 0,
        updated: now,
        expires_ms: now / 1_000 + 1,
    };
    let _: () = redis::cmd("SET")
        .arg(&k)
        .arg(&empty.encode()[..])
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = limiter.refund(&key, &policy, 4).await.unwrap();
    assert_eq!(d.remaining, 4);
    let [Some(after)] = stored(&mut conn, &key, &policy).await[..] else {
        panic!("the bucket is gone");
    };
    // The refund's `now` is its stamp (a tick of 1 µs, after the stored one).
    assert!(after.updated > empty.updated);
    assert_eq!(
        after.level,
        q.unit() * 4 + (after.updated - empty.updated) * q.refill()
    );
    assert_eq!(
        Expiry::of(
            &q,
            after.level,
            after.updated,
            after.updated,
            empty.expires_ms
        ),
        Expiry::At(after.expires_ms)
    );
    let pexpiretime: u64 = redis::cmd("PEXPIRETIME")
        .arg(&k)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pexpiretime, after.expires_ms, "the key's own expiry");
    // Refunded again, the bucket is full sooner than that: the expiry stays.
    limiter.refund(&key, &policy, 1).await.unwrap();
    let [Some(again)] = stored(&mut conn, &key, &policy).await[..] else {
        panic!("the bucket is gone");
    };
    assert_eq!(again.expires_ms, after.expires_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unreadable_buckets_fail_like_a_check() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = slow();
    let key = client("bad");
    for cost in [0, 8, u64::MAX] {
        let check = limiter.check(&key, &policy, cost).await.unwrap_err();
        let peek = limiter.peek(&key, &policy, cost).await.unwrap_err();
        let refund = limiter.refund(&key, &policy, cost).await.unwrap_err();
        assert!(check.is_invalid_input(), "{check}");
        assert_eq!(peek.to_string(), check.to_string());
        assert_eq!(refund.to_string(), check.to_string());
    }
    let unlimited = Policy::unlimited("admin").unwrap();
    assert_eq!(
        limiter.peek(&key, &unlimited, 0).await.unwrap(),
        Decision::unlimited()
    );
    assert_eq!(
        limiter.refund(&key, &unlimited, 0).await.unwrap(),
        Decision::unlimited()
    );

    // The second key holds a list: each call fails for this client only, writing nothing.
    limiter.check(&key, &policy, 2).await.unwrap();
    let keys = RedisLimiter::bucket_keys(&key, &policy);
    let first: Vec<u8> = conn.get(&keys[0]).await.unwrap();
    let _: i64 = conn.del(&keys[1]).await.unwrap();
    let _: i64 = conn.rpush(&keys[1], "not a bucket").await.unwrap();
    // Every key of a shared Redis expires (key_hygiene.rs checks), this one too.
    let _: bool = conn.pexpire(&keys[1], 60_000).await.unwrap();
    for result in [
        limiter.peek(&key, &policy, 1).await,
        limiter.refund(&key, &policy, 1).await,
    ] {
        let e = result.unwrap_err();
        assert!(e.is_per_check(), "{e}");
        assert!(e.to_string().contains(&keys[1]), "{e}");
    }
    let still: Vec<u8> = conn.get(&keys[0]).await.unwrap();
    assert_eq!(still, first, "a failed refund wrote the first bucket");
    let other = client("bad-other");
    assert!(limiter.peek(&other, &policy, 1).await.unwrap().allowed);
    let _: i64 = conn.del(&keys[1]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_is_sent_again() {
    let server = support::TestRedis::start().await;
    let limiter = server.limiter();
    let mut conn = server.raw().await;
    let policy = slow();
    let key = client("flush");
    for _ in 0..3 {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(limiter.peek(&key, &policy, 1).await.unwrap().allowed);
        assert!(limiter.refund(&key, &policy, 1).await.unwrap().allowed);
    }
}

/// A step of a trace: an operation and its tokens (sometimes more than a bucket holds).
#[derive(Clone, Copy, Debug)]
enum Op {
    Check(u64),
    Peek(u64),
    Refund(u64),
}

fn trace() -> impl Strategy<Value = Vec<Op>> {
    let tokens = 1u64..=8;
    let op = prop_oneof![
        3 => tokens.clone().prop_map(Op::Check),
        2 => tokens.clone().prop_map(Op::Peek),
        2 => tokens.prop_map(Op::Refund),
    ];
    proptest::collection::vec(op, 1..40)
}

async fn apply<L: RateLimiter + ?Sized>(
    limiter: &L,
    key: &ClientKey,
    policy: &Policy,
    op: Op,
) -> Result<Decision, limiter_core::Error> {
    match op {
        Op::Check(n) => limiter.check(key, policy, n).await,
        Op::Peek(n) => limiter.peek(key, policy, n).await,
        Op::Refund(n) => limiter.refund(key, policy, n).await,
    }
}

/// The same random traces of checks, peeks and refunds on memory (its clock stopped) and on
/// Redis (within a token's time) give the same decisions: allowed or not, the same quota
/// reported with the same limit and tokens left, the same errors, and waits shorter on
/// Redis by no more than the time that passed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_agree_on_checks_peeks_and_refunds() {
    let server = support::TestRedis::start().await;
    let redis_limiter = server.limiter();
    let policy = slow();
    let handle = tokio::runtime::Handle::current();
    let run_case = |ops: Vec<Op>| {
        let memory =
            MemoryLimiter::with_clock(MemoryConfig::default(), ManualClock::new()).unwrap();
        let key = client("agree");
        let started = Instant::now();
        for (step, &op) in ops.iter().enumerate() {
            let (ours, theirs) = tokio::task::block_in_place(|| {
                handle.block_on(async {
                    (
                        apply(&memory, &key, &policy, op).await,
                        apply(&redis_limiter, &key, &policy, op).await,
                    )
                })
            });
            let what = format!("step {step} of {ops:?}");
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => {
                    prop_assert_eq!(theirs.backend, limiter_core::Backend::Redis);
                    assert_close(&theirs, &ours, started.elapsed(), &what);
                }
                (Err(ours), Err(theirs)) => {
                    prop_assert_eq!(ours.to_string(), theirs.to_string(), "{}", what);
                }
                (ours, theirs) => prop_assert!(false, "{}: {:?} against {:?}", what, ours, theirs),
            }
        }
        Ok(())
    };
    let mut runner = TestRunner::new(Config::with_cases(48));
    runner.run(&trace(), run_case).unwrap();
}

/// On a cluster a client's buckets share its slot: peeks and refunds go where its checks
/// go, with no CROSSSLOT, for clients on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peeks_and_refunds_work_on_a_cluster() {
    let nodes = Nodes::cluster(17600);
    let limiter = RedisLimiter::new(RedisConfig::from_url(&nodes.url)).unwrap();
    limiter.warm_up().await.unwrap();
    let policy = slow();
    for i in 0..30 {
        let key = client(&format!("cluster-{i}"));
        assert!(limiter.check(&key, &policy, 7).await.unwrap().allowed);
        assert!(!limiter.peek(&key, &policy, 1).await.unwrap().allowed);
        let d = limiter.refund(&key, &policy, 2).await.unwrap();
        assert_eq!((d.quota, d.remaining), (Some(1), 2), "client {i}");
        assert!(limiter.peek(&key, &policy, 2).await.unwrap().allowed);
        assert!(!limiter.peek(&key, &policy, 3).await.unwrap().allowed);
    }
}
