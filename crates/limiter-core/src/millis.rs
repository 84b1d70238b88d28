//! Durations in configuration files as whole milliseconds (`deadline_ms = 50`), for the
//! libraries' serde configs: `#[serde(with = "limiter_core::millis")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as whole milliseconds (saturating).
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads whole milliseconds.
///
/// # Errors
/// The deserializer's, for anything but an unsigned integer.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}
