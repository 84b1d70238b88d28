//! The fallback's settings: plain serde data an application embeds (`ratelimitd`'s
//! `[fallback]` section), validated by [`FallbackConfig::validate`].

use std::time::Duration;

use limiter_core::Error;
use serde::{Deserialize, Serialize};

/// What to answer while the primary is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutagePolicy {
    /// Decide in the in-process limiter, on this worker's share of each quota.
    #[default]
    Fallback,
    /// Admit every request (fail open).
    Allow,
    /// Refuse every request (fail closed), asking to retry after one probe interval.
    Deny,
}

/// Settings of a [`Fallback`](crate::Fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// Longest wait for the primary on any check. Default 50 ms. In config files:
    /// `deadline_ms`.
    #[serde(rename = "deadline_ms", with = "limiter_core::millis")]
    pub deadline: Duration,
    /// How often an open circuit probes the primary. Default 1 s. In config files:
    /// `probe_interval_ms`.
    #[serde(rename = "probe_interval_ms", with = "limiter_core::millis")]
    pub probe_interval: Duration,
    /// What to answer while the primary is unavailable. Default `fallback`.
    pub outage: OutagePolicy,
    /// Workers sharing the limit; in fallback each enforces `⌈limit / expected_workers⌉`.
    /// Default 1.
    pub expected_workers: u32,
    /// Longest wait for the primary at start-up ([`Fallback::warm_up`](crate::Fallback::warm_up):
    /// opening every connection, running the script once), the one bound on it. Default 2 s.
    /// In config files: `warm_up_ms`.
    #[serde(rename = "warm_up_ms", with = "limiter_core::millis")]
    pub warm_up: Duration,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            probe_interval: Duration::from_secs(1),
            outage: OutagePolicy::Fallback,
            expected_workers: 1,
            warm_up: Duration::from_secs(2),
        }
    }
}

impl FallbackConfig {
    /// Checks what types cannot, naming the key as a `[fallback]` section of a file would.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a zero deadline, probe interval, warm-up or worker count.
    pub fn validate(&self) -> Result<(), Error> {
        for (key, d) in [
            ("deadline_ms", self.deadline),
            ("probe_interval_ms", self.probe_interval),
            ("warm_up_ms", self.warm_up),
        ] {
            if d.is_zero() {
                return Err(Error::config(format_args!(
                    "fallback.{key}: must be above zero"
                )));
            }
        }
        if self.expected_workers == 0 {
            return Err(Error::config(
                "fallback.expected_workers: must be at least 1",
            ));
        }
        Ok(())
    }
}
