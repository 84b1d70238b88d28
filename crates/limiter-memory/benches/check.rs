//! ns per check of the memory backend, side by side with governor's keyed limiter.
//!
//! `cargo bench -p limiter-memory --bench check` runs, in one process, for 1 hot key and for
//! 100,000 keys, on 1 and 2 threads:
//! - `limiter-memory`: `MemoryLimiter::check_sync`, the path the fallback and the server use;
//! - `limiter-memory/trait`: the same through `dyn RateLimiter` (boxed async-trait future);
//! - `governor`: `DefaultKeyedRateLimiter<u128>::check_key` (dashmap, quanta clock).
//!
//! Both limiters get the same 128-bit keys (our client keys are 128-bit hashes) and an
//! equivalent quota large enough that every check is admitted. With 2 threads the figure is
//! wall time per check per thread. Hashing the raw client ID is not included: it is done once
//! per request, before any backend, and costs the same whatever the backend.

#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark harness")]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, RateLimiter as Governor};
use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_memory::{MemoryConfig, MemoryLimiter};

const RATE: u32 = 1_000_000_000;

/// Deterministic, well-spread 128-bit keys.
fn keys(n: usize) -> Vec<u128> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// Runs `iters` checks on each of `threads` threads, started together; returns wall time.
fn run(threads: usize, iters: u64, check: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for i in 0..iters {
            check(0, i);
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    check(t, i);
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before returning.
        start
    })
    .elapsed()
}

/// Polls a future that never waits (the memory backend's) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn compare(c: &mut Criterion) {
    let policy = Policy::new("bench", [Quota::per_second(u64::from(RATE)).unwrap()]).unwrap();
    for (label, n) in [("1 key", 1usize), ("100k keys", 100_000)] {
        let raw = keys(n);
        let ours_keys: Vec<ClientKey> = raw.iter().map(|&k| ClientKey::from(k)).collect();
        let ours = Arc::new(MemoryLimiter::new(MemoryConfig::default()).unwrap());
        let as_trait: Arc<dyn RateLimiter> = ours.clone();
        let gov: DefaultKeyedRateLimiter<u128> =
            Governor::keyed(governor::Quota::per_second(NonZeroU32::new(RATE).unwrap()));
        // Populate both stores so the measured checks find their keys.
        for (k, ck) in raw.iter().zip(&ours_keys) {
            assert!(ours.check_sync(ck, &policy, 1).unwrap().allowed);
            assert!(gov.check_key(k).is_ok());
        }
        // Threads walk the keys from different offsets.
        let pick = move |t: usize, i: u64| (t * n / 2 + i as usize) % n;

        for threads in [1usize, 2] {
            let mut group = c.benchmark_group(format!("check/{label}/{threads} thread"));
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
            group.bench_function("limiter-memory", |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        let d = ours.check_sync(&ours_keys[pick(t, i)], &policy, 1);
                        black_box(d.unwrap().allowed);
                    })
                })
            });
            group.bench_function("limiter-memory/trait", |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        let d = ready(as_trait.check(&ours_keys[pick(t, i)], &policy, 1));
                        black_box(d.unwrap().allowed);
                    })
                })
            });
            group.bench_function("governor", |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        black_box(gov.check_key(&raw[pick(t, i)]).is_ok());
                    })
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, compare);
criterion_main!(benches);
