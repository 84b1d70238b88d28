//! The backend's settings, and URLs shown without their passwords.

use std::fmt;
use std::time::Duration;

use limiter_core::Error;
use serde::{Deserialize, Serialize};

/// Settings of a [`RedisLimiter`](crate::RedisLimiter). Every wait is bounded by default: no
/// call waits forever.
///
/// Plain serde data, so an application embeds it in its own configuration (`ratelimitd`'s
/// `[redis]` section): durations are whole milliseconds under `…_ms` keys, and the URL is
/// not a key (the application names the Redis; [`RedisLimiter::new`](crate::RedisLimiter::new)
/// validates everything).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` with TLS support compiled in),
    /// `redis+cluster://…` or `redis+sentinel://…` ([`Topology`](crate::Topology)).
    #[serde(skip)]
    pub url: String,
    /// Multiplexed connections kept open; checks are spread over them. Default 4.
    pub connections: usize,
    /// Most checks sent in one script call. Each connection carries one call at a time; the
    /// checks that arrive while it is in flight go together in the next, so a lone check is
    /// sent at once and a busy worker sends fewer, larger calls. 1 sends every check as its
    /// own call, concurrently. Default 64. A Redis Cluster sends every check on its own
    /// (checks of different clients live on different slots). So must anything that shards
    /// keys behind a single `redis://` address (a proxy such as Envoy's or twemproxy, a
    /// clustered database behind one endpoint): set 1 there, or batches that span shards
    /// are refused.
    pub max_batch: usize,
    /// Longest wait for the pool to hand out a new connection. Default 50 ms.
    #[serde(rename = "pool_wait_timeout_ms", with = "limiter_core::millis")]
    pub pool_wait_timeout: Duration,
    /// Longest wait to open a connection. Default 250 ms.
    #[serde(rename = "connect_timeout_ms", with = "limiter_core::millis")]
    pub connect_timeout: Duration,
    /// Longest wait for a reply on an open connection. Default 250 ms.
    #[serde(rename = "response_timeout_ms", with = "limiter_core::millis")]
    pub response_timeout: Duration,
    /// Deadline of a whole check: connecting, the script and its reply. Default 500 ms. A
    /// call abandoned after a fifth of it (at most 10 ms), by this deadline or a caller's,
    /// marks its connection as stalled, and the connection is replaced.
    #[serde(rename = "timeout_ms", with = "limiter_core::millis")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    /// The defaults, with no URL yet.
    fn default() -> Self {
        Self {
            url: String::new(),
            connections: 4,
            max_batch: 64,
            pool_wait_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(250),
            timeout: Duration::from_millis(500),
        }
    }
}

impl RedisConfig {
    /// The defaults, for the Redis at `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks every setting but the URL ([`validate_url`](Self::validate_url) checks that),
    /// naming the key as a `[redis]` section of a file would: an application can refuse a bad
    /// section even when it does not connect to Redis.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad key.
    pub fn validate(&self) -> Result<(), Error> {
        for (key, n) in [
            ("connections", self.connections),
            ("max_batch", self.max_batch),
        ] {
            if n == 0 {
                return Err(Error::config(format_args!(
                    "redis.{key}: must be at least 1"
                )));
            }
        }
        for (key, d) in [
            ("pool_wait_timeout_ms", self.pool_wait_timeout),
            ("connect_timeout_ms", self.connect_timeout),
            ("response_timeout_ms", self.response_timeout),
            ("timeout_ms", self.timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format_args!(
                    "redis.{key}: must be at least 1 ms"
                )));
            }
        }
        Ok(())
    }

    /// Checks the URL as [`RedisLimiter::new`](crate::RedisLimiter::new) reads it (its
    /// scheme, every node, a Sentinel's master), without connecting: whatever passes, the
    /// constructor accepts.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying what is wrong, the password redacted.
    pub fn validate_url(&self) -> Result<(), Error> {
        crate::topology::Source::new(self).map(drop)
    }
}

