//! What can keep a request from being sent.

use std::fmt;
use std::time::Duration;

/// A request that would have waited longer than its role's `max_delay`: it was not sent.
/// Callers find it in `reqwest_middleware::Error::Middleware` by downcasting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLongWait {
    /// The host (`host` or `host:port`).
    pub host: String,
    /// The role, if the request had one.
    pub role: Option<String>,
    /// How long it would have had to wait from now, when known (a queue that did not move
    /// in time says `None`).
    pub retry_after: Option<Duration>,
    /// The role's `max_delay`.
    pub max_delay: Duration,
}

impl fmt::Display for TooLongWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outbound request to {}", self.host)?;
        if let Some(role) = &self.role {
            write!(f, " ({role})")?;
        }
        write!(f, " not sent: ")?;
        match self.retry_after {
            Some(wait) => write!(f, "its turn comes in {wait:?}")?,
            None => write!(f, "the requests ahead of it did not move")?,
        }
        write!(f, ", beyond max_delay {:?}", self.max_delay)
    }
}

impl std::error::Error for TooLongWait {}

/// Why a request could not be paced.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboundError {
    /// Its turn would come too late.
    TooLongWait(TooLongWait),
    /// The limiter could not decide (with a `Fallback` backend, outages never get here).
    Limiter(limiter_core::Error),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::TooLongWait(e) => e.fmt(f),
            OutboundError::Limiter(e) => write!(f, "outbound limiter could not decide: {e}"),
        }
    }
}

impl std::error::Error for OutboundError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutboundError::TooLongWait(e) => Some(e),
            OutboundError::Limiter(e) => Some(e),
        }
    }
}
