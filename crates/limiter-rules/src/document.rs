//! [`Document`]: the whole rule set as stored, versioned, and the edits the admin API makes.

use serde::{Deserialize, Serialize};

use crate::rule::{Rule, RuleSpec};
use crate::set::RuleSet;
use crate::{RuleError, from_json};

/// The most rules one document may hold: enough for one rule per abusive key or network
/// of a large API, small enough that every worker holds and re-indexes it at once.
pub const MAX_RULES: usize = 10_000;

/// Every rule, the fleet-wide enforcement switch, and a version that every change raises
/// by one: the `ETag` of the admin API, and what workers compare to see a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Raised by one by every write.
    pub version: u64,
    /// False while the kill switch is on.
    #[serde(default = "enabled")]
    pub enforce: bool,
    /// The rules, in the order they were added.
    pub rules: Vec<Rule>,
}

fn enabled() -> bool {
    true
}

impl Default for Document {
    fn default() -> Self {
        Self {
            version: 0,
            enforce: true,
            rules: Vec::new(),
        }
    }
}

/// A change the admin API asks of a document.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Adds a rule whose name is new.
    Add(Rule),
    /// Replaces the rule of this name (it must exist) with another of the same name.
    Replace(Rule),
    /// Removes the rule of this name.
    Remove(String),
    /// Replaces every rule (an import), keeping the enforcement switch unless given.
    ReplaceAll {
        /// The new rules.
        rules: Vec<Rule>,
        /// The switch, if the import sets it.
        enforce: Option<bool>,
    },
    /// Turns enforcement on or off fleet-wide.
    Enforce(bool),
}

/// Why an edit cannot be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditError {
    /// No rule of that name.
    NotFound,
    /// A rule of that name exists already.
    Duplicate,
    /// The result would be invalid.
    Invalid(RuleError),
}

impl Document {
    /// A document from JSON, checked: unique names, at most [`MAX_RULES`].
    ///
    /// # Errors
    /// A [`RuleError`] naming the field (`rules[3].match`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, RuleError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            version: u64,
            #[serde(default = "enabled")]
            enforce: bool,
            rules: Vec<RuleSpec>,
        }
        let stored: Stored = from_json(bytes)?;
        let rules = rules_from_specs(stored.rules)?;
        Ok(Self {
            version: stored.version,
            enforce: stored.enforce,
            rules,
        })
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A document of valid rules always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The rule named `name`.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name() == name)
    }

    /// The rules indexed for matching.
    pub fn to_set(&self) -> RuleSet {
        RuleSet::new(self.version, self.enforce, self.rules.iter().cloned())
    }

    /// The document after `edit`, one version later; `self` is unchanged.
    ///
    /// # Errors
    /// An [`EditError`]; nothing is changed.
    pub fn apply(&self, edit: Edit) -> Result<Document, EditError> {
        let mut next = self.clone();
        next.version = self.version.checked_add(1).ok_or_else(|| {
            EditError::Invalid(RuleError::new("version", "the stored version cannot grow"))
        })?;
        match edit {
            Edit::Add(rule) => {
                if self.get(rule.name()).is_some() {
                    return Err(EditError::Duplicate);
                }
                if self.rules.len() >= MAX_RULES {
                    return Err(EditError::Invalid(RuleError::new(
                        "rules",
                        format_args!("at most {MAX_RULES} rules"),
                    )));
                }
                next.rules.push(rule);
            }
            Edit::Replace(rule) => {
                let slot = next
                    .rules
                    .iter_mut()
                    .find(|r| r.name() == rule.name())
                    .ok_or(EditError::NotFound)?;
                *slot = rule;
            }
            Edit::Remove(name) => {
                let before = next.rules.len();
                next.rules.retain(|r| r.name() != name);
                if next.rules.len() == before {
                    return Err(EditError::NotFound);
                }
            }
            Edit::ReplaceAll { rules, enforce } => {
                check_names(&rules).map_err(EditError::Invalid)?;
                next.rules = rules;
                next.enforce = enforce.unwrap_or(self.enforce);
            }
            Edit::Enforce(on) => next.enforce = on,
        }
        Ok(next)
    }
}

/// Rules from their specs, each validated, the names unique.
///
/// # Errors
/// A [`RuleError`] naming the rule by index (`rules[3].quotas`).
pub fn rules_from_specs(specs: Vec<RuleSpec>) -> Result<Vec<Rule>, RuleError> {
    let rules = specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| spec.into_rule().map_err(|e| e.in_rule(i)))
        .collect::<Result<Vec<_>, _>>()?;
    check_names(&rules)?;
    Ok(rules)
}

fn check_names(rules: &[Rule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::new(
            "rules",
            format_args!("{} rules, at most {MAX_RULES}", rules.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if !seen.insert(rule.name()) {
            return Err(RuleError::new(
                format!("rules[{i}].name"),
                "a rule of this name comes earlier",
            ));
        }
    }
    Ok(())
}