/// Prints the URL without its password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("connections", &self.connections)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// `url` with every password replaced by `<redacted>`, for logs and error messages: the
/// user information of `redis://user:password@host` (and of every other scheme), and the
/// `pass` and `password` parameters of `redis+unix:///path?pass=…`.
pub fn redacted(url: &str) -> String {
    // The query is what follows the first `?` after the user information (whose password
    // may hold a `?`), or the first `?` at all when an `@` is only in the query (a password
    // there may hold one too). Its password parameters go first, then the user information.
    let after_userinfo = url.rfind('@').map_or(0, |at| at + 1);
    let query = url[after_userinfo..]
        .find('?')
        .map(|q| after_userinfo + q)
        .or_else(|| url.find('?'));
    let mut out = String::with_capacity(url.len());
    match query {
        Some(q) => {
            out.push_str(&url[..=q]);
            for (n, param) in url[q + 1..].split('&').enumerate() {
                if n > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass")
                            || name.eq_ignore_ascii_case("password") =>
                    {
                        out.push_str(name);
                        out.push_str("=<redacted>");
                    }
                    _ => out.push_str(param),
                }
            }
        }
        None => out.push_str(url),
    }
    match split_userinfo(&out) {
        Some((scheme, _, rest)) => format!("{scheme}://<redacted>@{rest}"),
        None => out,
    }
}

/// `scheme://userinfo@rest` as its three parts, if `url` has user information: everything
/// between `://` and the last `@` (a password may hold `@`, `/` or `?`).
pub(crate) fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            Some((&url[..scheme], &url[scheme + 3..at], &url[at + 1..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_print_their_password() {
        let config = RedisConfig::from_url("redis://worker:s3cret@10.0.0.7:6379/2");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>@10.0.0.7:6379/2"), "{shown}");
    }

    #[test]
    fn every_url_form_is_redacted() {
        for (url, shown) in [
            (
                "redis+unix:///run/redis.sock?db=2&pass=s3cret",
                "redis+unix:///run/redis.sock?db=2&pass=<redacted>",
            ),
            (
                "unix:///run/redis.sock?PASSWORD=s3cret&user=w",
                "unix:///run/redis.sock?PASSWORD=<redacted>&user=w",
            ),
            (
                "redis+unix:///run/redis.sock?pass=s3@cret",
                "redis+unix:///run/redis.sock?pass=<redacted>",
            ),
            (
                "redis+unix:///run/redis.sock?pass=s3?cret&db=1",
                "redis+unix:///run/redis.sock?pass=<redacted>&db=1",
            ),
            (
                "redis://:s3?cret@h:6379/?password=s3cond",
                "redis://<redacted>@h:6379/?password=<redacted>",
            ),
            ("rediss://w:s3cret@h:6380/1", "rediss://<redacted>@h:6380/1"),
            ("redis://:s3?cret@h:6379", "redis://<redacted>@h:6379"),
            (
                "redis+sentinel://w:s3cret@a:1,b:2/m",
                "redis+sentinel://<redacted>@a:1,b:2/m",
            ),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            assert_eq!(redacted(url), shown);
            let config = format!("{:?}", RedisConfig::from_url(url));
            assert!(
                !config.contains("s3") && !config.contains("cret"),
                "{config}"
            );
        }
    }

    #[test]
    fn nonsense_settings_are_refused_naming_the_key() {
        type Spoil = fn(&mut RedisConfig);
        let cases: [(Spoil, &str); 3] = [
            (|c| c.connections = 0, "redis.connections"),
            (|c| c.max_batch = 0, "redis.max_batch"),
            (|c| c.timeout = Duration::ZERO, "redis.timeout_ms"),
        ];
        for (spoil, key) in cases {
            let mut config = RedisConfig::from_url("redis://127.0.0.1:6379");
            spoil(&mut config);
            let err = config.validate().unwrap_err();
            assert!(
                err.is_invalid_input() && err.to_string().contains(key),
                "{err}"
            );
        }
    }

    #[test]
    fn serde_keys_are_milliseconds_and_the_url_is_not_one() {
        let config: RedisConfig =
            toml::from_str("connect_timeout_ms = 100\nmax_batch = 8").unwrap();
        assert_eq!(config.connect_timeout, Duration::from_millis(100));
        assert_eq!((config.max_batch, config.connections), (8, 4));
        assert!(toml::from_str::<RedisConfig>("url = \"redis://h\"").is_err());
    }
}
