//! What a load task drives: a limiter, a bare `PING`, URLs over HTTP, `ratelimitd`'s
//! JSON check, or Envoy's rate limit service over gRPC.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use limiter_core::{ClientKey, Policy, Quota, RateLimiter};
use limiter_fallback::{Fallback, FallbackConfig};
use limiter_memory::{MemoryConfig, MemoryLimiter};
use limiter_redis::{RedisConfig, RedisLimiter};
use tonic::transport::Channel;

use crate::args::{Args, BackendKind};

/// What one task drives.
#[derive(Clone)]
pub(crate) enum Target {
    Limiter(Arc<dyn RateLimiter>, Arc<Policy>),
    Ping(Arc<RedisLimiter>),
    Http(reqwest::Client, Arc<[String]>, Option<Arc<str>>),
    /// `POST {url}/v1/check`, spread over the URLs.
    Check(reqwest::Client, Arc<[String]>),
    /// Clients (one HTTP/2 connection each) shared by the tasks, and the domain.
    Grpc(Arc<[RateLimitServiceClient<Channel>]>, Arc<str>),
}

pub(crate) enum Outcome {
    Allowed,
    Denied,
    Error,
}

/// What to drive, and the memory limiter when it is the backend (to count its buckets).
pub(crate) async fn target(args: &Args) -> Result<(Target, Option<Arc<MemoryLimiter>>), String> {
    let policy = || -> Result<Arc<Policy>, String> {
        let mut quota = Quota::per_second(args.limit).map_err(|e| format!("--limit: {e}"))?;
        if let Some(burst) = args.burst {
            quota = quota
                .allow_burst(burst)
                .map_err(|e| format!("--burst: {e}"))?;
        }
        Ok(Arc::new(
            Policy::new("bench", [quota]).map_err(|e| e.to_string())?,
        ))
    };
    let memory = || {
        MemoryLimiter::new(MemoryConfig {
            max_buckets: args.max_buckets,
        })
        .map_err(|e| e.to_string())
    };
    let redis = || -> Result<RedisLimiter, String> {
        let mut config = RedisConfig::from_url(&args.redis_url);
        config.connections = args.connections;
        config.max_batch = args.max_batch;
        RedisLimiter::new(config).map_err(|e| e.to_string())
    };
    let limiter: Arc<dyn RateLimiter> = match args.backend {
        BackendKind::Http => {
            let http = http_client(args)?;
            let key = args.api_key.as_deref().map(Arc::from);
            return Ok((Target::Http(http, args.urls.clone().into(), key), None));
        }
        BackendKind::Check => {
            let http = http_client(args)?;
            let urls: Vec<String> = args
                .urls
                .iter()
                .map(|u| format!("{}/v1/check", u.trim_end_matches('/')))
                .collect();
            return Ok((Target::Check(http, urls.into()), None));
        }
        BackendKind::Grpc => {
            let connections = args.grpc_connections.clamp(1, args.concurrency);
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                let channel = Channel::from_shared(args.urls[0].clone())
                    .map_err(|e| format!("--url: {e}"))?
                    .timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("grpc: cannot connect to {}: {e}", args.urls[0]))?;
                clients.push(RateLimitServiceClient::new(channel));
            }
            return Ok((
                Target::Grpc(clients.into(), args.domain.as_str().into()),
                None,
            ));
        }
        BackendKind::RedisPing => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            return Ok((Target::Ping(Arc::new(redis)), None));
        }
        BackendKind::Memory => {
            let memory = Arc::new(memory()?);
            return Ok((
                Target::Limiter(Arc::clone(&memory) as _, policy()?),
                Some(memory),
            ));
        }
        BackendKind::Redis => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            Arc::new(redis)
        }
        BackendKind::Fallback => {
            let redis = redis()?;
            redis.warm_up().await.map_err(|e| format!("redis: {e}"))?;
            let fallback = Fallback::new(redis, memory()?, FallbackConfig::default());
            Arc::new(fallback.map_err(|e| e.to_string())?)
        }
    };
    Ok((Target::Limiter(limiter, policy()?), None))
}

/// One keep-alive connection per task, each request bounded.
fn http_client(args: &Args) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

impl Target {
    pub(crate) async fn once(&self, i: u64, keys: u64, cost: u64) -> Outcome {
        match self {
            Target::Limiter(limiter, policy) => {
                let key = ClientKey::from(u128::from(i % keys + 1));
                match limiter.check(&key, policy, cost).await {
                    Ok(d) if d.allowed => Outcome::Allowed,
                    Ok(_) => Outcome::Denied,
                    Err(_) => Outcome::Error,
                }
            }
            Target::Ping(redis) => match redis.ping_once().await {
                Ok(()) => Outcome::Allowed,
                Err(_) => Outcome::Error,
            },
            Target::Http(http, urls, api_key) => {
                // `i % len` is below `len`, a usize.
                let url = &urls[usize::try_from(i % urls.len() as u64).unwrap_or(0)];
                let mut request = http.get(url);
                if let Some(key) = api_key {
                    request = request.header("x-api-key", &**key);
                }
                match request.send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        // Read the body so the connection is reused.
                        match (status, res.bytes().await) {
                            (_, Err(_)) => Outcome::Error,
                            (200..=299, Ok(_)) => Outcome::Allowed,
                            (429, Ok(_)) => Outcome::Denied,
                            _ => Outcome::Error,
                        }
                    }
                    Err(_) => Outcome::Error,
                }
            }
            Target::Check(http, urls) => {
                let url = &urls[usize::try_from(i % urls.len() as u64).unwrap_or(0)];
                let body = format!("{{\"client\":\"bench-{}\"}}", i % keys + 1);
                let sent = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(res) if res.status() == 200 => match res.bytes().await {
                        Ok(b) if contains(&b, b"\"allowed\":true") => Outcome::Allowed,
                        Ok(_) => Outcome::Denied,
                        Err(_) => Outcome::Error,
                    },
                    _ => Outcome::Error,
                }
            }
            Target::Grpc(clients, domain) => {
                // Task `t` sends checks `t`, `t + concurrency`, …: always on one connection.
                let which = usize::try_from(i % clients.len() as u64).unwrap_or(0);
                let mut client = clients[which].clone();
                let request = RateLimitRequest {
                    domain: domain.to_string(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: "client".to_owned(),
                            value: format!("bench-{}", i % keys + 1),
                        }],
                        ..RateLimitDescriptor::default()
                    }],
                    hits_addend: 0,
                };
                match client.should_rate_limit(request).await {
                    Ok(res) if res.get_ref().overall_code == Code::Ok as i32 => Outcome::Allowed,
                    Ok(_) => Outcome::Denied,
                    Err(_) => Outcome::Error,
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
