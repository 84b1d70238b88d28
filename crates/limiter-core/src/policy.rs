use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bucket::BucketState;
use crate::{Error, Quota};

/// The most quotas one policy may combine (each is one bucket, one Redis key).
pub const MAX_QUOTAS: usize = 8;

/// Who a client is, which decides its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// No credentials: identified by address. Default 100 per minute.
    Anonymous,
    /// A known API key. Default 1000 per minute.
    ApiKey,
    /// A premium API key. Default 5000 per minute.
    Premium,
    /// Operators: unlimited, never touches a backend.
    Admin,
}

impl Tier {
    /// Every tier, in order.
    pub const ALL: [Tier; 4] = [Tier::Anonymous, Tier::ApiKey, Tier::Premium, Tier::Admin];

    /// The tier's name as written in config, the HTTP API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Anonymous => "anonymous",
            Tier::ApiKey => "api_key",
            Tier::Premium => "premium",
            Tier::Admin => "admin",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = Error;

    /// Parses a tier name; the error never echoes the input, which may be hostile.
    fn from_str(s: &str) -> Result<Self, Error> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(Error::UnknownTier)
    }
}

/// A named set of quotas, all checked together: a request must fit every quota, and a
/// request denied by one quota consumes from none. A policy with no quotas is unlimited.
///
/// ```
/// use limiter_core::{Policy, Quota};
/// # fn main() -> Result<(), limiter_core::Error> {
/// let api = Policy::new("api", [Quota::per_second(10)?, Quota::per_hour(5000)?])?;
/// assert_eq!(api.quotas().len(), 2);
/// assert!(Policy::unlimited("admin")?.is_unlimited());
/// assert!(Policy::new("api", []).is_err()); // unlimited must be said, not implied
/// # Ok(())
/// # }
/// ```
///
/// The name is part of every storage key of the policy, together with its quotas, so
/// changing a policy's numbers starts its clients on fresh buckets instead of reading
/// buckets measured in other units.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicySpec", into = "PolicySpec")]
pub struct Policy {
    name: String,
    quotas: Vec<Quota>,
    id: u64,
}

impl Policy {
    /// A policy of one or more quotas.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] when the name is not 1–64 characters of `A-Z a-z 0-9 _ - .`,
    /// or when there are no quotas or more than [`MAX_QUOTAS`].
    pub fn new(
        name: impl Into<String>,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Result<Self, Error> {
        let quotas: Vec<Quota> = quotas.into_iter().collect();
        if quotas.is_empty() {
            return Err(Error::policy(
                "a policy needs at least one quota (use Policy::unlimited for none)",
            ));
        }
        Self::build(name.into(), quotas)
    }

    /// A policy that admits everything without consulting any backend.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] for a bad name, as in [`Policy::new`].
    pub fn unlimited(name: impl Into<String>) -> Result<Self, Error> {
        Self::build(name.into(), Vec::new())
    }

    fn build(name: String, quotas: Vec<Quota>) -> Result<Self, Error> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(Error::policy(
                "name must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'",
            ));
        }
        if quotas.len() > MAX_QUOTAS {
            return Err(Error::policy(format_args!(
                "{} quotas, at most {MAX_QUOTAS} allowed",
                quotas.len()
            )));
        }
        Ok(Self::identified(name, quotas))
    }

    /// The policy with its id; `name` and `quotas` are valid.
    fn identified(name: String, quotas: Vec<Quota>) -> Self {
        let mut digest = Sha256::new();
        digest.update(name.as_bytes());
        for q in &quotas {
            digest.update(format!("|{q}").as_bytes());
        }
        let digest = digest.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self {
            name,
            quotas,
            id: u64::from_le_bytes(id),
        }
    }

    /// One worker's share of this policy when `workers` enforce it without coordination (a
    /// fleet that lost Redis): every quota's [`Quota::share`], under the same name. It
    /// cannot fail, so a fleet share never turns a valid check into an error.
    #[must_use]
    pub fn share(&self, workers: NonZeroU32) -> Policy {
        if workers.get() == 1 {
            return self.clone();
        }
        let quotas = self.quotas.iter().map(|q| q.share(workers)).collect();
        Self::identified(self.name.clone(), quotas)
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quotas, in the order given.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// True when the policy has no quotas: every request passes, no backend is consulted.
    pub fn is_unlimited(&self) -> bool {
        self.quotas.is_empty()
    }

    /// A 64-bit fingerprint of the name and quotas: equal for equal policies, and different,
    /// barring a 2^-64 collision, when anything changes. Backends key buckets by it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// One full bucket per quota at `now`: the state of a client never seen before.
    pub fn full_buckets(&self, now: u64) -> Vec<BucketState> {
        self.quotas
            .iter()
            .map(|q| BucketState::full(q, now))
            .collect()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("quotas", &self.quotas)
            .finish()
    }
}

