//! [`ConfigError`]: a descriptor configuration that cannot be used, naming where.

use std::fmt;

/// A descriptor configuration refused: which file, which field, and why.
///
/// The message never quotes a descriptor value a request sent; it may quote the file's own
/// text (its keys and values are the operator's).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The file (or `-` for text parsed without one).
    pub origin: String,
    /// Where in it: `descriptors[0].rate_limit.unit`; empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.as_str() {
            "" => write!(f, "{}: {}", self.origin, self.reason),
            field => write!(f, "{}: {field}: {}", self.origin, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}
