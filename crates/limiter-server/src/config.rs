//! `ratelimitd`'s configuration: command-line flags over `RATELIMIT_*` environment variables
//! over a TOML file over built-in defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use limiter_core::{MIN_SECRET_LEN, Tier, TierPolicies};
use limiter_fallback::FallbackConfig;
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the service reads.
pub const ENV_PREFIX: &str = "RATELIMIT_";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ratelimitd",
    version,
    about = "A distributed rate limiter as an HTTP service"
)]
pub struct Cli {
    /// Address to listen on [env: RATELIMIT_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Redis shared by every worker; unset: in-memory only [env: RATELIMIT_REDIS_URL]
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// TOML configuration file
    #[arg(long, value_name = "FILE", env = "RATELIMIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Secret for hashing client IDs, the same on every worker; required with a Redis URL
    /// [env: RATELIMIT_HASH_SECRET]
    #[arg(long, value_name = "SECRET")]
    pub hash_secret: Option<String>,
    /// Log format [env: RATELIMIT_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands: tools for operators.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration as JSON (secrets redacted) and exit.
    Config,
    /// Read an API key from standard input and print its SHA-256, for `[[api_keys]]`.
    HashKey,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// The forwarding header trusted proxies write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderName {
    /// `X-Forwarded-For`.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// What to do with an API key that is not in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownKeys {
    /// Treat the client as anonymous, known by address.
    #[default]
    Anonymous,
    /// Answer 401.
    Reject,
}

/// One API key, stored by its SHA-256 (`ratelimitd hash-key` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// A label for operators (never the key).
    #[serde(default)]
    pub name: String,
    /// 64 hex digits: the SHA-256 of the key.
    pub sha256: String,
    /// The key's tier.
    pub tier: Tier,
}

/// The in-memory limiter (the whole backend without Redis; the fallback with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySection {
    /// Most buckets tracked at once (one per client, tier and quota). Default 1,000,000.
    pub max_buckets: usize,
}

impl Default for MemorySection {
    fn default() -> Self {
        Self {
            max_buckets: 1_000_000,
        }
    }
}

/// The Redis connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// Multiplexed connections kept open. Default 4.
    pub connections: usize,
    /// Most checks sent in one script call; 1 sends each check on its own. Default 64.
    pub max_batch: usize,
    /// Longest wait to open a connection, in ms. Default 250.
    pub connect_timeout_ms: u64,
    /// Longest wait for a reply, in ms. Default 250.
    pub response_timeout_ms: u64,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            connections: 4,
            max_batch: 64,
            connect_timeout_ms: 250,
            response_timeout_ms: 250,
        }
    }
}

/// The HTTP server's limits on what a client may hold: each a bound on a slow or idle client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Longest time from a request's first byte (a connection's opening, for its first
    /// request) until its header is complete, in ms. Default 5,000.
    pub header_read_timeout_ms: u64,
    /// Longest time to receive a request's whole body once its header is in, in ms.
    /// Default 10,000.
    pub body_read_timeout_ms: u64,
    /// Longest time a kept-alive connection may wait for its next request, in ms. Default
    /// 75,000: longer than the 60 s idle timeout of common load balancers, so the balancer
    /// closes first and never sends on a connection this server is closing.
    pub keep_alive_timeout_ms: u64,
    /// Most connections open at once; one more is answered 503 and closed. Default 10,000.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 10_000,
        }
    }
}

