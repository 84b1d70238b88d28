//! Shared by the Redis integration tests: a real Redis to talk to, and a raw client to look
//! inside it.
//!
//! `REDIS_URL` points the tests at a Redis you run. Otherwise each test starts its own
//! `redis:7` container through testcontainers (built locally by `scripts/images.sh` where no
//! registry is reachable). When neither works the test fails, saying what to install: no
//! test is skipped.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failure must stop the test and say what to install"
)]

use std::time::Duration;

use limiter_redis::redis::{self, AsyncCommands};
use limiter_redis::{RedisConfig, RedisLimiter};
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::redis::Redis;

pub const HELP: &str = "these tests need a real Redis: install Docker (apt-get install docker.io), \
    start it and run scripts/images.sh, or set REDIS_URL to a Redis you run";

/// A client ID no other test run uses, so tests can share one Redis (`REDIS_URL`) and run
/// twice within a bucket's lifetime without reading each other's state.
pub fn unique_id(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{label}-{}-{nanos}-{n}", std::process::id())
}

/// A Redis for one test; a container is removed when this is dropped.
pub struct TestRedis {
    pub url: String,
    container: Option<ContainerAsync<Redis>>,
}

impl TestRedis {
    /// The Redis at `REDIS_URL`, or a new container.
    pub async fn start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Self {
                url,
                container: None,
            },
            _ => Self::container().await,
        }
    }

    /// Always a new container, for tests that stop or pause it.
    pub async fn container() -> Self {
        let container = Redis::default()
            .with_tag("7")
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start a redis:7 container ({e}); {HELP}"));
        let host = container.get_host().await.expect("container host");
        let port = container
            .get_host_port_ipv4(6379.tcp())
            .await
            .expect("container port");
        Self {
            url: format!("redis://{host}:{port}"),
            container: Some(container),
        }
    }

    pub fn container_handle(&self) -> &ContainerAsync<Redis> {
        self.container
            .as_ref()
            .expect("this test needs a container, not REDIS_URL")
    }

    /// A limiter with default settings on this Redis (its own pool, as a worker would have).
    pub fn limiter(&self) -> RedisLimiter {
        RedisLimiter::new(RedisConfig::from_url(&self.url)).expect("limiter")
    }

    /// A plain connection, for looking inside.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url.as_str()).expect("client");
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .unwrap_or_else(|_| panic!("Redis at {} did not answer; {HELP}", self.url))
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {} ({e}); {HELP}", self.url))
    }

    /// Redis's clock, in microseconds.
    pub async fn time_micros(&self) -> u64 {
        time_micros(&mut self.raw().await).await
    }

    /// Every key, by SCAN.
    pub async fn all_keys(&self) -> Vec<String> {
        let mut conn = self.raw().await;
        let mut keys = Vec::new();
        let mut iter: redis::AsyncIter<String> = conn.scan().await.expect("SCAN");
        while let Some(key) = iter.next_item().await {
            keys.push(key.expect("key"));
        }
        keys
    }

    /// `INFO commandstats` as (command, calls) pairs.
    pub async fn command_calls(&self) -> Vec<(String, u64)> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.raw().await)
            .await
            .expect("INFO");
        info.lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }
}

/// Redis's clock, in microseconds, read on `conn`: on an open connection, the reading is a
/// round trip after the call, without a connection's set-up.
pub async fn time_micros(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1_000_000 + micros
}
