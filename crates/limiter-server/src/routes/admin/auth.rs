//! Bearer tokens for the admin API: kept only as SHA-256 digests, compared in constant
//! time, and failed attempts limited per peer address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::Response;
use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter, ceil_secs};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::problem;
use crate::config::{Config, ConfigError};
use crate::state::AppState;

/// Who may use the admin API, and the count of failed attempts per peer.
pub(crate) struct AdminAuth {
    /// (name, SHA-256 of the token).
    tokens: Vec<(String, [u8; 32])>,
    failures: MemoryLimiter,
    policy: Policy,
    /// Peers are counted by a keyed hash, like every client.
    hasher: ClientKeyHasher,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The name of the token a request authenticated with, for the audit log.
#[derive(Clone, Debug)]
pub(crate) struct TokenName(pub(crate) String);

impl AdminAuth {
    /// The admin tokens of `config`; `None` when there are none (the admin API is off).
    ///
    /// # Errors
    /// A setting of `[admin]` that cannot be used, or no randomness for the peers' hash.
    pub(crate) fn new(config: &Config) -> Result<Option<Self>, ConfigError> {
        let tokens = config.admin.hashed_tokens(config.admin_token.as_deref());
        if tokens.is_empty() {
            return Ok(None);
        }
        let refused = |e| ConfigError::refused("admin.failed_attempts_per_minute", e);
        let policy = Quota::per_minute(config.admin.failed_attempts_per_minute)
            .and_then(|q| Policy::new("admin-auth-failures", [q]))
            .map_err(refused)?;
        let failures = MemoryLimiter::new(MemoryConfig {
            max_buckets: 100_000,
        })?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| {
            ConfigError::field(
                "admin",
                format_args!("no randomness for hashing peers: {e}"),
            )
        })?;
        Ok(Some(Self {
            tokens,
            failures,
            policy,
            hasher: ClientKeyHasher::new(secret)?,
        }))
    }

    /// The name of the token `presented` is, comparing with every token in constant time.
    fn name_of(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = 0u32;
        let mut any = subtle::Choice::from(0);
        for (i, (_, hash)) in self.tokens.iter().enumerate() {
            let equal = digest.ct_eq(hash);
            found.conditional_assign(&(i as u32), equal);
            any |= equal;
        }
        bool::from(any).then(|| self.tokens[found as usize].0.as_str())
    }
}

/// Lets a request through with its token's name in its extensions, or answers 401 (429
/// once a peer has failed too often).
pub(crate) async fn require(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return problem(StatusCode::NOT_FOUND, None, "no such route");
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        });
    let peer_key = auth.hasher.hash(peer.to_string());
    // A peer that used up its failures waits, whatever it presents now.
    if let Ok(d) = auth.failures.peek(&peer_key, &auth.policy, 1).await
        && !d.allowed
    {
        return too_many(d.retry_after.map_or(1, ceil_secs));
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    if let Some(name) = presented.and_then(|t| auth.name_of(t)) {
        let name = TokenName(name.to_owned());
        request.extensions_mut().insert(name);
        return next.run(request).await;
    }
    let failed = auth.failures.check(&peer_key, &auth.policy, 1).await;
    metrics::counter!("ratelimit_admin_auth_failures_total").increment(1);
    tracing::warn!(peer = %peer_key, "admin API: missing or unknown token");
    if let Ok(d) = failed
        && !d.allowed
    {
        return too_many(d.retry_after.map_or(1, ceil_secs));
    }
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        None,
        if presented.is_some() {
            "unknown token"
        } else {
            "missing token: send Authorization: Bearer <token>"
        },
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn too_many(retry_after_secs: u64) -> Response {
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        None,
        "too many failed authentications from this address; wait before trying again",
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
        response.headers_mut().insert(RETRY_AFTER, v);
    }
    response
}