/// Everything `ratelimitd` can be told. Field names are the TOML keys; environment
/// variables are `RATELIMIT_` + the key in capitals, with `__` between a section and its
/// key (`RATELIMIT_FALLBACK__DEADLINE_MS`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Redis shared by the workers; unset: in-memory only.
    pub redis_url: Option<String>,
    /// Secret for hashing client IDs (at least 16 bytes), the same on every worker.
    /// Required with `redis_url`; without it an in-memory service makes a random one.
    pub hash_secret: Option<String>,
    /// Log format. Default `text`.
    pub log_format: LogFormat,
    /// Largest `/v1/check` body accepted, in bytes. Default 65,536.
    pub max_body_bytes: usize,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed (CIDR networks).
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header trusted proxies write: `x-forwarded-for` (default) or
    /// `forwarded`. The other is never read.
    pub forwarded_header: ForwardedHeaderName,
    /// Anonymous IPv4 clients are known by their network of this many bits. Default 32.
    pub ipv4_prefix: u8,
    /// Anonymous IPv6 clients are known by their network of this many bits. Default 64 (the
    /// block one subscriber or host gets: a /128 would hand it 2^64 fresh buckets).
    pub ipv6_prefix: u8,
    /// Header carrying API keys. Default `x-api-key`.
    pub api_key_header: String,
    /// What an unknown API key gets: `anonymous` (default) or `reject` (401).
    pub unknown_api_keys: UnknownKeys,
    /// Known API keys, by SHA-256.
    pub api_keys: Vec<ApiKeyEntry>,
    /// After SIGTERM: how long readiness says `draining` before the listener closes, so
    /// balancers stop sending first. Default 2000.
    pub shutdown_grace_ms: u64,
    /// Denials remembered until their `retry_after` so repeats cost Redis nothing (with a
    /// Redis URL). 0 turns the cache off. Default 100,000.
    pub deny_cache_entries: usize,
    /// The policy of each tier; a tier not given keeps its default.
    pub tiers: TierPolicies,
    /// The in-memory limiter.
    pub memory: MemorySection,
    /// The Redis connections.
    pub redis: RedisSection,
    /// Redis deadline, probing, and what to answer while Redis is unavailable.
    pub fallback: FallbackConfig,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: HttpSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: None,
            hash_secret: None,
            log_format: LogFormat::Text,
            max_body_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeaderName::XForwardedFor,
            ipv4_prefix: limiter_http::DEFAULT_IPV4_PREFIX,
            ipv6_prefix: limiter_http::DEFAULT_IPV6_PREFIX,
            api_key_header: "x-api-key".to_owned(),
            unknown_api_keys: UnknownKeys::Anonymous,
            api_keys: Vec::new(),
            deny_cache_entries: 100_000,
            shutdown_grace_ms: 2_000,
            tiers: TierPolicies::default(),
            memory: MemorySection::default(),
            redis: RedisSection::default(),
            fallback: FallbackConfig::default(),
            http: HttpSection::default(),
        }
    }
}

/// Secrets redacted: the hash secret and any password in the Redis URL.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted_json())
    }
}

/// A configuration that cannot be used; the message names the field.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about `field`.
    pub fn field(field: &str, reason: impl fmt::Display) -> Self {
        Self(format!("{field}: {reason}"))
    }
}

/// Top-level string settings read from the environment verbatim.
const STRING_VARS: [&str; 3] = ["HASH_SECRET", "REDIS_URL", "API_KEY_HEADER"];

/// Only the flags that were given, so that absent ones leave lower layers alone.
#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

