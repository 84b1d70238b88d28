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
/// could not be reached or refused to decide. Callers classify errors with the predicates and
/// [`Error::kind`], never by message.
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
    /// The backend answered, but not with a decision: it refused (out of memory, writes
    /// stopped, authentication, permissions), its script failed, or its reply had the wrong
    /// shape. It could not decide, so a fallback answers instead, as for an outage.
    #[error("{backend} failed ({kind}): {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What kind of refusal or failure.
        kind: ErrorKind,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// One stored bucket could not be read (a Redis key holding something else): this check
    /// could not be decided, every other check can. Not an outage.
    #[error("{backend}: {reason}")]
    UnreadableBucket {
        /// Which backend.
        backend: &'static str,
        /// Which bucket, by its storage key (a hash, never a raw client ID), and why.
        reason: String,
    },
}

/// What kind of failure an [`Error`] is: a stable label for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input can never be decided.
    InvalidInput,
    /// The backend could not be reached, or said it cannot serve now.
    Unavailable,
    /// The backend missed its deadline.
    Timeout,
    /// The backend is out of memory and refuses writes (Redis `OOM`).
    OutOfMemory,
    /// The backend refuses writes for another reason (Redis `MISCONF`: persistence failing).
    WritesRefused,
    /// The backend refused the credentials, or wants some (`NOAUTH`, `WRONGPASS`).
    Auth,
    /// The credentials may not run what a check needs (`NOPERM`).
    Permission,
    /// The backend answered with an error of another kind (a script error, too many
    /// clients, an unknown command).
    Server,
    /// The backend's reply was not of the expected shape or range.
    Reply,
    /// A stored bucket could not be read ([`Error::UnreadableBucket`]).
    Bucket,
    /// The client library failed in another way.
    Client,
}

impl ErrorKind {
    /// Every kind, in order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidInput,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::OutOfMemory,
        ErrorKind::WritesRefused,
        ErrorKind::Auth,
        ErrorKind::Permission,
        ErrorKind::Server,
        ErrorKind::Reply,
        ErrorKind::Bucket,
        ErrorKind::Client,
    ];

    /// The label: `"invalid_input"`, `"unavailable"`, `"timeout"`, `"out_of_memory"`,
    /// `"writes_refused"`, `"auth"`, `"permission"`, `"server"`, `"reply"`, `"bucket"` or
    /// `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::WritesRefused => "writes_refused",
            ErrorKind::Auth => "auth",
            ErrorKind::Permission => "permission",
            ErrorKind::Server => "server",
            ErrorKind::Reply => "reply",
            ErrorKind::Bucket => "bucket",
            ErrorKind::Client => "client",
        }
    }

    /// This kind's position in [`ErrorKind::ALL`], for counters kept in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// An [`Error::Unavailable`] from a backend's own error.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            backend,
            source: source.into(),
        }
    }

    /// An [`Error::Backend`] of `kind` from a backend's own error.
    pub fn backend(backend: &'static str, kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            kind,
            source: source.into(),
        }
    }

    /// An [`Error::InvalidConfig`]: `reason` names the setting (and never holds a password).
    pub fn config(reason: impl fmt::Display) -> Self {
        Self::InvalidConfig {
            reason: reason.to_string(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Backend { kind, .. } => *kind,
            Self::UnreadableBucket { .. } => ErrorKind::Bucket,
            _ => ErrorKind::InvalidInput,
        }
    }

    /// True when only this check failed and the backend can decide every other one (a
    /// bucket it could not read). A fallback answers the check without opening its circuit.
    pub fn is_per_check(&self) -> bool {
        matches!(self, Self::UnreadableBucket { .. })
    }

    /// True when the backend is down, unreachable or too slow. Every other failure to decide
    /// that is not the caller's ([`is_invalid_input`](Self::is_invalid_input)) nor confined
    /// to one check ([`is_per_check`](Self::is_per_check)) is an outage to a fallback too: a
    /// backend that refuses writes cannot decide either.
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
        let oom = Error::backend("redis", ErrorKind::OutOfMemory, io());
        assert!(!oom.is_unavailable() && !oom.is_invalid_input() && !oom.is_per_check());
        assert_eq!(oom.kind(), ErrorKind::OutOfMemory);
        let bucket = Error::UnreadableBucket {
            backend: "redis",
            reason: "rl:{..}:p:1-1-1 holds a hash".into(),
        };
        assert!(bucket.is_per_check() && !bucket.is_invalid_input() && !bucket.is_unavailable());
        assert_eq!(bucket.kind(), ErrorKind::Bucket);
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        assert_eq!(slow.kind(), ErrorKind::Timeout);
        let big = Error::InsufficientCapacity {
            cost: 7,
            capacity: 5,
        };
        assert!(big.is_invalid_input() && big.is_insufficient_capacity() && !big.is_unavailable());
        assert!(Error::ZeroCost.is_invalid_input());
        assert_eq!(Error::ZeroCost.kind(), ErrorKind::InvalidInput);
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
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
