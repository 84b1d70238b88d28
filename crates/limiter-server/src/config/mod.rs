//! `ratelimitd`'s configuration: command-line flags over `RATELIMIT_*` environment variables
//! over a TOML file over built-in defaults.
//!
//! The libraries' own serde configurations are embedded as they are (`[memory]`, `[redis]`,
//! `[fallback]`, the identity's enums): their constructors and validators are the only ones
//! that judge them. This module keeps the rules that span settings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::HeaderName;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use limiter_core::Error;
use limiter_core::{ClientKeyHasher, Tier, TierPolicies};
use limiter_fallback::FallbackConfig;
use limiter_http::{
    ApiKeyOrIp, ApiKeys, ClientIp, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX, ForwardedHeader,
    UnknownKey,
};
use limiter_memory::MemoryConfig;
use limiter_redis::RedisConfig;
use serde::{Deserialize, Serialize};

mod admin;
mod cli;
mod http;
mod throttle;

pub use admin::{AdminSection, AdminTokenEntry, MIN_ADMIN_TOKEN_LEN};
pub use cli::{Cli, Command, LogFormat};
pub use http::HttpSection;
use limiter_rules::RuleSpec;
pub use throttle::ThrottleSection;

/// Prefix of every environment variable the service reads.
pub const ENV_PREFIX: &str = "RATELIMIT_";

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
    pub forwarded_header: ForwardedHeader,
    /// Anonymous IPv4 clients are known by their network of this many bits. Default 32.
    pub ipv4_prefix: u8,
    /// Anonymous IPv6 clients are known by their network of this many bits. Default 64 (the
    /// block one subscriber or host gets: a /128 would hand it 2^64 fresh buckets).
    pub ipv6_prefix: u8,
    /// Header carrying API keys. Default `x-api-key`.
    pub api_key_header: String,
    /// What an unknown API key gets: `anonymous` (default) or `reject` (401).
    pub unknown_api_keys: UnknownKey,
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
    pub memory: MemoryConfig,
    /// The Redis connections (the URL is `redis_url`).
    pub redis: RedisConfig,
    /// Redis deadline, probing, and what to answer while Redis is unavailable.
    pub fallback: FallbackConfig,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: HttpSection,
    /// A token that turns the admin API on (named `admin-token`); unset with no `[admin]`
    /// tokens: the admin API is off.
    pub admin_token: Option<String>,
    /// Serve the admin API on this address of its own; unset: beside the check API.
    pub admin_listen: Option<SocketAddr>,
    /// Where rules persist when there is no Redis. Default `ratelimitd.rules.json`.
    pub rules_file: PathBuf,
    /// Rules that seed an empty store (`[[rules]]`); once rules are stored, the store's
    /// rules are in force and these are not read again.
    pub rules: Vec<RuleSpec>,
    /// The admin API's tokens and the bounds of what it records.
    pub admin: AdminSection,
    /// This worker's name in violations; default: the host name and the process ID.
    pub worker_name: Option<String>,
    /// Serve Envoy's rate limit service (gRPC) on this address; unset: off.
    pub grpc_listen: Option<SocketAddr>,
    /// The rate limit service's descriptor config: a YAML file, or a directory of them
    /// (one domain per file), reloaded when it changes.
    pub rls_config: Option<PathBuf>,
    /// Add the rate-limit headers (`RateLimit`, `X-RateLimit-*`, `Retry-After`) to the rate
    /// limit service's answers, for Envoy to send to the client. Default true.
    pub rls_response_headers: bool,
    /// Load-aware throttling: off unless `enabled`.
    pub throttle: ThrottleSection,
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
            forwarded_header: ForwardedHeader::XForwardedFor,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            api_key_header: "x-api-key".to_owned(),
            unknown_api_keys: UnknownKey::Anonymous,
            api_keys: Vec::new(),
            deny_cache_entries: 100_000,
            shutdown_grace_ms: 2_000,
            tiers: TierPolicies::default(),
            memory: MemoryConfig::default(),
            redis: RedisConfig::default(),
            fallback: FallbackConfig::default(),
            http: HttpSection::default(),
            admin_token: None,
            admin_listen: None,
            rules_file: PathBuf::from("ratelimitd.rules.json"),
            rules: Vec::new(),
            admin: AdminSection::default(),
            worker_name: None,
            grpc_listen: None,
            rls_config: None,
            rls_response_headers: true,
            throttle: ThrottleSection::default(),
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

