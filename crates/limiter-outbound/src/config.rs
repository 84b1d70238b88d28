//! [`OutboundConfig`]: hosts, roles, quotas and waits, from a file (TOML or YAML), the
//! environment and overrides, in that order of precedence (lowest first), validated with
//! errors that name the key.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use limiter_core::{MAX_QUOTAS, Quota};
use serde::{Deserialize, Serialize};

/// The environment variables' prefix: `LIMITER_OUTBOUND_DEFAULTS__MAX_DELAY=5s`.
pub const ENV_PREFIX: &str = "LIMITER_OUTBOUND_";

/// The longest `max_delay` accepted: a caller that would wait longer should not wait.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(3600);

/// Everything the outbound limiter is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// What hosts not listed get, and what listed ones inherit.
    pub defaults: Defaults,
    /// Hosts with limits of their own.
    pub hosts: Vec<HostConfig>,
    /// Fleet-wide cap on requests outstanding to all hosts together; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight_total: Option<u32>,
    /// How long an in-flight lease outlives a worker that died holding it (renewed while
    /// its request lives). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            defaults: Defaults::default(),
            hosts: Vec::new(),
            in_flight_total: None,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// The limits of hosts not listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// The quotas of each host not listed. Default 5 per second.
    pub quotas: Vec<Quota>,
    /// Longest wait for a turn before a request fails with [`TooLongWait`]. Default 30 s.
    ///
    /// [`TooLongWait`]: crate::TooLongWait
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Fleet-wide cap on requests outstanding to each host not listed; unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
}

impl Default for Defaults {
    #[allow(
        clippy::expect_used,
        reason = "a constant quota, valid by construction; `defaults_are_valid` runs this"
    )]
    fn default() -> Self {
        Self {
            quotas: vec![Quota::per_second(5).expect("5 per second is a quota")],
            max_delay: Duration::from_secs(30),
            in_flight: None,
        }
    }
}

/// One host's limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `host` or `host:port`, as in the request's URL (a `host:port` entry wins over a
    /// `host` one for that port).
    pub host: String,
    /// The host's quotas (all its roles share them); default: `[defaults] quotas`.
    #[serde(default)]
    pub quotas: Vec<Quota>,
    /// Longest wait for this host; default: `[defaults] max_delay`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay: Option<Duration>,
    /// Fleet-wide cap on requests outstanding to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Additive increase, multiplicative decrease of the host's rate on 429s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aimd: Option<Aimd>,
    /// Roles with quotas of their own, on top of the host's.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
}

/// A role of a host: its own quotas (checked with the host's), its own wait, and the paths
/// that name it when a request does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role's name (`metadata`, `landing`, `artifact`).
    pub role: String,
    /// The role's quotas.
    pub quotas: Vec<Quota>,
    /// Longest wait for this role; default: the host's.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay: Option<Duration>,
    /// Path prefixes (`/download/`) that make a request this role when it names none.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// AIMD: the host's rate, shared by the fleet, multiplied by `decrease` on a 429 or 503 (at
/// most once a second, so one burst of refusals counts once) and raised by `step` after
/// `after` answers in a row that were neither; always between `min` and `max` requests per
/// second, starting at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aimd {
    /// The lowest rate.
    pub min: f64,
    /// The highest rate, and the first.
    pub max: f64,
    /// The factor a refusal multiplies the rate by. Default 0.5.
    #[serde(default = "half")]
    pub decrease: f64,
    /// What a run of good answers adds. Default 1 request per second.
    #[serde(default = "one")]
    pub step: f64,
    /// How many good answers in a row make a run. Default 10.
    #[serde(default = "ten")]
    pub after: u32,
}

fn half() -> f64 {
    0.5
}

fn one() -> f64 {
    1.0
}

fn ten() -> u32 {
    10
}

impl Eq for Aimd {}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid outbound configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

