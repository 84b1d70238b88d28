//! `[http]`: the server's bounds on what a slow or idle client may hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::HttpLimits;

/// The HTTP server's limits on what a client may hold: each a bound on a slow or idle client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Longest time from a request's first byte (a connection's opening, for its first
    /// request) until its header is complete, in ms. Default 5,000.
    pub header_read_timeout_ms: u64,
    /// Longest time to receive a request's whole body once its header is in, in ms.
    /// Default 10,000.
    pub body_read_timeout_ms: u64,
    /// Longest time a kept-alive connection may wait for its next request, in ms. Default
    /// 75,000: longer than the 60 s idle timeout of common load balancers, so the balancer
    /// closes first and never sends on a connection this server is closing.
    pub keep_alive_timeout_ms: u64,
    /// Most connections open at once; one more is answered 503 and closed. Default 10,000.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 10_000,
        }
    }
}

impl HttpSection {
    /// Checks each bound, naming its key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::field(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("keep_alive_timeout_ms", self.keep_alive_timeout_ms),
        ] {
            if ms == 0 {
                return Err(ConfigError::field(
                    &format!("http.{key}"),
                    "must be at least 1 ms",
                ));
            }
        }
        Ok(())
    }

    /// The limits [`serve`](crate::serve) applies.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(self.keep_alive_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}
