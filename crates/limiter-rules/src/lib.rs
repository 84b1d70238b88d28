//! Live rate-limit rules: which limit applies to a request, decided from rules an operator
//! changes at run time.
//!
//! A [`Rule`] has a scope (every client, a tier, a network, one API key), optionally
//! narrowed to a resource, and a policy; it is enforced, tried in shadow, or off, and may
//! be rolled out to a share of clients. A [`RuleSet`] indexes rules so that resolving a
//! request is a few hash lookups however many rules there are, and applies one documented
//! precedence (see [`set`]). [`Rules`] is the live handle a service shares between its
//! request path and whatever reloads the rules.
//!
//! Matching is pure; [`decide()`] asks any [`RateLimiter`](limiter_core::RateLimiter) for
//! the resolved policies.
//!
//! ```
//! use limiter_core::{ClientKeyHasher, Tier};
//! use limiter_rules::{Query, RuleSpec, RuleSet, from_json};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec: RuleSpec = from_json(br#"{"name": "login-ip", "scope": "ip",
//!     "match": "203.0.113.0/24", "resource": "login",
//!     "quotas": [{"limit": 5, "period": "1m"}]}"#)?;
//! let rules = RuleSet::new(1, true, [spec.into_rule()?]);
//!
//! let hasher = ClientKeyHasher::new(b"a deployment secret of 16+ bytes")?;
//! let query = Query {
//!     tier: Tier::Anonymous,
//!     client: hasher.hash("ip:203.0.113.7"),
//!     ip: Some("203.0.113.7".parse()?),
//!     api_key: None,
//!     resource: Some("login"),
//! };
//! assert_eq!(rules.resolve(&query).rule.map(|r| r.name()), Some("login-ip"));
//! let elsewhere = Query { resource: Some("search"), ..query };
//! assert!(rules.resolve(&elsewhere).rule.is_none()); // the tier's policy decides
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

mod decide;
mod document;
mod error;
mod rule;
pub mod set;
mod store;

pub use decide::{Observe, Operation, ShadowVerdict, Verdict, Violation, decide, finish};
pub use document::{Document, Edit, EditError, MAX_RULES, rules_from_specs};
pub use error::{RuleError, from_json};
pub use rule::{
    KeyHash, MAX_API_KEY_LEN, MAX_RESOURCE_LEN, Mode, Resource, Rule, RuleSpec, Scope,
    validate_resource,
};
pub use set::{Query, Resolution, RuleSet, Treatment};
pub use store::{Change, FileStore, RuleStore, StoreError};

/// The rules in force, shared by the request path (which reads them without locking) and
/// whatever loads new ones. Cloning shares them.
#[derive(Clone, Default)]
pub struct Rules(Arc<ArcSwap<RuleSet>>);

impl Rules {
    /// Live rules, starting from `set`.
    pub fn new(set: RuleSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(set)))
    }

    /// The rules now: a snapshot that later changes do not touch.
    pub fn current(&self) -> Arc<RuleSet> {
        self.0.load_full()
    }

    /// A cheap guard on the rules now, for one request.
    pub fn load(&self) -> arc_swap::Guard<Arc<RuleSet>> {
        self.0.load()
    }

    /// Puts `set` in force unless it is older than the rules in force; true if it was.
    pub fn replace(&self, set: RuleSet) -> bool {
        let set = Arc::new(set);
        let mut replaced = false;
        self.0.rcu(|now| {
            replaced = set.version() >= now.version();
            if replaced {
                Arc::clone(&set)
            } else {
                Arc::clone(now)
            }
        });
        replaced
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.0.load();
        f.debug_struct("Rules")
            .field("version", &now.version())
            .field("rules", &now.len())
            .field("enforce", &now.enforce())
            .finish()
    }
}
