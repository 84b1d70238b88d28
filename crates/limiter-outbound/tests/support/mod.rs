//! A local upstream that enforces its own limit with 429s and counts what it saw, and
//! clients paced by the outbound middleware.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use limiter_core::{ClientKeyHasher, Policy, Quota, RateLimiter};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_outbound::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use limiter_outbound::{OutboundConfig, OutboundLimit, Pacer};
use parking_lot::Mutex;

/// What the upstream saw.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    limiter: MemoryLimiter,
    policy: Mutex<Policy>,
    pub served: AtomicUsize,
    pub refused: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub order: Mutex<Vec<String>>,
    /// The next request to `/pause` is answered 429 with `Retry-After` of this many
    /// seconds (1 unless set).
    pub pause_next: AtomicBool,
    pub pause_secs: std::sync::atomic::AtomicU64,
}

impl Upstream {
    /// An upstream admitting `per_second` requests a second with bursts of `burst`, and
    /// answering each after `delay`.
    pub async fn start(per_second: u64, burst: u64, delay: Duration) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            limiter: MemoryLimiter::new(MemoryConfig::default()).unwrap(),
            policy: Mutex::new(upstream_policy(per_second, burst)),
            served: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            order: Mutex::new(Vec::new()),
            pause_next: AtomicBool::new(false),
            pause_secs: std::sync::atomic::AtomicU64::new(1),
        });
        let app = Router::new()
            .fallback(move |state: State<Arc<Upstream>>, request: Request| {
                serve(state, request, delay)
            })
            .with_state(Arc::clone(&upstream));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        upstream
    }

    /// From now on, `per_second` with bursts of `burst`.
    pub fn set_limit(&self, per_second: u64, burst: u64) {
        *self.policy.lock() = upstream_policy(per_second, burst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `host:port` as the configuration names it.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

fn upstream_policy(per_second: u64, burst: u64) -> Policy {
    Policy::new(
        "upstream",
        [Quota::per_second(per_second)
            .unwrap()
            .allow_burst(burst)
            .unwrap()],
    )
    .unwrap()
}

async fn serve(State(up): State<Arc<Upstream>>, request: Request, delay: Duration) -> Response {
    let now = up.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    up.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    let key = ClientKeyHasher::new(b"upstream test secret")
        .unwrap()
        .hash("everyone");
    let policy = up.policy.lock().clone();
    let response = if path == "/pause" && up.pause_next.swap(false, Ordering::SeqCst) {
        up.refused.fetch_add(1, Ordering::SeqCst);
        let mut r = StatusCode::TOO_MANY_REQUESTS.into_response();
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        r
    } else if up.limiter.check(&key, &policy, 1).await.unwrap().allowed {
        up.served.fetch_add(1, Ordering::SeqCst);
        let cacheable = path.starts_with("/cached");
        up.order.lock().push(path);
        tokio::time::sleep(delay).await;
        let mut r = "ok".into_response();
        if cacheable {
            r.headers_mut().insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=600"),
            );
        }
        r
    } else {
        up.refused.fetch_add(1, Ordering::SeqCst);
        StatusCode::TOO_MANY_REQUESTS.into_response()
    };
    up.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// A configuration for `upstream` from TOML (`{host}` stands for its authority).
pub fn config(toml_text: &str, upstream: &Upstream) -> OutboundConfig {
    toml::from_str(&toml_text.replace("{host}", &upstream.authority())).unwrap()
}

/// A client paced by `pacer`.
pub fn client(pacer: Arc<Pacer>) -> ClientWithMiddleware {
    ClientBuilder::new(limiter_outbound::reqwest_outbound::Client::new())
        .with(OutboundLimit::new(pacer))
        .build()
}

/// A pacer on its own memory limiter.
pub fn memory_pacer(config: &OutboundConfig) -> Arc<Pacer> {
    let limiter: Arc<dyn RateLimiter> =
        Arc::new(MemoryLimiter::new(MemoryConfig::default()).unwrap());
    Arc::new(Pacer::new(config, limiter).unwrap())
}