/// The configuration-file form of a [`Policy`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    name: String,
    #[serde(flatten)]
    limits: LimitSpec,
}

/// What a policy allows, without its name: `quotas = [...]` or `unlimited = true`.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quotas: Vec<Quota>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unlimited: bool,
}

impl LimitSpec {
    fn into_policy(self, name: String) -> Result<Policy, Error> {
        match (self.unlimited, self.quotas.is_empty()) {
            (true, true) => Policy::unlimited(name),
            (false, false) => Policy::new(name, self.quotas),
            (true, false) => Err(Error::policy(format_args!(
                "policy {name:?} is unlimited and also has quotas; choose one"
            ))),
            (false, true) => Err(Error::policy(format_args!(
                "policy {name:?} has no quotas; give at least one or say unlimited = true"
            ))),
        }
    }
}

impl From<Policy> for LimitSpec {
    fn from(p: Policy) -> Self {
        LimitSpec {
            unlimited: p.is_unlimited(),
            quotas: p.quotas,
        }
    }
}

impl TryFrom<PolicySpec> for Policy {
    type Error = Error;

    fn try_from(spec: PolicySpec) -> Result<Self, Error> {
        spec.limits.into_policy(spec.name)
    }
}

impl From<Policy> for PolicySpec {
    fn from(p: Policy) -> Self {
        PolicySpec {
            name: p.name.clone(),
            limits: p.into(),
        }
    }
}

/// The policy of each [`Tier`], named after the tier.
///
/// Defaults: anonymous 100 per minute, api_key 1000 per minute, premium 5000 per minute
/// (each with a burst equal to its limit), admin unlimited. In a configuration file each
/// tier is optional and replaces its default as a whole:
///
/// ```
/// # use limiter_core::{TierPolicies, Tier};
/// let tiers: TierPolicies = toml::from_str(r#"
///     [anonymous]
///     quotas = [{ limit = 10, period = "1s" }, { limit = 300, period = "1h" }]
/// "#).unwrap();
/// assert_eq!(tiers.get(Tier::Anonymous).quotas().len(), 2);
/// assert_eq!(tiers.get(Tier::Premium).quotas()[0].tokens(), 5000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TierPoliciesSpec", into = "TierPoliciesSpec")]
pub struct TierPolicies {
    policies: [Policy; 4],
}

impl TierPolicies {
    /// The policy for `tier`.
    pub fn get(&self, tier: Tier) -> &Policy {
        &self.policies[tier as usize]
    }

