//! Envoy's rate limit service configuration, in the format of the reference service
//! (envoyproxy/ratelimit): one `domain` per YAML file and a tree of `descriptors`, each
//! with a `key`, an optional `value` and a `rate_limit`.
//!
//! Each entry's limit becomes a [`Rule`](limiter_rules::Rule) of the rules engine: its
//! policy is a token bucket whose burst is `requests_per_unit`, and `shadow_mode` is the
//! rule's shadow mode. The gRPC service (in `ratelimitd`) finds the limit of each request
//! descriptor with [`Domain::find`], applies `replaces` with [`apply_replaces`], and asks
//! the limiter for the bucket chosen by the descriptor's values (hashed first).
//!
//! ```
//! use limiter_rls::{Allowance, RlsConfig, Unit};
//!
//! # fn main() -> Result<(), limiter_rls::ConfigError> {
//! let config = RlsConfig::from_texts([("edge.yaml", r#"
//! domain: edge
//! descriptors:
//!   - key: remote_address
//!     rate_limit: {unit: second, requests_per_unit: 10}
//!   - key: path
//!     value: /login
//!     descriptors:
//!       - key: remote_address
//!         rate_limit: {unit: minute, requests_per_unit: 5}
//! "#)])?;
//! let edge = config.domain("edge").expect("configured");
//! let login = edge.find([("path", "/login"), ("remote_address", "203.0.113.7")]);
//! assert_eq!(
//!     login.map(|l| l.allowance()),
//!     Some(Allowance::Bucket { requests_per_unit: 5, unit: Unit::Minute })
//! );
//! assert!(edge.find([("path", "/search")]).is_none()); // no entry: no limit
//! # Ok(())
//! # }
//! ```

mod error;
mod format;
mod load;
mod tree;

pub use error::ConfigError;
pub use load::{MAX_FILE_BYTES, RlsConfig};
pub use tree::{Allowance, Domain, Limit, MAX_DEPTH, MAX_NAME_LEN, Unit, apply_replaces};
