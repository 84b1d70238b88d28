//! Shared by the workspace's tests: a real Redis for each test that needs one, the Redis
//! topologies of `scripts/redis-topology.sh`, and waits.
//!
//! `REDIS_URL` points the tests at a Redis you run. Otherwise each test starts its own
//! `redis:7` container through testcontainers (built locally by `scripts/images.sh` where no
//! registry is reachable). When neither works the test fails, saying what to install: no
//! test is skipped.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failure must stop the test and say what to install"
)]

use std::time::{Duration, Instant};

use limiter_redis::redis::{self, AsyncCommands};
use limiter_redis::{RedisConfig, RedisLimiter};
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::redis::Redis;

pub mod topology;

/// What the Redis tests need, said when they cannot have it.
pub const HELP: &str = "these tests need a real Redis: install Docker (apt-get install docker.io), \
    start it and run scripts/images.sh, or set REDIS_URL to a Redis you run";

/// What the topology tests need, said when they cannot have it.
pub const REDIS_SERVER_HELP: &str = "these tests start redis-server processes: install Debian's \
    redis-server and redis-tools (apt-get install redis-server redis-tools), or run them as \
    root where scripts/redis-topology.sh can install them";

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

/// Waits until `check` holds, or panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis for one test; a container is removed when this is dropped.
#[derive(Debug)]
pub struct TestRedis {
    /// Where it is: `redis://host:port`.
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

    /// Always a new container, for tests that stop, pause or count it.
    pub async fn container() -> Self {
        Self::new_container(None).await
    }

    /// A new container on a fixed host port of loopback, so that its address survives a
    /// stop and a start.
    pub async fn container_on_fixed_port() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        Self::new_container(Some(port)).await
    }

    async fn new_container(port: Option<u16>) -> Self {
        let image = Redis::default().with_tag("7");
        let started = match port {
            Some(port) => image.with_mapped_port(port, 6379.tcp()).start().await,
            None => image.start().await,
        };
        let container =
            started.unwrap_or_else(|e| panic!("cannot start a redis:7 container ({e}); {HELP}"));
        let url = match port {
            Some(port) => format!("redis://127.0.0.1:{port}"),
            None => {
                let host = container.get_host().await.expect("container host");
                let port = container
                    .get_host_port_ipv4(6379.tcp())
                    .await
                    .expect("container port");
                format!("redis://{host}:{port}")
            }
        };
        Self {
            url,
            container: Some(container),
        }
    }

    /// The container, for tests that stop or pause it.
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

    /// Waits until Redis answers `PING` on a fresh connection (after a start, a restart);
    /// returns when it did.
    pub async fn until_ready(&self) -> Instant {
        let client = redis::Client::open(self.url.as_str()).expect("client");
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let ping = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), ping).await {
                return Instant::now();
            }
            assert!(Instant::now() < give_up, "Redis did not come back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    /// Calls of `command` (lowercase, as in `INFO commandstats`) so far.
    pub async fn calls(&self, command: &str) -> u64 {
        self.command_calls()
            .await
            .into_iter()
            .find_map(|(name, calls)| (name == command).then_some(calls))
            .unwrap_or(0)
    }
}

/// Redis's clock, in microseconds, read on `conn`: on an open connection, the reading is a
/// round trip after the call, without a connection's set-up.
pub async fn time_micros(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1_000_000 + micros
}