/// A library's refusal of its settings, whose message names the key.
impl From<Error> for ConfigError {
    fn from(e: Error) -> Self {
        Self(reason(e))
    }
}

impl ConfigError {
    /// A library's refusal of `field`'s value.
    pub(crate) fn refused(field: &str, e: Error) -> Self {
        Self::field(field, reason(e))
    }
}

/// What a library refused, without the "invalid configuration" its message starts with.
fn reason(e: Error) -> String {
    match e {
        Error::InvalidConfig { reason } => reason,
        other => other.to_string(),
    }
}

impl ConfigError {
    /// An error about `field`.
    pub fn field(field: &str, reason: impl fmt::Display) -> Self {
        Self(format!("{field}: {reason}"))
    }
}

/// Top-level string settings read from the environment verbatim.
const STRING_VARS: [&str; 7] = [
    "HASH_SECRET",
    "REDIS_URL",
    "API_KEY_HEADER",
    "ADMIN_TOKEN",
    "RULES_FILE",
    "WORKER_NAME",
    "RLS_CONFIG",
];

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
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules_file: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rls_config: Option<&'a Path>,
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
        let env = env.ignore(&ignored).split("__");
        refuse_misread_values(&env)?;
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(raw))
            .merge(Serialized::defaults(Overrides {
                listen: cli.listen,
                redis_url: cli.redis_url.as_deref(),
                hash_secret: cli.hash_secret.as_deref(),
                log_format: cli.log_format,
                admin_token: cli.admin_token.as_deref(),
                admin_listen: cli.admin_listen,
                rules_file: cli.rules_file.as_deref(),
                grpc_listen: cli.grpc_listen,
                rls_config: cli.rls_config.as_deref(),
            }))
            .extract()
            .map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot, without building the backends (so that `ratelimitd
    /// config` refuses a bad file too): the service's own rules, then each library's
    /// settings by its own validator. [`App::new`](crate::App::new) checks the service's
    /// rules and builds the rest through the constructors, which refuse the same.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_own()?;
        self.memory.validate()?;
        self.redis.validate()?;
        if let Some(url) = &self.redis_url {
            RedisConfig {
                url: url.clone(),
                ..self.redis.clone()
            }
            .validate_url()
            .map_err(|e| ConfigError::refused("redis_url", e))?;
        }
        self.fallback.validate()?;
        self.seed_rules()?;
        self.rls()?;
        self.throttle.validate()?;
        Ok(())
    }

    /// The rate limit service's descriptor config as `rls_config` names it (none: every
    /// domain unknown, which limits nothing).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field; `rls_config` without `grpc_listen`.
    pub(crate) fn rls(&self) -> Result<limiter_rls::RlsConfig, ConfigError> {
        match (&self.rls_config, &self.grpc_listen) {
            (None, _) => Ok(limiter_rls::RlsConfig::default()),
            (Some(_), None) => Err(ConfigError::field(
                "rls_config",
                "set grpc_listen (--grpc-listen or RATELIMIT_GRPC_LISTEN) too: the descriptor config is served over gRPC",
            )),
            (Some(path), Some(_)) => {
                limiter_rls::RlsConfig::load(path).map_err(|e| ConfigError::field("rls_config", e))
            }
        }
    }

    /// The `[[rules]]` of the file, validated (an API key hashed at once).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the rule and field.
    pub(crate) fn seed_rules(&self) -> Result<Vec<limiter_rules::Rule>, ConfigError> {
        limiter_rules::rules_from_specs(self.rules.clone())
            .map_err(|e| ConfigError::field(e.field(), e.reason()))
    }

    /// The rules of the service itself and those that span settings: the secret with a Redis
    /// URL, the body limit, the HTTP limits; and the identity, built and returned.
    pub(crate) fn check_own(&self) -> Result<ApiKeyOrIp, ConfigError> {
        match (&self.redis_url, &self.hash_secret) {
            (Some(_), None) => {
                return Err(ConfigError::field(
                    "hash_secret",
                    "required when redis_url is set (--hash-secret or RATELIMIT_HASH_SECRET): \
                     every worker must hash client IDs with the same secret",
                ));
            }
            (_, Some(secret)) => {
                ClientKeyHasher::new(secret).map_err(|e| ConfigError::field("hash_secret", e))?;
            }
            (None, None) => {}
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::field("max_body_bytes", "must be at least 1"));
        }
        self.http.validate()?;
        self.admin.validate(self.admin_token.as_deref())?;
        self.identity()
    }

    /// The client-ID hasher: the configured secret, or without Redis a random one (a single
    /// in-memory process has nobody to agree with). [`check_own`](Self::check_own) has
    /// checked the secret.
    ///
    /// # Errors
    /// No randomness to make a secret from, or a secret the hasher refuses.
    pub(crate) fn hasher(&self) -> Result<ClientKeyHasher, ConfigError> {
        let secret = match &self.hash_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => random_secret()?,
        };
        ClientKeyHasher::new(&secret).map_err(|e| ConfigError::field("hash_secret", e))
    }

    /// Who a client is on the guarded routes: an API key from the table, else its address.
    ///
    /// # Errors
    /// A header name, key hash or prefix length the identity's constructors refuse.
    pub(crate) fn identity(&self) -> Result<ApiKeyOrIp, ConfigError> {
        let header = HeaderName::try_from(self.api_key_header.as_str()).map_err(|_| {
            ConfigError::field("api_key_header", "must be a valid HTTP header name")
        })?;
        let mut keys = ApiKeys::new().unknown(self.unknown_api_keys).header(header);
        for (i, entry) in self.api_keys.iter().enumerate() {
            keys = keys.with_hash(&entry.sha256, entry.tier).map_err(|e| {
                ConfigError::field(
                    &format!("api_keys[{i}].sha256"),
                    format_args!("{e} (ratelimitd hash-key prints it)"),
                )
            })?;
        }
        Ok(ApiKeyOrIp::new(keys, self.addresses()?))
    }

    /// How anonymous clients are known by address.
    ///
    /// # Errors
    /// A prefix length out of range.
    pub(crate) fn addresses(&self) -> Result<ClientIp, ConfigError> {
        // The IPv4 length with a valid IPv6 one first, so the error names the one that is
        // wrong.
        ClientIp::new()
            .trust_proxies(self.trusted_proxies.iter().copied())
            .forwarded_header(self.forwarded_header)
            .key_prefixes(self.ipv4_prefix, DEFAULT_IPV6_PREFIX)
            .map_err(|e| ConfigError::field("ipv4_prefix", format_args!("{e}: 1 to 32 bits")))?
            .key_prefixes(self.ipv4_prefix, self.ipv6_prefix)
            .map_err(|e| ConfigError::field("ipv6_prefix", format_args!("{e}: 1 to 128 bits")))
    }

    /// The configuration as JSON with the hash secret and any Redis password replaced.
    pub fn redacted_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            for secret in ["hash_secret", "admin_token"] {
                if obj.get(secret).is_some_and(|s| !s.is_null()) {
                    obj.insert(secret.into(), "<redacted>".into());
                }
            }
            // A seed rule's raw API key is shown as its hash, as the admin API shows it.
            if let Ok(rules) = self.seed_rules() {
                obj.insert(
                    "rules".into(),
                    serde_json::to_value(rules).unwrap_or_default(),
                );
            } else if let Some(serde_json::Value::Array(rules)) = obj.get_mut("rules") {
                for rule in rules {
                    if let Some(m) = rule.get_mut("match") {
                        *m = "<redacted>".into();
                    }
                }
            }
            if let Some(url) = self.redis_url.as_deref() {
                obj.insert("redis_url".into(), limiter_redis::redacted(url).into());
            }
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

