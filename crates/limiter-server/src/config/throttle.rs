//! `[throttle]`: when a worker under pressure tightens chosen limits, and by how much.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Load-aware throttling: above `cpu_percent` or `memory_percent` for `hold_ms`, the
/// policies named in `keep_percent` (tiers by name, or rules) keep only that share of
/// their limits; below both `relax_*` thresholds for `relax_ms`, they get it all back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleSection {
    /// Off by default.
    pub enabled: bool,
    /// CPU used by this process, in percent of every core, above which pressure counts.
    /// Default 85.
    pub cpu_percent: u8,
    /// Memory used by this process, in percent of the machine's, above which pressure
    /// counts. Default 90.
    pub memory_percent: u8,
    /// The p99 of this worker's Redis checks over a sample, in ms, above which pressure
    /// counts. Default 0: Redis latency is not a pressure.
    pub redis_p99_ms: u64,
    /// The p99 below which (with CPU and memory below theirs) pressure is gone. Default 0.
    pub relax_redis_p99_ms: u64,
    /// Pressure above a threshold this long (ms) turns throttling on. Default 5,000.
    pub hold_ms: u64,
    /// CPU below which, with memory below `relax_memory_percent`, pressure is gone.
    /// Default 60.
    pub relax_cpu_percent: u8,
    /// Memory below which, with CPU below `relax_cpu_percent`, pressure is gone. Default 80.
    pub relax_memory_percent: u8,
    /// Pressure gone this long (ms) turns throttling off. Default 30,000.
    pub relax_ms: u64,
    /// How often the process's CPU and memory are sampled (ms). Default 1,000.
    pub sample_ms: u64,
    /// Policy (tier or rule) name → the percent of its limit kept while throttling, 1 to 99.
    /// Default `anonymous = 50`, `api_key = 80`; premium and admin untouched.
    pub keep_percent: BTreeMap<String, u8>,
}

impl Default for ThrottleSection {
    fn default() -> Self {
        Self {
            enabled: false,
            cpu_percent: 85,
            memory_percent: 90,
            redis_p99_ms: 0,
            relax_redis_p99_ms: 0,
            hold_ms: 5_000,
            relax_cpu_percent: 60,
            relax_memory_percent: 80,
            relax_ms: 30_000,
            sample_ms: 1_000,
            keep_percent: BTreeMap::from([
                ("anonymous".to_owned(), 50),
                ("api_key".to_owned(), 80),
            ]),
        }
    }
}

impl ThrottleSection {
    /// Checks every bound, naming its key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("throttle.cpu_percent", self.cpu_percent),
            ("throttle.memory_percent", self.memory_percent),
            ("throttle.relax_cpu_percent", self.relax_cpu_percent),
            ("throttle.relax_memory_percent", self.relax_memory_percent),
        ] {
            if !(1..=100).contains(&value) {
                return Err(ConfigError::field(key, "must be 1 to 100"));
            }
        }
        if self.relax_cpu_percent > self.cpu_percent {
            return Err(ConfigError::field(
                "throttle.relax_cpu_percent",
                "must not be above cpu_percent (the band between them is what keeps it from flapping)",
            ));
        }
        if self.relax_memory_percent > self.memory_percent {
            return Err(ConfigError::field(
                "throttle.relax_memory_percent",
                "must not be above memory_percent",
            ));
        }
        if self.redis_p99_ms > 0 && !(1..=self.redis_p99_ms).contains(&self.relax_redis_p99_ms) {
            return Err(ConfigError::field(
                "throttle.relax_redis_p99_ms",
                "must be 1 to redis_p99_ms when redis_p99_ms is set",
            ));
        }
        if self.redis_p99_ms > 60_000 {
            return Err(ConfigError::field(
                "throttle.redis_p99_ms",
                "must be at most 60,000",
            ));
        }
        if !(100..=3_600_000).contains(&self.sample_ms) {
            return Err(ConfigError::field(
                "throttle.sample_ms",
                "must be 100 to 3,600,000",
            ));
        }
        for (key, value) in [
            ("throttle.hold_ms", self.hold_ms),
            ("throttle.relax_ms", self.relax_ms),
        ] {
            if value > 86_400_000 {
                return Err(ConfigError::field(
                    key,
                    "must be at most 86,400,000 (a day)",
                ));
            }
        }
        for (name, keep) in &self.keep_percent {
            if !(1..=99).contains(keep) {
                return Err(ConfigError::field(
                    &format!("throttle.keep_percent.{name}"),
                    "must be 1 to 99: the percent of the limit kept while throttling",
                ));
            }
        }
        Ok(())
    }
}
