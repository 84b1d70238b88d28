//! The metrics every check records, through the `metrics` facade (free when no recorder is
//! installed). Labels are tiers, outcomes and backends: a handful of fixed values, never a
//! client.

use std::time::Duration;

use limiter_core::{Decision, Error, Tier};

/// Counter of checks, labelled `tier`, `outcome` (`allowed`, `denied`, `error`) and
/// `backend` (`redis`, `memory`, `none`).
pub const CHECKS_TOTAL: &str = "ratelimit_checks_total";
/// Histogram of the time a backend took to decide, in seconds, labelled `backend`.
pub const BACKEND_LATENCY: &str = "ratelimit_backend_latency_seconds";

/// Records a decision for `tier` that took `latency` (zero when no backend was asked).
pub fn record_decision(tier: Tier, decision: &Decision, latency: Duration) {
    let outcome = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    let backend = decision.backend.as_str();
    metrics::counter!(CHECKS_TOTAL, "tier" => tier.as_str(), "outcome" => outcome, "backend" => backend)
        .increment(1);
    if !latency.is_zero() {
        metrics::histogram!(BACKEND_LATENCY, "backend" => backend).record(latency.as_secs_f64());
    }
}

/// Records a check for `tier` that could not be decided.
pub fn record_error(tier: Tier, _error: &Error, latency: Duration) {
    metrics::counter!(CHECKS_TOTAL, "tier" => tier.as_str(), "outcome" => "error", "backend" => "none")
        .increment(1);
    metrics::histogram!(BACKEND_LATENCY, "backend" => "error").record(latency.as_secs_f64());
}
