use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error from a backend's own client library.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a limiter could not decide.
///
/// A denied request is not an error: it is a [`Decision`](crate::Decision) with
/// `allowed == false`. An `Error` means no decision was made, either because the input can
/// never be decided (a zero cost, a cost larger than the bucket) or because the backend
/// could not be reached. Callers classify errors with the predicates, never by message:
/// the fallback switches on [`Error::is_unavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quota's numbers are zero, out of range or otherwise meaningless.
    #[error("invalid quota: {reason}")]
    InvalidQuota {
        /// What is wrong, naming the number.
        reason: String,
    },
    /// A policy is malformed: a bad name, no quotas, too many quotas.
    #[error("invalid policy: {reason}")]
    InvalidPolicy {
        /// What is wrong.
        reason: String,
    },
    /// The cost of a request was zero; every request costs at least one token.
    #[error("cost must be at least 1")]
    ZeroCost,
    /// The cost is larger than a bucket can ever hold: the request can never pass, so it is
    /// refused outright instead of being denied forever.
    #[error("cost {cost} exceeds the bucket capacity {capacity}: the request can never pass")]
    InsufficientCapacity {
        /// The cost asked for.
        cost: u64,
        /// The capacity of the smallest bucket in the policy.
        capacity: u64,
    },
    /// The hashing secret is unusable.
    #[error("invalid hash secret: {reason}")]
    InvalidSecret {
        /// What is wrong (never the secret itself).
        reason: &'static str,
    },
    /// A backend's configuration is unusable (a malformed URL, a zero pool size).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the setting (never a password).
        reason: String,
    },
    /// A tier name did not parse.
    #[error("unknown tier (expected anonymous, api_key, premium or admin)")]
    UnknownTier,
    /// The backend could not be reached: connection refused or dropped, pool exhausted.
    #[error("{backend} is unavailable: {source}")]
    Unavailable {
        /// Which backend (`"redis"`, ...).
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// The backend did not answer within its deadline.
    #[error("{backend} did not answer within {after:?}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The backend answered, but not with a decision: a script error, a protocol error, a
    /// reply of the wrong shape. This is a bug or a misconfiguration, not an outage.
    #[error("{backend} failed: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// An [`Error::Unavailable`] from a backend's own error.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// An [`Error::Backend`] from a backend's own error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }

    /// True when the backend is down, unreachable or too slow: an outage that a fallback
    /// should absorb.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// True when the backend missed its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// True when the caller's input can never be decided (bad quota, policy, cost, secret or
    /// tier). Retrying, or asking another backend, cannot help.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidQuota { .. }
                | Self::InvalidPolicy { .. }
                | Self::ZeroCost
                | Self::InsufficientCapacity { .. }
                | Self::InvalidSecret { .. }
                | Self::InvalidConfig { .. }
                | Self::UnknownTier
        )
    }

    /// True when the request costs more than its policy's bucket can ever hold.
    pub fn is_insufficient_capacity(&self) -> bool {
        matches!(self, Self::InsufficientCapacity { .. })
    }

    pub(crate) fn quota(reason: impl fmt::Display) -> Self {
        Self::InvalidQuota {
            reason: reason.to_string(),
        }
    }

    pub(crate) fn policy(reason: impl fmt::Display) -> Self {
        Self::InvalidPolicy {
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_classify_every_kind() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let down = Error::unavailable("redis", io());
        assert!(down.is_unavailable() && !down.is_timeout() && !down.is_invalid_input());
        let slow = Error::Timeout {
            backend: "redis",
            after: Duration::from_millis(50),
        };
        assert!(slow.is_unavailable() && slow.is_timeout());
        let bug = Error::backend("redis", io());
        assert!(!bug.is_unavailable() && !bug.is_invalid_input());
        let big = Error::InsufficientCapacity {
            cost: 7,
            capacity: 5,
        };
        assert!(big.is_invalid_input() && big.is_insufficient_capacity() && !big.is_unavailable());
        assert!(Error::ZeroCost.is_invalid_input());
    }

    #[test]
    fn messages_are_lowercase_without_final_period() {
        let errors = [
            Error::ZeroCost,
            Error::UnknownTier,
            Error::InsufficientCapacity {
                cost: 7,
                capacity: 5,
            },
            Error::quota("tokens must be at least 1"),
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }

    #[test]
    fn error_is_send_sync_and_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }
}
