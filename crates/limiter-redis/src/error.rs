//! Outage or refusal, and of which kind: Redis's errors as the limiter's.

use deadpool_redis::PoolError;
use deadpool_redis::redis::{ErrorKind as RedisErrorKind, RedisError, ServerErrorKind};
use limiter_core::{Error, ErrorKind};

use crate::BACKEND;

/// By the error's kind and code, never its message.
pub(crate) fn classify(e: RedisError) -> Error {
    let cannot_serve = matches!(
        e.kind(),
        RedisErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
                // A redirection still there after the client's retries: the cluster is
                // moving slots or failing over, and will answer again.
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ) | RedisErrorKind::ClusterConnectionNotFound
    ) || e.code() == Some("BUSY");
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || cannot_serve
    {
        return Error::unavailable(BACKEND, e);
    }
    let kind = match (e.kind(), e.code()) {
        (_, Some("OOM")) => ErrorKind::OutOfMemory,
        (_, Some("MISCONF")) => ErrorKind::WritesRefused,
        (RedisErrorKind::AuthenticationFailed, _) | (_, Some("NOAUTH" | "WRONGPASS")) => {
            ErrorKind::Auth
        }
        (RedisErrorKind::Server(ServerErrorKind::NoPerm), _) | (_, Some("NOPERM")) => {
            ErrorKind::Permission
        }
        (RedisErrorKind::Parse | RedisErrorKind::UnexpectedReturnType, _) => ErrorKind::Reply,
        (RedisErrorKind::Server(_) | RedisErrorKind::Extension, _) => ErrorKind::Server,
        _ => ErrorKind::Client,
    };
    Error::backend(BACKEND, kind, e)
}

/// The pool's errors: a timeout or a closed pool is an outage; a connection it could not
/// make is whatever Redis said.
pub(crate) fn classify_pool(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(_) | PoolError::Closed => Error::unavailable(BACKEND, e),
        other => Error::backend(BACKEND, ErrorKind::Client, other),
    }
}

#[cfg(test)]
mod tests {
    use deadpool_redis::redis;

    use super::*;

    #[test]
    fn refusals_are_outages_of_their_kind() {
        // Errors as Redis sends them on the wire.
        let server = |line: &str| {
            let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
            classify(value.extract_error().unwrap_err())
        };
        for (line, kind) in [
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                ErrorKind::OutOfMemory,
            ),
            (
                "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
                ErrorKind::WritesRefused,
            ),
            ("NOAUTH Authentication required.", ErrorKind::Auth),
            (
                "WRONGPASS invalid username-password pair or user is disabled.",
                ErrorKind::Auth,
            ),
            (
                "NOPERM User w has no permissions to run the 'evalsha' command",
                ErrorKind::Permission,
            ),
            ("ERR max number of clients reached", ErrorKind::Server),
            (
                "ERR user_script:1: Script attempted to access nonexistent global variable",
                ErrorKind::Server,
            ),
        ] {
            let e = server(line);
            assert_eq!(e.kind(), kind, "{line}: {e}");
            assert!(!e.is_invalid_input() && !e.is_per_check(), "{line}");
        }
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "READONLY You can't write against a read only replica.",
            "MASTERDOWN Link with MASTER is down",
        ] {
            assert!(server(line).is_unavailable(), "{line}");
        }
    }
}