fn refuse(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

impl OutboundConfig {
    /// The configuration from `file` (TOML, or YAML by its `.yaml`/`.yml` extension), then
    /// `LIMITER_OUTBOUND_*` variables (`__` between a section and its key), then
    /// `overrides` (say, command-line flags, serialised with only the keys given), validated.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key: a missing file, a value of the wrong type, an
    /// unknown key, a value out of range.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        Self::load_with(file, Env::prefixed(ENV_PREFIX).split("__"), overrides)
    }

    fn load_with(
        file: Option<&Path>,
        env: Env,
        overrides: impl Serialize,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(OutboundConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(refuse(
                    "config",
                    format_args!("{} is not a readable file", path.display()),
                ));
            }
            let yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            figment = if yaml {
                figment.merge(Yaml::file_exact(path))
            } else {
                figment.merge(Toml::file_exact(path))
            };
        }
        let config: OutboundConfig = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| {
                let key = e.path.join(".");
                let mut why = e.kind.to_string();
                if let Some(source) = &e.metadata {
                    // Serialized providers are named by their type: say what they are.
                    let from = if source.name.contains("::") {
                        "the overrides"
                    } else {
                        &*source.name
                    };
                    why = format!("{why} (from {from})");
                }
                if key.is_empty() {
                    ConfigError(why)
                } else {
                    refuse(&key, why)
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        quotas("defaults.quotas", &self.defaults.quotas, false)?;
        delay("defaults.max_delay", Some(self.defaults.max_delay))?;
        for (key, cap) in [
            ("defaults.in_flight", self.defaults.in_flight),
            ("in_flight_total", self.in_flight_total),
        ] {
            if cap == Some(0) {
                return Err(refuse(key, "must be at least 1"));
            }
        }
        if self.lease_ttl < Duration::from_millis(300) || self.lease_ttl > MAX_DELAY_LIMIT {
            return Err(refuse("lease_ttl", "must be 300ms to 1h"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let at = format!("hosts[{i}]");
            let name_ok = !host.host.is_empty()
                && host.host.len() <= 255
                && host.host.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'-' | b':' | b'_' | b'[' | b']')
                });
            if !name_ok {
                return Err(refuse(
                    &format!("{at}.host"),
                    "must be a host name or host:port",
                ));
            }
            if !seen.insert(host.host.to_ascii_lowercase()) {
                return Err(refuse(&format!("{at}.host"), "listed twice"));
            }
            quotas(&format!("{at}.quotas"), &host.quotas, true)?;
            delay(&format!("{at}.max_delay"), host.max_delay)?;
            if host.in_flight == Some(0) {
                return Err(refuse(&format!("{at}.in_flight"), "must be at least 1"));
            }
            if let Some(aimd) = host.aimd {
                let ok = aimd.min.is_finite()
                    && aimd.max.is_finite()
                    && aimd.min >= 0.01
                    && aimd.min <= aimd.max
                    && aimd.max <= 1_000_000.0;
                if !ok {
                    return Err(refuse(
                        &format!("{at}.aimd"),
                        "needs 0.01 <= min <= max <= 1000000 (requests per second)",
                    ));
                }
                if !(aimd.decrease > 0.0 && aimd.decrease < 1.0) {
                    return Err(refuse(
                        &format!("{at}.aimd.decrease"),
                        "must be between 0 and 1",
                    ));
                }
                if !(aimd.step.is_finite() && aimd.step > 0.0) || aimd.after == 0 {
                    return Err(refuse(
                        &format!("{at}.aimd"),
                        "step must be above 0 and after at least 1",
                    ));
                }
            }
            let mut roles = std::collections::HashSet::new();
            for (j, role) in host.roles.iter().enumerate() {
                let at = format!("{at}.roles[{j}]");
                let role_ok = (1..=64).contains(&role.role.len())
                    && role
                        .role
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !role_ok || !roles.insert(role.role.as_str()) {
                    return Err(refuse(
                        &format!("{at}.role"),
                        "must be 1 to 64 of A-Z a-z 0-9 _ - ., unique per host",
                    ));
                }
                quotas(&format!("{at}.quotas"), &role.quotas, false)?;
                delay(&format!("{at}.max_delay"), role.max_delay)?;
                if let Some(k) = role.paths.iter().position(|p| !p.starts_with('/')) {
                    return Err(refuse(
                        &format!("{at}.paths[{k}]"),
                        "a path prefix starts with /",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn quotas(key: &str, quotas: &[Quota], may_be_empty: bool) -> Result<(), ConfigError> {
    if quotas.is_empty() && !may_be_empty {
        return Err(refuse(key, "give 1 to 8 quotas"));
    }
    if quotas.len() > MAX_QUOTAS {
        return Err(refuse(
            key,
            format_args!("{} quotas, at most {MAX_QUOTAS}", quotas.len()),
        ));
    }
    Ok(())
}

fn delay(key: &str, delay: Option<Duration>) -> Result<(), ConfigError> {
    match delay {
        Some(d) if d > MAX_DELAY_LIMIT => Err(refuse(key, "at most 1h")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        OutboundConfig::default().validate().unwrap();
    }
}