impl Config {
    /// The configuration from the command line, the process environment and the file the
    /// command line or `RATELIMIT_CONFIG` names, validated.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: a missing or malformed file, a value of the wrong
    /// type, an unknown key, or a value out of range.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        Self::load_from(cli, Env::prefixed(ENV_PREFIX))
    }

    fn load_from(cli: &Cli, env: Env) -> Result<Self, ConfigError> {
        // Precedence, lowest first: defaults, file, environment, flags.
        // The tiers are left out of the defaults layer: figment merges tables key by key, so
        // a default tier's `quotas` would survive under a file's `unlimited = true` (and the
        // reverse). Absent tiers get their defaults from `TierPolicies`'s own parsing.
        let mut defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        if let Some(obj) = defaults.as_object_mut() {
            obj.remove("tiers");
        }
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = &cli.config {
            figment = figment.merge(Toml::file_exact(checked_file(path)?));
        }
        // figment parses environment values ("123" becomes a number); these are strings
        // whatever they look like, so they are read as they are.
        let raw: BTreeMap<String, String> = STRING_VARS
            .iter()
            .filter_map(|key| {
                let value = std::env::var(format!("{ENV_PREFIX}{key}")).ok()?;
                Some((key.to_ascii_lowercase(), value))
            })
            .collect();
        let mut ignored = vec!["CONFIG"]; // the file's path is not a setting
        ignored.extend(STRING_VARS);
        let config: Config = figment
            .merge(env.ignore(&ignored).split("__"))
            .merge(Serialized::defaults(raw))
            .merge(Serialized::defaults(Overrides {
                listen: cli.listen,
                redis_url: cli.redis_url.as_deref(),
                hash_secret: cli.hash_secret.as_deref(),
                log_format: cli.log_format,
            }))
            .extract()
            .map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.redis_url, &self.hash_secret) {
            (Some(_), None) => {
                return Err(ConfigError::field(
                    "hash_secret",
                    "required when redis_url is set (--hash-secret or RATELIMIT_HASH_SECRET): \
                     every worker must hash client IDs with the same secret",
                ));
            }
            (_, Some(secret)) if secret.len() < MIN_SECRET_LEN => {
                return Err(ConfigError::field(
                    "hash_secret",
                    format_args!("must be at least {MIN_SECRET_LEN} bytes"),
                ));
            }
            _ => {}
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::field("max_body_bytes", "must be at least 1"));
        }
        if http_header_name(&self.api_key_header).is_none() {
            return Err(ConfigError::field(
                "api_key_header",
                "must be a valid HTTP header name",
            ));
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            let hex_ok =
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(ConfigError::field(
                    &format!("api_keys[{i}].sha256"),
                    "must be 64 hex digits, the SHA-256 of the key (ratelimitd hash-key prints it)",
                ));
            }
        }
        for (field, bits, max) in [
            ("ipv4_prefix", self.ipv4_prefix, 32),
            ("ipv6_prefix", self.ipv6_prefix, 128),
        ] {
            if !(1..=max).contains(&bits) {
                return Err(ConfigError::field(
                    field,
                    format_args!("must be 1 to {max} bits"),
                ));
            }
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::field(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        if self.memory.max_buckets == 0 {
            return Err(ConfigError::field(
                "memory.max_buckets",
                "must be at least 1",
            ));
        }
        for (field, n) in [
            ("redis.connections", self.redis.connections),
            ("redis.max_batch", self.redis.max_batch),
        ] {
            if n == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        for (field, ms) in [
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            (
                "http.keep_alive_timeout_ms",
                self.http.keep_alive_timeout_ms,
            ),
            ("fallback.deadline_ms", duration_ms(self.fallback.deadline)),
            (
                "fallback.probe_interval_ms",
                duration_ms(self.fallback.probe_interval),
            ),
        ] {
            if ms == 0 {
                return Err(ConfigError::field(field, "must be at least 1 ms"));
            }
        }
        if self.fallback.expected_workers == 0 {
            return Err(ConfigError::field(
                "fallback.expected_workers",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The configuration as JSON with the hash secret and any Redis password replaced.
    pub fn redacted_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            if obj.get("hash_secret").is_some_and(|s| !s.is_null()) {
                obj.insert("hash_secret".into(), "<redacted>".into());
            }
            if let Some(url) = self.redis_url.as_deref() {
                obj.insert("redis_url".into(), limiter_redis::redacted(url).into());
            }
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

pub(crate) fn http_header_name(name: &str) -> Option<axum::http::HeaderName> {
    axum::http::HeaderName::try_from(name).ok()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn checked_file(path: &Path) -> Result<&Path, ConfigError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(ConfigError::field(
            "config",
            format_args!("{} is not a readable file", path.display()),
        ))
    }
}

/// figment's error as one line per problem, each naming the key and where it came from.
fn describe(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("ratelimitd").chain(args.iter().copied()))
    }

    #[allow(clippy::result_large_err, reason = "figment's test jail, not ours")]
    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let mut out = None;
        let mut f = Some(f);
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            out = f.take().map(|f| f());
            Ok(())
        });
        out.unwrap()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = with_env(&[], || Config::load(&cli(&[])).unwrap());
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.redis_url, None);
        assert_eq!(c.tiers, TierPolicies::default());
    }

    #[test]
    fn numeric_secrets_stay_strings() {
        let c = with_env(&[("RATELIMIT_HASH_SECRET", "12345678901234567890")], || {
            Config::load(&cli(&[])).unwrap()
        });
        assert_eq!(c.hash_secret.as_deref(), Some("12345678901234567890"));
    }

    #[test]
    fn nested_keys_come_from_double_underscores() {
        let c = with_env(&[("RATELIMIT_FALLBACK__DEADLINE_MS", "20")], || {
            Config::load(&cli(&[])).unwrap()
        });
        assert_eq!(c.fallback.deadline, Duration::from_millis(20));
    }

    #[test]
    fn http_limits_have_defaults_in_seconds_and_keys() {
        let c = with_env(
            &[("RATELIMIT_HTTP__HEADER_READ_TIMEOUT_MS", "1500")],
            || Config::load(&cli(&[])).unwrap(),
        );
        assert_eq!(c.http.header_read_timeout_ms, 1_500);
        let d = HttpSection::default();
        assert!(d.header_read_timeout_ms <= 10_000);
        assert!(d.body_read_timeout_ms <= 60_000 && d.keep_alive_timeout_ms <= 120_000);
        for (var, value) in [
            ("RATELIMIT_HTTP__MAX_CONNECTIONS", "0"),
            ("RATELIMIT_HTTP__BODY_READ_TIMEOUT_MS", "0"),
            ("RATELIMIT_IPV6_PREFIX", "129"),
            ("RATELIMIT_IPV4_PREFIX", "0"),
        ] {
            let e = with_env(&[(var, value)], || Config::load(&cli(&[])).unwrap_err());
            let key = var
                .trim_start_matches("RATELIMIT_")
                .to_ascii_lowercase()
                .replace("__", ".");
            assert!(e.to_string().contains(&key), "{var}: {e}");
        }
    }

    #[test]
    fn redis_without_a_secret_is_refused() {
        let e = with_env(&[], || {
            Config::load(&cli(&["--redis-url", "redis://127.0.0.1"])).unwrap_err()
        });
        assert!(e.to_string().contains("hash_secret"), "{e}");
    }

    #[test]
    fn redaction_hides_secrets() {
        let c = Config {
            redis_url: Some("redis://user:pw-123@host:6379".into()),
            hash_secret: Some("s3cret-s3cret-s3cret".into()),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pw-123") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("host:6379"));
    }
}
