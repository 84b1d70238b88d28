use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{ClientKey, Decision, Error, Partitioned, Policy};

/// The one interface of every backend: memory, Redis, the fallback, and any a user writes.
///
/// It is object-safe, so a server can hold an `Arc<dyn RateLimiter>` chosen from
/// configuration at run time.
///
/// Contract for implementors:
/// - an unlimited policy ([`Policy::is_unlimited`]) returns [`Decision::unlimited`] without
///   touching storage;
/// - a zero cost, or a cost above a quota's capacity, is an error
///   ([`crate::bucket::validate`]), never a denial;
/// - all quotas of the policy are checked all-or-nothing, with the math of
///   [`crate::bucket::check`];
/// - [`peek`](Self::peek) answers exactly what `check` would ([`crate::bucket::peek`]) and
///   takes nothing; [`refund`](Self::refund) gives tokens back to every quota
///   ([`crate::bucket::refund`]): never above capacity, never moving a bucket's stamp back,
///   and a bucket never seen (a missing bucket is full) stays as it is; both follow the
///   same rules for unlimited policies and bad costs as `check`;
/// - `Err` means "could not decide"; outages answer `true` to [`Error::is_unavailable`].
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Checks whether the client `key` may spend `cost` tokens under `policy` now and, if so,
    /// takes them.
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error>;

    /// What [`check`](Self::check) would answer now for `cost`, taking nothing (a dry run):
    /// the same decision, `remaining` counting the tokens that would be left, and when
    /// denied the same `retry_after`.
    ///
    /// # Errors
    /// As for `check`: a zero cost or one above a quota's capacity, or the backend could not
    /// answer.
    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error>;

    /// Gives `tokens` back to every quota of the client's buckets under `policy` (a request
    /// that should not count), each capped at its capacity; answers the state after, as a
    /// [`Decision`] with `allowed = true` (reported like an admitted check: the quota with
    /// the fewest tokens left). A bucket never seen is full, and stays untouched.
    ///
    /// # Errors
    /// As for `check`, with `tokens` for the cost.
    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error>;

    /// Decides at once when the backend can without waiting on I/O, with exactly the effect
    /// of [`check`](Self::check) (tokens are taken); `None` when it cannot, and then nothing
    /// happened: call `check`.
    ///
    /// In-process backends always can; a cache can for what it holds. Hot paths such as the
    /// HTTP layer try this first, which saves the boxed future of an `async` call. The
    /// default answers `None`.
    fn check_now(
        &self,
        key: &ClientKey,
        policy: &Policy,
        cost: u64,
    ) -> Option<Result<Decision, Error>> {
        let _ = (key, policy, cost);
        None
    }

    /// Whether the backend could decide now, deciding nothing: one cheap round trip, for
    /// health checks and for a fallback's probe. A backend with nothing to reach is always
    /// ready, which is the default.
    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The parts of the backend's keyspace that become unreachable independently (the hash
    /// slots of a Redis Cluster, whose masters fail one at a time), if it has any: a
    /// fallback keeps one circuit per part, so an outage of one part sends only its clients
    /// to the fallback. Default `None`: the backend is up or down as a whole.
    fn partitioning(&self) -> Option<&dyn Partitioned> {
        None
    }
}

/// Implements the trait for a pointer to a limiter by forwarding every method, so a method
/// added to the trait is forwarded by all of them or by none (a missed one would silently
/// fall back to its default).
macro_rules! forward {
    ($($pointer:ty),+) => {$(
        #[async_trait]
        impl<T: RateLimiter + ?Sized> RateLimiter for $pointer {
            async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
                (**self).check(key, policy, cost).await
            }

            async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
                (**self).peek(key, policy, cost).await
            }

            async fn refund(&self, key: &ClientKey, policy: &Policy, tokens: u64) -> Result<Decision, Error> {
                (**self).refund(key, policy, tokens).await
            }

            fn check_now(
                &self,
                key: &ClientKey,
                policy: &Policy,
                cost: u64,
            ) -> Option<Result<Decision, Error>> {
                (**self).check_now(key, policy, cost)
            }

            async fn ping(&self) -> Result<(), Error> {
                (**self).ping().await
            }

            fn partitioning(&self) -> Option<&dyn Partitioned> {
                (**self).partitioning()
            }
        }
    )+};
}

forward!(Arc<T>, Box<T>, &T);