    /// Replaces the policy for `tier`, keeping the tier's name.
    ///
    /// # Errors
    /// [`Error::InvalidPolicy`] when `quotas` is longer than [`MAX_QUOTAS`].
    pub fn set(
        &mut self,
        tier: Tier,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Result<(), Error> {
        let quotas: Vec<Quota> = quotas.into_iter().collect();
        self.policies[tier as usize] = if quotas.is_empty() {
            Policy::unlimited(tier.as_str())?
        } else {
            Policy::new(tier.as_str(), quotas)?
        };
        Ok(())
    }
}

impl Default for TierPolicies {
    #[allow(
        clippy::expect_used,
        reason = "constant quotas and names, valid by construction; `defaults_match_the_design` runs this"
    )]
    fn default() -> Self {
        let policy = |tier: Tier, per_minute: Option<u64>| {
            match per_minute {
                Some(n) => Quota::per_minute(n).and_then(|q| Policy::new(tier.as_str(), [q])),
                None => Policy::unlimited(tier.as_str()),
            }
            .expect("built-in tier defaults are valid")
        };
        TierPolicies {
            policies: [
                policy(Tier::Anonymous, Some(100)),
                policy(Tier::ApiKey, Some(1_000)),
                policy(Tier::Premium, Some(5_000)),
                policy(Tier::Admin, None),
            ],
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TierPoliciesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anonymous: Option<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    premium: Option<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin: Option<LimitSpec>,
}

impl TryFrom<TierPoliciesSpec> for TierPolicies {
    type Error = Error;

    fn try_from(spec: TierPoliciesSpec) -> Result<Self, Error> {
        let mut tiers = TierPolicies::default();
        let given = [spec.anonymous, spec.api_key, spec.premium, spec.admin];
        for (tier, limits) in Tier::ALL.into_iter().zip(given) {
            if let Some(limits) = limits {
                tiers.policies[tier as usize] = limits.into_policy(tier.as_str().to_owned())?;
            }
        }
        Ok(tiers)
    }
}

impl From<TierPolicies> for TierPoliciesSpec {
    fn from(tiers: TierPolicies) -> Self {
        let [anonymous, api_key, premium, admin] = tiers.policies.map(|p| Some(p.into()));
        TierPoliciesSpec {
            anonymous,
            api_key,
            premium,
            admin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let tiers = TierPolicies::default();
        for (tier, n) in [
            (Tier::Anonymous, 100),
            (Tier::ApiKey, 1_000),
            (Tier::Premium, 5_000),
        ] {
            let p = tiers.get(tier);
            assert_eq!(p.name(), tier.as_str());
            assert_eq!(p.quotas(), &[Quota::per_minute(n).unwrap()]);
        }
        assert!(tiers.get(Tier::Admin).is_unlimited());
    }

    #[test]
    fn tiers_parse_and_print() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        for bad in ["", "Admin", "root", "anonymous ", "\u{0}"] {
            assert!(
                matches!(bad.parse::<Tier>(), Err(Error::UnknownTier)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_policies_are_errors() {
        let q = Quota::per_second(1).unwrap();
        assert!(Policy::new("", [q]).is_err());
        assert!(Policy::new("a:b", [q]).is_err());
        assert!(Policy::new("x".repeat(65), [q]).is_err());
        assert!(Policy::new("ok", []).is_err());
        assert!(Policy::new("ok", [q; MAX_QUOTAS + 1]).is_err());
        assert!(Policy::new("ok", [q; MAX_QUOTAS]).is_ok());
    }

    #[test]
    fn id_changes_with_name_or_quotas() {
        let a = Policy::new("a", [Quota::per_second(1).unwrap()]).unwrap();
        let a2 = Policy::new("a", [Quota::per_second(1).unwrap()]).unwrap();
        let b = Policy::new("b", [Quota::per_second(1).unwrap()]).unwrap();
        let a_burst =
            Policy::new("a", [Quota::per_second(1).unwrap().allow_burst(2).unwrap()]).unwrap();
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), a_burst.id());
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let p = Policy::new(
            "search",
            [
                Quota::per_second(10).unwrap().allow_burst(20).unwrap(),
                Quota::per_hour(5000).unwrap(),
            ],
        )
        .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"name":"search","quotas":[{"limit":10,"period":"1s","burst":20},{"limit":5000,"period":"1h"}]}"#
        );
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);

        let tiers = TierPolicies::default();
        let text = toml::to_string(&tiers).unwrap();
        assert_eq!(toml::from_str::<TierPolicies>(&text).unwrap(), tiers);

        for bad in [
            r#"{"name":"x","quotas":[]}"#,
            r#"{"name":"x","quotas":[{"limit":0,"period":"1s"}]}"#,
            r#"{"name":"x","quotas":[{"limit":1,"period":"0s"}]}"#,
            r#"{"name":"x","quotas":[{"limit":1,"period":"1s","burst":0}]}"#,
            r#"{"name":"x","quotas":[{"limit":1,"period":"soon"}]}"#,
            r#"{"name":"x","quotas":[{"limit":-1,"period":"1s"}]}"#,
            r#"{"name":"x","unlimited":true,"quotas":[{"limit":1,"period":"1s"}]}"#,
            r#"{"name":"x","quotas":[{"limit":1,"period":"1s","brust":3}]}"#,
        ] {
            assert!(serde_json::from_str::<Policy>(bad).is_err(), "{bad}");
        }
        let err =
            toml::from_str::<TierPolicies>("[premium]\nquotas = [{ limit = 0, period = \"1m\" }]")
                .unwrap_err()
                .to_string();
        assert!(err.contains("limit must be at least 1"), "{err}");
    }
}