/// A random secret for a process that shares its buckets with nobody.
fn random_secret() -> Result<Vec<u8>, ConfigError> {
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| {
        ConfigError::field(
            "hash_secret",
            format_args!("none given and none could be made: {e}"),
        )
    })?;
    Ok(secret)
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

/// Refuses the environment values figment (0.10.19) would misread or could not read, naming
/// the variable and not echoing the value. Both were found by the config fuzz target:
/// - its parser slices a quoted string at the first backslash by the count of characters
///   before it, not of bytes: with a non-ASCII character before it, that panics or silently
///   drops characters. No setting read this way needs either, so a value with both is
///   refused;
/// - it parses arrays and tables by recursion without a bound, so a few thousand `[`
///   overflow the stack. No setting nests deeper than a list of tables (2).
fn refuse_misread_values(env: &Env) -> Result<(), ConfigError> {
    for (key, value) in env.iter() {
        let problem = if value.contains('\\') && !value.is_ascii() {
            "a value with both a backslash and a non-ASCII character cannot be read; write \
             the character itself, or set it in the config file"
        } else if nesting(&value) > MAX_ENV_NESTING {
            "arrays and tables nested this deep cannot be read"
        } else {
            continue;
        };
        let var = format!(
            "{ENV_PREFIX}{}",
            key.as_str().replace('.', "__").to_ascii_uppercase()
        );
        return Err(ConfigError::field(&var, problem));
    }
    Ok(())
}

