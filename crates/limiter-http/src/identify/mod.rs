//! Who is asking: the client identity and tier of a request.
//!
//! [`Identify`] is the one trait; [`ClientIp`] knows anonymous clients by address (`ip.rs`),
//! [`ApiKeys`] and [`ApiKeyOrIp`] by API key (`keys.rs`).

use std::fmt;

use std::net::IpAddr;

use http::StatusCode;
use http::request::Parts;
use limiter_core::Tier;
use limiter_rules::KeyHash;

mod ip;
mod keys;

pub use ip::{ClientIp, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX, ForwardedHeader};
pub use keys::{ApiKeyOrIp, ApiKeys, DEFAULT_API_KEY_HEADER, InvalidKeyHash, UnknownKey};

/// A client as the limiter counts it: a raw identifier and the tier whose policy applies.
///
/// The identifier is hashed with the deployment secret before it goes anywhere; `Debug`
/// prints only the tier.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    tier: Tier,
    id: String,
    ip: Option<IpAddr>,
    api_key: Option<KeyHash>,
}

impl Identity {
    /// A client known by `id` (an address, a user ID, a hash of an API key) in `tier`.
    pub fn new(tier: Tier, id: impl Into<String>) -> Self {
        Self {
            tier,
            id: id.into(),
            ip: None,
            api_key: None,
        }
    }

    /// The client's address, which `ip` rules match (whatever the client is counted by).
    #[must_use]
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// The hash of the API key the client presented, which `api_key` rules match.
    #[must_use]
    pub fn with_api_key(mut self, hash: KeyHash) -> Self {
        self.api_key = Some(hash);
        self
    }

    /// The client's address, if known.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The hash of the client's API key, if it presented a known one.
    pub fn api_key(&self) -> Option<KeyHash> {
        self.api_key
    }

    /// The tier whose policy applies.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The raw identifier, to be hashed.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("tier", &self.tier)
            .field("id", &"<redacted>")
            .finish()
    }
}

/// A request refused before any limit is checked (an unknown API key, no client address):
/// answered as a problem+json response with this status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The response status.
    pub status: StatusCode,
    /// What the client did wrong, safe to show it (never echoes a credential).
    pub detail: String,
}

impl Rejection {
    /// A rejection with `status` and a `detail` for the client.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// Tells who sent a request. Implemented for closures
/// `Fn(&http::request::Parts) -> Result<Identity, Rejection>`, so a custom scheme (a user ID
/// from a session, a tenant header) is one line.
pub trait Identify: Send + Sync + 'static {
    /// The client and tier of the request with these parts.
    ///
    /// # Errors
    /// A [`Rejection`] to answer instead of serving the request.
    fn identify(&self, request: &Parts) -> Result<Identity, Rejection>;
}

impl<F> Identify for F
where
    F: Fn(&Parts) -> Result<Identity, Rejection> + Send + Sync + 'static,
{
    fn identify(&self, request: &Parts) -> Result<Identity, Rejection> {
        self(request)
    }
}

/// A request's parts for the tests: from `peer`, with `headers`.
#[cfg(test)]
fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
    let mut req = http::Request::builder();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (mut parts, ()) = req.body(()).unwrap().into_parts();
    parts.extensions.insert(axum::extract::ConnectInfo(
        peer.parse::<std::net::SocketAddr>().unwrap(),
    ));
    parts
}
