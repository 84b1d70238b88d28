//! [`RuleError`]: a rule, a document or a request that cannot be used, by field.

use std::fmt;

/// What is wrong, and with which field: answered as a 400 naming `field`. The reason never
/// echoes a value that may be a secret (an API key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    field: String,
    reason: String,
}

impl RuleError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// The field, as a JSON path (`quotas[0].limit`, `rules[3].match`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same error about a field of the `index`th rule of a list.
    #[must_use]
    pub fn in_rule(self, index: usize) -> Self {
        Self {
            field: format!("rules[{index}].{}", self.field),
            reason: self.reason,
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for RuleError {}

/// Reads one `T` from JSON, naming the field a mistake is in.
///
/// # Errors
/// A [`RuleError`] whose field is the JSON path of the mistake (`body` for malformed JSON).
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RuleError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => RuleError::new(path, inner),
            serde_json::error::Category::Data => RuleError::new("body", inner),
            _ => RuleError::new("body", format_args!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| RuleError::new("body", format_args!("malformed JSON: {e}")))?;
    Ok(value)
}
