//! A guarded axum router and the means to drive it with `oneshot`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, Response};
use http_body_util::BodyExt;
use limiter_core::{
    ClientKey, ClientKeyHasher, Decision, Error, ManualClock, Policy, RateLimiter, async_trait,
};
use limiter_http::RateLimitLayer;
use limiter_memory::{MemoryConfig, MemoryLimiter};
use tower::ServiceExt;

pub const SECRET: &[u8] = b"limiter-http tests secret";

/// A memory limiter on a clock the test moves, counting the checks it is asked.
#[derive(Debug)]
pub struct Counted {
    pub memory: MemoryLimiter<ManualClock>,
    pub clock: ManualClock,
    pub calls: AtomicUsize,
}

impl Counted {
    pub fn new() -> Arc<Self> {
        let clock = ManualClock::new();
        Arc::new(Self {
            memory: MemoryLimiter::with_clock(MemoryConfig::default(), clock.clone()).unwrap(),
            clock,
            calls: AtomicUsize::new(0),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl RateLimiter for Counted {
    async fn check(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.check(key, policy, cost).await
    }

    async fn peek(&self, key: &ClientKey, policy: &Policy, cost: u64) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.peek(key, policy, cost).await
    }

    async fn refund(
        &self,
        key: &ClientKey,
        policy: &Policy,
        tokens: u64,
    ) -> Result<Decision, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.memory.refund(key, policy, tokens).await
    }
}

/// A backend that can never decide.
#[derive(Debug)]
pub struct Broken;

#[async_trait]
impl RateLimiter for Broken {
    async fn check(&self, _: &ClientKey, _: &Policy, _: u64) -> Result<Decision, Error> {
        Err(Error::unavailable("test", "backend is down"))
    }

    async fn peek(&self, _: &ClientKey, _: &Policy, _: u64) -> Result<Decision, Error> {
        Err(Error::unavailable("test", "backend is down"))
    }

    async fn refund(&self, _: &ClientKey, _: &Policy, _: u64) -> Result<Decision, Error> {
        Err(Error::unavailable("test", "backend is down"))
    }
}

pub fn layer(limiter: Arc<dyn RateLimiter>) -> RateLimitLayer {
    RateLimitLayer::new(limiter, ClientKeyHasher::new(SECRET).unwrap())
}

pub fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
}

/// A GET of `/` from `peer` with `headers`.
pub fn request(peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().uri("/");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    req
}

pub async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

pub async fn body_json(res: Response<Body>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn header<'a>(res: &'a Response<Body>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

pub fn header_u64(res: &Response<Body>, name: &str) -> u64 {
    header(res, name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .parse()
        .unwrap()
}

/// The integer parameter `name` of the first item of a structured-field list.
pub fn sf_param(value: &str, name: &str) -> u64 {
    value
        .split(',')
        .next()
        .unwrap()
        .split(';')
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {value}"))
        .parse()
        .unwrap()
}
