//! `[admin]`: who may use the admin API, and the bounds of what the fleet records.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The shortest admin token accepted, in bytes: long enough that guessing one at the rate
/// failed attempts are allowed is hopeless.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// One admin token, stored by its SHA-256 (`ratelimitd hash-key` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenEntry {
    /// Who holds it: recorded in the audit log with every change it makes.
    pub name: String,
    /// 64 hex digits: the SHA-256 of the token.
    pub sha256: String,
}

/// The admin API's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Tokens by SHA-256, with names for the audit log.
    pub tokens: Vec<AdminTokenEntry>,
    /// Failed authentications allowed per peer address and minute; beyond, 429. Default 10.
    pub failed_attempts_per_minute: u64,
    /// The most recent violations kept fleet-wide. Default 10,000.
    pub violations_max: usize,
    /// Violations one worker records per second at most (the rest are counted in the
    /// stats, not listed), so a flood of denials costs Redis one bounded write a second.
    /// Default 1,000.
    pub violations_per_second: usize,
    /// Audit log entries kept. Default 10,000.
    pub audit_max: usize,
    /// A worker not heard from for this long (it beats every second) leaves the list of
    /// live workers and stops counting in the fleet's size. Default 5,000; at least 2,000.
    pub heartbeat_ttl_ms: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            failed_attempts_per_minute: 10,
            violations_max: 10_000,
            violations_per_second: 1_000,
            audit_max: 10_000,
            heartbeat_ttl_ms: 5_000,
        }
    }
}

impl AdminSection {
    /// Checks the tokens and bounds; `token` is the one given by flag or environment.
    pub(crate) fn validate(&self, token: Option<&str>) -> Result<(), ConfigError> {
        if token.is_some_and(|t| t.len() < MIN_ADMIN_TOKEN_LEN) {
            return Err(ConfigError::field(
                "admin_token",
                format_args!("must be at least {MIN_ADMIN_TOKEN_LEN} bytes"),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, entry) in self.tokens.iter().enumerate() {
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&entry.sha256, &mut hash).is_err() {
                return Err(ConfigError::field(
                    &format!("admin.tokens[{i}].sha256"),
                    "must be 64 hex digits: the SHA-256 of the token (ratelimitd hash-key prints it)",
                ));
            }
            let name_ok = (1..=64).contains(&entry.name.len())
                && entry.name.bytes().all(|b| b.is_ascii_graphic());
            if !name_ok || !names.insert(entry.name.as_str()) {
                return Err(ConfigError::field(
                    &format!("admin.tokens[{i}].name"),
                    "must be 1 to 64 visible characters, unique",
                ));
            }
        }
        limiter_core::Quota::per_minute(self.failed_attempts_per_minute)
            .map_err(|e| ConfigError::refused("admin.failed_attempts_per_minute", e))?;
        for (field, value) in [
            (
                "admin.failed_attempts_per_minute",
                self.failed_attempts_per_minute,
            ),
            ("admin.violations_max", self.violations_max as u64),
            (
                "admin.violations_per_second",
                self.violations_per_second as u64,
            ),
            ("admin.audit_max", self.audit_max as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::field(field, "must be at least 1"));
            }
        }
        if !(2_000..=3_600_000).contains(&self.heartbeat_ttl_ms) {
            return Err(ConfigError::field(
                "admin.heartbeat_ttl_ms",
                "must be 2,000 to 3,600,000 (workers beat every second)",
            ));
        }
        if self.violations_max > 10_000_000 || self.audit_max > 10_000_000 {
            return Err(ConfigError::field(
                "admin",
                "violations_max and audit_max are at most 10,000,000",
            ));
        }
        Ok(())
    }

    /// The tokens that open the admin API: `(name, SHA-256)`, the flag's first.
    pub(crate) fn hashed_tokens(&self, token: Option<&str>) -> Vec<(String, [u8; 32])> {
        use sha2::{Digest, Sha256};
        let mut tokens: Vec<(String, [u8; 32])> = token
            .map(|t| {
                (
                    "admin-token".to_owned(),
                    Sha256::digest(t.as_bytes()).into(),
                )
            })
            .into_iter()
            .collect();
        for entry in &self.tokens {
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&entry.sha256, &mut hash).is_ok() {
                tokens.push((entry.name.clone(), hash));
            }
        }
        tokens
    }
}
