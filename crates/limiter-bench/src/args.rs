//! The command line.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use limiter_memory::MemoryConfig;
use limiter_redis::RedisConfig;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    /// The in-process limiter.
    Memory,
    /// `RedisLimiter` on `--redis-url`.
    Redis,
    /// `Fallback` of Redis on `--redis-url` to memory.
    Fallback,
    /// HTTP requests to `--url`: 2xx is allowed, 429 denied, anything else an error.
    Http,
    /// `POST /v1/check` of `ratelimitd` at `--url` (its base URL; several are taken in
    /// turn), one client per key: `"allowed": true` is allowed.
    Check,
    /// Envoy's `ShouldRateLimit` (gRPC) at `--url` (`http://host:port`): one descriptor,
    /// `client` = one value per key, in `--domain`, over `--grpc-connections`.
    Grpc,
    /// `PING` through the Redis backend's connections instead of a check: the round-trip
    /// floor of the same client, to compare latencies with.
    RedisPing,
}

#[derive(Debug, Parser)]
#[command(name = "limiter-bench", version, about)]
pub(crate) struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "memory")]
    pub(crate) backend: BackendKind,
    /// Redis for the redis and fallback backends.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// URL to request, for the http backend (repeat to spread requests over several).
    #[arg(long = "url", value_name = "URL", required_if_eq_any([("backend", "http"), ("backend", "check"), ("backend", "grpc")]))]
    pub(crate) urls: Vec<String>,
    /// HTTP/2 connections the grpc backend's tasks share (Envoy multiplexes its calls to
    /// the rate limit service over one connection per worker thread).
    #[arg(long, default_value_t = 2)]
    pub(crate) grpc_connections: usize,
    /// The rate limit service's domain, for the grpc backend.
    #[arg(long, default_value = "bench")]
    pub(crate) domain: String,
    /// Sent as `X-API-Key` on every HTTP request.
    #[arg(long, value_name = "KEY")]
    pub(crate) api_key: Option<String>,
    /// Checks in flight at once, each waiting for its answer before the next.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Distinct clients, checked in turn (library backends).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) keys: u64,
    /// Tokens per check (library backends).
    #[arg(long, default_value_t = 1)]
    pub(crate) cost: u64,
    /// The quota, per second per client (library backends). The default admits everything,
    /// so every check takes the costlier path that writes.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub(crate) limit: u64,
    /// The bucket's capacity (library backends); default: `--limit`. A small limit with a
    /// large burst admits everything too, but leaves buckets that take seconds to refill,
    /// so their Redis keys live as long as real clients' do instead of expiring within a
    /// millisecond.
    #[arg(long)]
    pub(crate) burst: Option<u64>,
    /// Open loop: offer this many checks per second in all, evenly spaced, instead of
    /// sending the next check as soon as the last is answered. A pacing thread releases the
    /// sends due every 100 µs to whichever tasks are free (Tokio's timers tick every
    /// millisecond, which would send in bursts of a millisecond's worth); a send that finds
    /// every task busy goes as soon as one is free, so the offered rate holds. Latency is
    /// measured from each send.
    #[arg(long, value_name = "PER_SEC")]
    pub(crate) rate: Option<f64>,
    /// Most buckets the memory limiter keeps (memory and fallback backends).
    #[arg(long, default_value_t = MemoryConfig::default().max_buckets)]
    pub(crate) max_buckets: usize,
    /// Multiplexed Redis connections (redis, fallback and redis-ping backends).
    #[arg(long, default_value_t = RedisConfig::default().connections)]
    pub(crate) connections: usize,
    /// Most checks in one script call; 1 sends each check on its own (redis and fallback).
    #[arg(long, default_value_t = RedisConfig::default().max_batch)]
    pub(crate) max_batch: usize,
    /// Seconds to wait for the first URL to answer before starting (http).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) wait: f64,
    /// Print the result as one JSON line (the default prints it pretty).
    #[arg(long)]
    pub(crate) json: bool,
    /// Instead of measuring, serve `GET /` on this address for an HTTP load generator:
    /// the route with the rate-limit layer (`--guarded`, memory backend, every request
    /// admitted) or without it, so the two can be compared.
    #[arg(long, value_name = "ADDR")]
    pub(crate) serve: Option<SocketAddr>,
    /// With `--serve`: put the rate-limit layer in front of the route.
    #[arg(long)]
    pub(crate) guarded: bool,
    /// With `--serve`, without `--guarded`: answer with the five headers the layer writes,
    /// fixed, and no layer. Against the guarded route, this isolates the layer's own work
    /// from the cost of sending and parsing its headers.
    #[arg(long, conflicts_with = "guarded")]
    pub(crate) static_headers: bool,
}
