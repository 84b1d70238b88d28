//! Clients by API key: a table of keys stored by SHA-256, and the usual scheme of a key or
//! else the address.

use std::collections::HashMap;
use std::fmt;

use http::StatusCode;
use http::header::HeaderName;
use http::request::Parts;
use limiter_core::Tier;
use limiter_rules::KeyHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ClientIp, Identify, Identity, Rejection};

/// The header that carries API keys unless configured otherwise.
pub const DEFAULT_API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// What to do with an API key that is not in the table. In configuration files:
/// `"anonymous"` or `"reject"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownKey {
    /// Ignore it: the client is anonymous, known by address. The default.
    #[default]
    Anonymous,
    /// Refuse the request with 401.
    Reject,
}

/// API keys and their tiers, stored by SHA-256 only: the table never holds a key in clear.
///
/// API keys are long random secrets, so an unkeyed SHA-256 cannot be reversed by guessing
/// (unlike an IP address); operators can hash keys with `ratelimitd hash-key` without
/// knowing the deployment's hash secret.
///
/// ```
/// use limiter_core::Tier;
/// use limiter_http::ApiKeys;
///
/// let keys = ApiKeys::new()
///     .with_hash(&ApiKeys::hash_key("k-premium-0123456789"), Tier::Premium)
///     .unwrap();
/// assert_eq!(keys.tier_of("k-premium-0123456789"), Some(Tier::Premium));
/// assert_eq!(keys.tier_of("k-unknown"), None);
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    header: HeaderName,
    tiers: HashMap<[u8; 32], Tier>,
    unknown: UnknownKey,
}

/// An API key hash that is not 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidKeyHash;

impl fmt::Display for InvalidKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an API key hash must be 64 hex digits (the SHA-256 of the key)")
    }
}

impl std::error::Error for InvalidKeyHash {}

impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            header: DEFAULT_API_KEY_HEADER,
            tiers: HashMap::new(),
            unknown: UnknownKey::default(),
        }
    }
}

impl ApiKeys {
    /// An empty table reading [`DEFAULT_API_KEY_HEADER`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The SHA-256 of `key` in lowercase hex: what the table and config files store.
    pub fn hash_key(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    /// Adds a key by its SHA-256 in hex.
    ///
    /// # Errors
    /// [`InvalidKeyHash`] unless `sha256_hex` is 64 hex digits.
    pub fn with_hash(mut self, sha256_hex: &str, tier: Tier) -> Result<Self, InvalidKeyHash> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(sha256_hex, &mut hash).map_err(|_| InvalidKeyHash)?;
        self.tiers.insert(hash, tier);
        Ok(self)
    }

    /// Reads keys from `header` instead of `X-API-Key`.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// What to do with keys not in the table. Default: [`UnknownKey::Anonymous`].
    #[must_use]
    pub fn unknown(mut self, unknown: UnknownKey) -> Self {
        self.unknown = unknown;
        self
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tier of a raw key, if the table knows it.
    pub fn tier_of(&self, key: &str) -> Option<Tier> {
        self.tiers
            .get(&<[u8; 32]>::from(Sha256::digest(key.as_bytes())))
            .copied()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("header", &self.header)
            .field("keys", &self.tiers.len())
            .field("unknown", &self.unknown)
            .finish()
    }
}

/// The usual scheme: a known API key names the client and its tier; without one (or with
/// an unknown one, unless configured to reject it) the client is anonymous, known by
/// address.
#[derive(Clone, Debug, Default)]
pub struct ApiKeyOrIp {
    keys: ApiKeys,
    ip: ClientIp,
}

impl ApiKeyOrIp {
    /// Keys from `keys`, addresses by `ip`.
    pub fn new(keys: ApiKeys, ip: ClientIp) -> Self {
        Self { keys, ip }
    }
}

impl Identify for ApiKeyOrIp {
    fn identify(&self, request: &Parts) -> Result<Identity, Rejection> {
        if let Some(value) = request.headers.get(&self.keys.header) {
            let hash = <[u8; 32]>::from(Sha256::digest(value.as_bytes()));
            if let Some(&tier) = self.keys.tiers.get(&hash) {
                // The key itself goes no further than this digest.
                let identity = Identity::new(tier, format!("key:{}", hex::encode(hash)))
                    .with_api_key(KeyHash::from_bytes(hash));
                return Ok(match self.ip.client_ip(request) {
                    Some(ip) => identity.with_ip(ip),
                    None => identity,
                });
            }
            if self.keys.unknown == UnknownKey::Reject {
                return Err(Rejection::new(StatusCode::UNAUTHORIZED, "unknown API key"));
            }
        }
        self.ip.identify(request)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parts;
    use super::*;

    #[test]
    fn unknown_keys_are_anonymous_or_rejected() {
        let keys = ApiKeys::new()
            .with_hash(&ApiKeys::hash_key("good-key"), Tier::Premium)
            .unwrap();
        let known = parts("198.51.100.7:1", &[("x-api-key", "good-key")]);
        let unknown = parts("198.51.100.7:1", &[("x-api-key", "bad-key")]);
        let lenient = ApiKeyOrIp::new(keys.clone(), ClientIp::new());
        assert_eq!(lenient.identify(&known).unwrap().tier(), Tier::Premium);
        let anon = lenient.identify(&unknown).unwrap();
        assert_eq!(anon.tier(), Tier::Anonymous);
        assert_eq!(anon.id(), "ip:198.51.100.7");
        let strict = ApiKeyOrIp::new(keys.unknown(UnknownKey::Reject), ClientIp::new());
        assert_eq!(
            strict.identify(&unknown).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn key_identity_holds_only_the_digest() {
        let keys = ApiKeys::new()
            .with_hash(&ApiKeys::hash_key("secret-key-123"), Tier::ApiKey)
            .unwrap();
        let who = ApiKeyOrIp::new(keys, ClientIp::new())
            .identify(&parts("198.51.100.7:1", &[("x-api-key", "secret-key-123")]))
            .unwrap();
        assert!(!who.id().contains("secret-key-123"));
        assert!(!format!("{who:?}").contains("secret"));
        assert!(ApiKeys::new().with_hash("abc", Tier::ApiKey).is_err());
    }
}
