//! The parts every `limiter` backend shares: one async trait, the policy types, the
//! decision a check returns, client-key hashing, a clock, errors, and the token-bucket
//! math itself.
//!
//! This crate has no runtime, no Redis and no HTTP in it, so a backend or a middleware can
//! depend on it alone.
//!
//! ```
//! use limiter_core::{ClientKeyHasher, Policy, Quota, bucket};
//!
//! # fn main() -> Result<(), limiter_core::Error> {
//! // 10 per second with bursts of 20, and at most 5000 per hour, all-or-nothing.
//! let policy = Policy::new(
//!     "search",
//!     [Quota::per_second(10)?.allow_burst(20)?, Quota::per_hour(5000)?],
//! )?;
//!
//! // Raw client IDs never leave the process: they are hashed with a deployment secret.
//! let hasher = ClientKeyHasher::new(b"a deployment secret of 16+ bytes")?;
//! let key = hasher.hash("203.0.113.7");
//! assert_eq!(key.to_string().len(), 32);
//!
//! // The pure math: start full, take one token at t = 0 µs.
//! let mut states = policy.full_buckets(0);
//! let outcome = bucket::check(policy.quotas(), &mut states, 0, 1)?;
//! assert!(outcome.allowed);
//! assert_eq!(outcome.remaining, 19);
//! # Ok(())
//! # }
//! ```

pub mod bucket;
mod clock;
mod decision;
mod error;
mod key;
mod limiter;
pub mod millis;
mod partition;
mod policy;
mod quota;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use decision::{Backend, Decision, ceil_millis, ceil_secs};
pub use error::{BoxError, Error, ErrorKind};
pub use key::{ClientKey, ClientKeyHasher, MIN_SECRET_LEN};
pub use limiter::RateLimiter;
pub use partition::Partitioned;
pub use policy::{MAX_QUOTAS, Policy, Tier, TierPolicies};
pub use quota::{MAX_LEVEL, MAX_PERIOD_US, MAX_TOKENS, MAX_WAIT_US, Quota};

/// Re-exported so implementors of [`RateLimiter`] use the same macro version as this crate.
pub use async_trait::async_trait;