/// The deepest arrays and tables an environment value may hold.
const MAX_ENV_NESTING: usize = 16;

/// How deep `[` and `{` nest in `value` outside quoted strings (closing ones included or
/// not: an upper bound of the parser's recursion).
fn nesting(value: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
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
    use std::time::Duration;

    use clap::Parser;

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
    fn urls_redis_cannot_read_are_refused_before_start() {
        // Found by the config fuzz target: this URL loaded, then App::new refused it, so
        // `ratelimitd config` called a file good that would not start.
        for url in [
            "redis://u2:wp7@1.03670.:1.9",
            "redis+cluster://u:pw-123@,",
            "redis+sentinel://pw-123@127.0.0.1:26379",
        ] {
            let e = with_env(&[("RATELIMIT_HASH_SECRET", "0123456789abcdef")], || {
                Config::load(&cli(&["--redis-url", url])).unwrap_err()
            });
            let shown = e.to_string();
            assert!(shown.contains("redis_url"), "{url}: {shown}");
            assert!(
                !shown.contains("pw-123") && !shown.contains("wp7"),
                "{shown}"
            );
        }
        for url in [
            "redis://127.0.0.1:6379",
            "redis+cluster://a:1,b:2",
            "redis+sentinel://s:26379/m",
        ] {
            let c = with_env(&[("RATELIMIT_HASH_SECRET", "0123456789abcdef")], || {
                Config::load(&cli(&["--redis-url", url])).unwrap()
            });
            assert!(crate::App::new(&c).is_ok(), "{url}");
        }
    }

    /// `ratelimitd`'s config from a hash secret and the anonymous tier's quotas
    /// set in the environment to `quotas`.
    fn load_with_anonymous_quotas(quotas: &str) -> Result<Config, ConfigError> {
        with_env(
            &[
                ("RATELIMIT_HASH_SECRET", "0123456789abcdef"),
                ("RATELIMIT_TIERS__ANONYMOUS__QUOTAS", quotas),
            ],
            || Config::load(&cli(&[])),
        )
    }

    #[test]
    fn environment_values_figment_would_misread_are_refused() {
        // Found by the config fuzz target: figment's parser panicked on the first, and read
        // the second as "éa\n", dropping the "b".
        for value in [r#"[{ limit = 1, period = "ϣ\0s" }]"#, r#""éab\n""#] {
            let shown = load_with_anonymous_quotas(value).unwrap_err().to_string();
            assert!(
                shown.contains("RATELIMIT_TIERS__ANONYMOUS__QUOTAS") && shown.contains("backslash"),
                "{shown}"
            );
            assert!(!shown.contains(value), "{shown}");
        }
        // Nesting deep enough to overflow figment's parser's stack: refused.
        let e = load_with_anonymous_quotas(&"[".repeat(5_000)).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
        // Brackets inside strings do not count; a list of tables is 2 deep.
        assert_eq!(super::nesting(r#"[{ a = "[[\"[" }, { b = 1 }]"#), 2);
        // Escapes in ASCII values are still read.
        let c = load_with_anonymous_quotas(r#"[{ limit = 7, period = "1\u0073" }]"#).unwrap();
        let shown: serde_json::Value =
            serde_json::from_str(&c.redacted_json().to_string()).unwrap();
        assert_eq!(
            shown["tiers"]["anonymous"]["quotas"],
            serde_json::json!([{ "limit": 7, "period": "1s" }])
        );
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
