//! A scripted primary for the circuit tests: it answers, fails, hangs or breaks on command,
//! and counts every call that reaches it.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]
#![allow(clippy::unwrap_used, reason = "test support")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use limiter_core::{Backend, ClientKey, Decision, Error, ErrorKind, Policy, Quota, RateLimiter};
use limiter_fallback::{Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};

pub const UP: u8 = 0;
pub const DOWN: u8 = 1;
pub const HANG: u8 = 2;
pub const BROKEN: u8 = 3;
pub const UNREADABLE: u8 = 4;

/// A primary whose behaviour the test switches; it counts every call that reaches it.
#[derive(Debug, Default)]
pub struct Scripted {
    mode: AtomicU8,
    pub checks: AtomicU64,
    pub peeks: AtomicU64,
    pub refunds: AtomicU64,
    pub pings: AtomicU64,
}

impl Scripted {
    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    async fn behave(&self) -> Result<(), Error> {
        match self.mode.load(Ordering::SeqCst) {
            UP => Ok(()),
            DOWN => Err(Error::unavailable(
                "redis",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            )),
            HANG => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok(())
            }
            BROKEN => Err(Error::backend(
                "redis",
                ErrorKind::OutOfMemory,
                "OOM command not allowed when used memory > 'maxmemory'",
            )),
            _ => Err(Error::UnreadableBucket {
                backend: "redis",
                reason: "rl:{…}:p:100-60000000-100 holds something that is not a bucket".into(),
            }),
        }
    }
}

/// The primary's answer when it is up: allowed, one token left.
fn answer(policy: &Policy) -> Decision {
    let outcome = limiter_core::bucket::Outcome {
        allowed: true,
        quota: 0,
        remaining: 1,
        reset_after_us: 1,
        retry_after_us: None,
    };
    Decision::from_outcome(&outcome, policy.quotas(), Backend::Redis)
}

#[limiter_core::async_trait]
impl RateLimiter for Scripted {
    async fn check(&self, _: &ClientKey, policy: &Policy, _: u64) -> Result<Decision, Error> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.behave().await?;
        Ok(answer(policy))
    }

    async fn peek(&self, _: &ClientKey, policy: &Policy, _: u64) -> Result<Decision, Error> {
        self.peeks.fetch_add(1, Ordering::SeqCst);
        self.behave().await?;
        Ok(answer(policy))
    }

    async fn refund(&self, _: &ClientKey, policy: &Policy, _: u64) -> Result<Decision, Error> {
        self.refunds.fetch_add(1, Ordering::SeqCst);
        self.behave().await?;
        Ok(answer(policy))
    }

    async fn ping(&self) -> Result<(), Error> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.behave().await
    }
}

pub fn setup(config: FallbackConfig) -> (Fallback<Arc<Scripted>, MemoryLimiter>, Arc<Scripted>) {
    let primary = Arc::new(Scripted::default());
    let local = MemoryLimiter::new(MemoryConfig { max_buckets: 1_000 }).unwrap();
    (
        Fallback::new(primary.clone(), local, config).unwrap(),
        primary,
    )
}

pub fn policy() -> Policy {
    Policy::new("p", [Quota::per_minute(100).unwrap()]).unwrap()
}

pub const KEY: ClientKey = ClientKey::from_bytes([7; 16]);

pub fn config() -> FallbackConfig {
    FallbackConfig {
        deadline: Duration::from_millis(50),
        probe_interval: Duration::from_secs(1),
        ..FallbackConfig::default()
    }
}
