//! Bearer tokens for the admin API: kept only as SHA-256 digests, compared in constant
//! time, and failed attempts limited per peer address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    AUTHORIZATION, COOKIE as COOKIE_HEADER, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter, ceil_secs};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use parking_lot::Mutex;
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
    /// The dashboard's sessions, by the SHA-256 of their cookie.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

/// A dashboard session: the token it was opened with (by name), its anti-CSRF token, and
/// when it ends.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) csrf: String,
    expires: Instant,
}

/// How long a dashboard session lasts.
pub(crate) const SESSION: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept at once (the oldest-ending goes first beyond).
const MAX_SESSIONS: usize = 10_000;

/// The dashboard session cookie.
pub(crate) const COOKIE: &str = "rl_session";

/// The header a dashboard's state-changing request carries its anti-CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Why a login was refused.
pub(crate) enum Refused {
    /// Not a token: 401.
    Wrong,
    /// Too many failures from this peer: 429, after this many seconds.
    TooMany(u64),
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
            sessions: Mutex::new(HashMap::new()),
        }))
    }

    /// The name of `presented` if it is a token, counting a failure against `peer`
    /// otherwise; refused at once while `peer` has failed too often.
    pub(crate) async fn attempt(
        &self,
        peer: IpAddr,
        presented: Option<&[u8]>,
    ) -> Result<String, Refused> {
        let peer_key = self.hasher.hash(peer.to_string());
        // A peer that used up its failures waits, whatever it presents now.
        if let Ok(d) = self.failures.peek(&peer_key, &self.policy, 1).await
            && !d.allowed
        {
            return Err(Refused::TooMany(d.retry_after.map_or(1, ceil_secs)));
        }
        if let Some(name) = presented.and_then(|t| self.name_of(t)) {
            return Ok(name.to_owned());
        }
        let failed = self.failures.check(&peer_key, &self.policy, 1).await;
        metrics::counter!("ratelimit_admin_auth_failures_total").increment(1);
        tracing::warn!(peer = %peer_key, "admin: missing or unknown token");
        match failed {
            Ok(d) if !d.allowed => Err(Refused::TooMany(d.retry_after.map_or(1, ceil_secs))),
            _ => Err(Refused::Wrong),
        }
    }

    /// Opens a dashboard session for the token named `name`: (cookie value, session).
    pub(crate) fn open(&self, name: String) -> Option<(String, Session)> {
        let mut id = [0u8; 32];
        let mut csrf = [0u8; 32];
        getrandom::fill(&mut id).ok()?;
        getrandom::fill(&mut csrf).ok()?;
        let session = Session {
            name,
            csrf: hex::encode(csrf),
            expires: Instant::now() + SESSION,
        };
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        let cookie = hex::encode(id);
        sessions.insert(Sha256::digest(cookie.as_bytes()).into(), session.clone());
        Some((cookie, session))
    }

    /// The live session `cookie` names.
    pub(crate) fn session(&self, cookie: &str) -> Option<Session> {
        let digest: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        let mut sessions = self.sessions.lock();
        match sessions.get(&digest) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&digest);
                None
            }
            None => None,
        }
    }

    /// Ends the session `cookie` names.
    pub(crate) fn close(&self, cookie: &str) {
        let digest: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        self.sessions.lock().remove(&digest);
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
    let peer = peer_of(&request);
    // The dashboard's session cookie stands for the token it was opened with; a request
    // that changes anything must also carry the session's anti-CSRF token.
    if request.headers().get(AUTHORIZATION).is_none()
        && let Some(cookie) = session_cookie(request.headers())
    {
        let Some(session) = auth.session(cookie) else {
            return problem(
                StatusCode::UNAUTHORIZED,
                None,
                "the session has ended: log in again",
            );
        };
        let safe = matches!(*request.method(), Method::GET | Method::HEAD);
        let csrf_ok = request
            .headers()
            .get(CSRF_HEADER)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(session.csrf.as_bytes())));
        if !safe && !csrf_ok {
            return problem(
                StatusCode::FORBIDDEN,
                None,
                "missing or wrong anti-CSRF token",
            );
        }
        request.extensions_mut().insert(TokenName(session.name));
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match auth.attempt(peer, presented).await {
        Ok(name) => {
            request.extensions_mut().insert(TokenName(name));
            next.run(request).await
        }
        Err(Refused::TooMany(secs)) => too_many(secs),
        Err(Refused::Wrong) => {
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
    }
}

/// The peer's address as the socket says.
pub(crate) fn peer_of<B>(request: &axum::http::Request<B>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        })
}

/// The dashboard session cookie's value, if the request carries one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

pub(crate) fn too_many(retry_after_secs: u64) -> Response {
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
