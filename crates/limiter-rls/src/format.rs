//! The reference service's YAML, as written: one `domain` per file and its nested
//! `descriptors`. Unknown keys are refused, so a misspelt `shadow_mod` is not silently a
//! limit enforced.

use serde::Deserialize;

/// One file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) domain: String,
    #[serde(default)]
    pub(crate) descriptors: Vec<Descriptor>,
}

/// One entry of the tree: a key, optionally a value, and a limit or more entries below.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Descriptor {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub(crate) descriptors: Vec<Descriptor>,
    #[serde(default)]
    pub(crate) shadow_mode: bool,
    #[serde(default)]
    pub(crate) detailed_metric: bool,
}

/// A limit: `requests_per_unit` per `unit`, or `unlimited`; `name` is what `replaces`
/// refers to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimit {
    #[serde(default)]
    pub(crate) unit: Option<String>,
    #[serde(default)]
    pub(crate) requests_per_unit: Option<u32>,
    #[serde(default)]
    pub(crate) unlimited: bool,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) replaces: Vec<Replace>,
}

/// `replaces: [{name: ...}]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Replace {
    pub(crate) name: String,
}
