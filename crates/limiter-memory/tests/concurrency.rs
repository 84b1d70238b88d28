//! Many threads and tasks on one client admit exactly the capacity before any refill.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop the test loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use limiter_core::{ClientKey, ManualClock, Policy, Quota, RateLimiter};
use limiter_memory::{MemoryConfig, MemoryLimiter};

fn frozen(capacity: u64) -> (Arc<MemoryLimiter<ManualClock>>, Policy) {
    let limiter =
        MemoryLimiter::with_clock(MemoryConfig { max_buckets: 1_000 }, ManualClock::new()).unwrap();
    let policy = Policy::new("hot", [Quota::per_minute(capacity).unwrap()]).unwrap();
    (Arc::new(limiter), policy)
}

#[test]
fn threads_hammering_one_client_admit_exactly_the_capacity() {
    let (limiter, policy) = frozen(1_000);
    let policy = Arc::new(policy);
    let allowed = Arc::new(AtomicU64::new(0));
    let key = ClientKey::from(42);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (limiter, policy, allowed) = (limiter.clone(), policy.clone(), allowed.clone());
            thread::spawn(move || {
                for _ in 0..5_000 {
                    if limiter.check_sync(&key, &policy, 1).unwrap().allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_through_the_trait_object_admit_exactly_the_capacity() {
    let (limiter, policy) = frozen(777);
    let limiter: Arc<dyn RateLimiter> = limiter;
    let policy = Arc::new(policy);
    let key = ClientKey::from(43);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move {
                let mut allowed = 0u64;
                for _ in 0..100 {
                    allowed += u64::from(limiter.check(&key, &policy, 1).await.unwrap().allowed);
                }
                allowed
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 777);
}

#[test]
fn limiter_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<MemoryLimiter>();
    assert_send_sync::<MemoryLimiter<ManualClock>>();
}
