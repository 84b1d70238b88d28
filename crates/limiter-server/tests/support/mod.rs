//! Shared by the `ratelimitd` tests: the real binary started as a child process, talked to
//! over real HTTP, its logs captured; and a real Redis for the fleet (from
//! `limiter-test-support`).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test support: a failure must stop the test and say why"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ratelimitd");
pub const SECRET: &str = "ratelimitd tests: shared secret";

/// A `ratelimitd` command with none of this process's `RATELIMIT_*` variables.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("RATELIMIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "debug");
    // Rules persist in a file of each process's own (a flag still wins): a test that turns
    // the kill switch off must not leave it off for the next server in the crate directory.
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!(
        "ratelimitd-test-{}-{n}.rules.json",
        std::process::id()
    ));
    cmd.env("RATELIMIT_RULES_FILE", file);
    cmd
}

/// A running `ratelimitd`; killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    pub logs: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `ratelimitd` on a free loopback port with `args` (plus JSON logs).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(command(), args)
    }

    /// A worker of a fleet: `config`, the Redis at `redis_url`, the shared secret.
    pub fn worker(config: &tempfile::NamedTempFile, redis_url: &str) -> Self {
        Self::start(&[
            "--config",
            path(config),
            "--redis-url",
            redis_url,
            "--hash-secret",
            SECRET,
        ])
    }

    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ratelimitd");
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                {
                    let addr = event["addr"].as_str().unwrap().parse::<SocketAddr>();
                    let _ = addr_tx.send(addr.unwrap());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr.read_to_string(&mut buf);
            sink.lock().unwrap().push_str(&buf);
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "ratelimitd did not start; output:\n{}",
                    logs.lock().unwrap()
                )
            });
        Self { addr, child, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the process printed so far, stdout and stderr.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The address of the rate limit service (gRPC), once it logged it.
    pub fn grpc_addr(&self) -> SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let logs = self.logs();
            let found = logs.lines().find_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                (event["message"] == "rate limit service (gRPC) listening")
                    .then(|| event["addr"].as_str()?.parse().ok())
                    .flatten()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gRPC service did not start; output:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ratelimitd did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ratelimitd <args>` run to completion: (exit code, stdout, stderr). A process still
/// running after 20 s (a server that should have refused to start) is killed: a failure.
pub fn run(mut cmd: Command, args: &[&str]) -> (i32, String, String) {
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ratelimitd");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ratelimitd {args:?} was still running after 20 s; output:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `contents` to a fresh file and returns it (kept until dropped).
pub fn config_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
    file
}

pub fn path(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /v1/check` with `body`: (status, JSON answer).
pub async fn check(
    http: &reqwest::Client,
    server: &Server,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let res = http
        .post(server.url("/v1/check"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// `GET /metrics` as text.
pub async fn metrics(http: &reqwest::Client, server: &Server) -> String {
    let res = http.get(server.url("/metrics")).send().await.unwrap();
    res.text().await.unwrap()
}

#[allow(unused_imports, reason = "each test file uses a different part")]
pub use limiter_test_support::{HELP, TestRedis, unique_id as unique};

/// `/health/ready` once it answers 200 (start-up done), as JSON.
pub async fn ready(http: &reqwest::Client, server: &Server) -> serde_json::Value {
    for _ in 0..200 {
        let res = http.get(server.url("/health/ready")).send().await.unwrap();
        if res.status() == 200 {
            return res.json().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("worker never became ready; logs:\n{}", server.logs());
}

/// Sends requests one after the other until one is denied (`request` answers `Break` with
/// what the test wants of the denial) and returns that. A limit of `limit` that refills a
/// token every `refill` must admit at least `limit` first, and no more than the tokens that
/// refilled meanwhile on top: exact on a fast machine, still true on a slow one.
pub async fn until_denied<T, F>(limit: usize, refill: Duration, mut request: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = std::ops::ControlFlow<T>>,
{
    let started = std::time::Instant::now();
    let mut admitted = 0;
    loop {
        if let std::ops::ControlFlow::Break(denial) = request().await {
            let refilled = started.elapsed().as_nanos() / refill.as_nanos();
            let most = limit + usize::try_from(refilled).unwrap();
            assert!(
                (limit..=most).contains(&admitted),
                "{admitted} admitted before the first denial; the limit {limit} allows {most} \
                 in {:?}",
                started.elapsed()
            );
            return denial;
        }
        admitted += 1;
        assert!(admitted <= 2 * limit, "{admitted} admitted: no limit");
    }
}

/// Waits until `check` holds, looking every 50 ms; fails naming `what` after `within`.
pub async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin token the rules tests configure.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// An admin API request to `server` with the tests' token: (status, headers, JSON or null).
pub async fn admin(
    http: &reqwest::Client,
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    if_match: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut req = http
        .request(method, server.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

/// `POST /v1/admin/rules` with `rule`, which must be created.
pub async fn add_rule(http: &reqwest::Client, server: &Server, rule: serde_json::Value) {
    let (status, _, body) = admin(
        http,
        server,
        reqwest::Method::POST,
        "/v1/admin/rules",
        Some(rule),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// A Redis database of its own on `url` (one per test file), emptied: tests that share
/// one Redis through REDIS_URL must not see each other's rules.
pub async fn own_database(url: &str, db: u8) -> String {
    // The URL without its path (a database it names), then this one.
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let url = format!("{}/{db}", &url[..end]);
    let client = limiter_redis::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = limiter_redis::redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .unwrap();
    url
}
