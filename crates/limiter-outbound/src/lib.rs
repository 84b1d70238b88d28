//! Outbound rate limiting: a [`reqwest-middleware`](reqwest_middleware) middleware that
//! paces calls to other services per host and role, on any `RateLimiter` backend, so a
//! fleet of crawlers or API clients shares one budget per host through Redis (and keeps
//! going on its own share when Redis is down, with a `Fallback` backend).
//!
//! - each (host, role) has quotas (a role's are checked together with its host's);
//! - a denied request waits for its turn, first come first served among this process's
//!   waiters, and fails with [`TooLongWait`] without being sent when the turn would come
//!   after the role's `max_delay`;
//! - a `429` or `503` with `Retry-After` pauses that host (for the fleet, with
//!   [`Pacer::with_redis`]).
//!
//! ```
//! use std::sync::Arc;
//!
//! use limiter_memory::{MemoryConfig, MemoryLimiter};
//! use limiter_outbound::{OutboundConfig, OutboundLimit, Pacer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: OutboundConfig = toml::from_str(r#"
//!     [defaults]
//!     quotas = [{ limit = 5, period = "1s" }]
//!     max_delay = "30s"
//!     [[hosts]]
//!     host = "api.example.org"
//!     quotas = [{ limit = 10, period = "1s" }, { limit = 5000, period = "1h" }]
//!     [[hosts.roles]]
//!     role = "artifact"
//!     quotas = [{ limit = 2, period = "1s" }]
//!     paths = ["/download/"]
//! "#)?;
//! let limiter = Arc::new(MemoryLimiter::new(MemoryConfig::default())?);
//! let pacer = Arc::new(Pacer::new(&config, limiter)?);
//! let client = reqwest_middleware::ClientBuilder::new(reqwest_outbound::Client::new())
//!     .with(OutboundLimit::new(pacer))
//!     .build();
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod aimd;
mod body;
mod config;
mod error;
mod leases;
mod middleware;
mod pacer;
mod plan;
mod shared;
mod signals;

pub use config::{
    Aimd, ConfigError, Defaults, ENV_PREFIX, HostConfig, MAX_DELAY_LIMIT, OutboundConfig,
    RoleConfig,
};
pub use error::{OutboundError, TooLongWait};
pub use leases::Lease;
pub use middleware::{OutboundLimit, Role, authority};
pub use pacer::{Pacer, Turn};
pub use signals::MAX_PAUSE;

/// Re-exported so users name the same versions as this crate.
pub use {reqwest_middleware, reqwest_outbound};
