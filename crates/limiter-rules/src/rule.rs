//! One rule: who it applies to (scope, resource), what it allows (a policy), and how it
//! is applied (mode, rollout); and its JSON form.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use limiter_core::{MAX_QUOTAS, Policy, Quota, Tier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RuleError;

/// The longest resource a rule or a request may name, in bytes.
pub const MAX_RESOURCE_LEN: usize = 256;

/// The longest raw API key a rule accepts, in bytes.
pub const MAX_API_KEY_LEN: usize = 1024;

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every client.
    Global,
    /// The clients of one tier.
    Tier(Tier),
    /// The clients whose address is in a network (longest prefix wins).
    Ip(IpNet),
    /// The client presenting one API key, known only by its hash.
    ApiKey(KeyHash),
}

impl Scope {
    /// The scope's name in the JSON form: `global`, `tier`, `ip` or `api_key`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Tier(_) => "tier",
            Scope::Ip(_) => "ip",
            Scope::ApiKey(_) => "api_key",
        }
    }

    /// The scope's `match` in the JSON form (an API key as its hash), if it has one.
    pub fn match_str(&self) -> Option<String> {
        match self {
            Scope::Global => None,
            Scope::Tier(tier) => Some(tier.as_str().to_owned()),
            Scope::Ip(net) => Some(net.to_string()),
            Scope::ApiKey(hash) => Some(hash.to_string()),
        }
    }
}

/// The SHA-256 of an API key: all a rule keeps of it. Written `sha256:<64 hex digits>`.
///
/// It is the same digest as the service's API key table (`ratelimitd hash-key`): API keys
/// are long random secrets, so an unkeyed hash of one cannot be reversed by guessing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The prefix of the written form.
    pub const PREFIX: &'static str = "sha256:";

    /// The hash of a raw key.
    pub fn of(raw_key: &[u8]) -> Self {
        Self(Sha256::digest(raw_key).into())
    }

    /// A hash from its 32 bytes (as the API key table stores them).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for KeyHash {
    type Err = RuleError;

    /// Parses the written form, `sha256:` and 64 hex digits.
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let digits = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            RuleError::new("match", "an API key hash is written sha256:<64 hex digits>")
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes)
            .map_err(|_| RuleError::new("match", "an API key hash needs 64 hex digits"))?;
        Ok(Self(bytes))
    }
}

/// What a rule narrows its scope to: a name (`login`) the caller states, or a route prefix
/// (`/api/upload`, any path at or under it). A prefix starts with `/`; a name never does.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource(String);

impl Resource {
    /// A resource from its text: 1 to [`MAX_RESOURCE_LEN`] bytes of visible ASCII.
    ///
    /// # Errors
    /// A [`RuleError`] on `resource` otherwise (it does not echo the text).
    pub fn new(text: &str) -> Result<Self, RuleError> {
        validate_resource(text).map_err(|reason| RuleError::new("resource", reason))?;
        // `/api/` and `/api` mean the same prefix (written the short way, so a rule prints as
        // it reads back); a name is kept as it is.
        let text = match text.trim_end_matches('/') {
            "" if text.starts_with('/') => "/",
            trimmed if text.starts_with('/') => trimmed,
            _ => text,
        };
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for a route prefix (it starts with `/`).
    pub fn is_prefix(&self) -> bool {
        self.0.starts_with('/')
    }

    /// Whether a request for `resource` falls under this one: the same name, or a path at
    /// or under this prefix (on a segment boundary: `/api` covers `/api/x`, not `/apix`).
    pub fn covers(&self, resource: &str) -> bool {
        if !self.is_prefix() || self.0 == "/" {
            return self.0 == resource || (self.0 == "/" && resource.starts_with('/'));
        }
        match resource.strip_prefix(self.0.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why `text` cannot be a resource, if it cannot; shared with requests' resources.
pub fn validate_resource(text: &str) -> Result<(), &'static str> {
    if text.is_empty() || text.len() > MAX_RESOURCE_LEN {
        return Err("must be 1 to 256 bytes");
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII, without spaces");
    }
    Ok(())
}

/// How a rule is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Its denials are answered (for the clients in its rollout). The default.
    #[default]
    Enforce,
    /// Decided and recorded, never denied: the next rule that applies decides.
    Shadow,
    /// Ignored, as if absent.
    Off,
}

impl Mode {
    /// The mode's name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

/// A rule: a name, a scope optionally narrowed to a resource, a policy, a mode and a
/// rollout share. Build one from its JSON form ([`RuleSpec`]) or with [`Rule::new`].
///
/// Its policy carries the rule's name, so each rule's clients have buckets of their own,
/// and changing a rule's quotas starts them on fresh ones.
#[derive(Clone, PartialEq, Eq)]
pub struct Rule {
    scope: Scope,
    resource: Option<Resource>,
    policy: Policy,
    mode: Mode,
    rollout_percent: u8,
}

impl Rule {
    /// A rule enforced for every client in its scope.
    pub fn new(scope: Scope, policy: Policy) -> Self {
        Self {
            scope,
            resource: None,
            policy,
            mode: Mode::Enforce,
            rollout_percent: 100,
        }
    }

    /// Narrowed to requests for `resource`.
    #[must_use]
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resource = Some(resource);
        self
    }

    /// In `mode`.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Enforced for `percent` of clients (chosen by client hash), shadow for the rest.
    ///
    /// # Errors
    /// A [`RuleError`] on `rollout_percent` above 100.
    pub fn rollout(mut self, percent: u8) -> Result<Self, RuleError> {
        if percent > 100 {
            return Err(RuleError::new("rollout_percent", "must be 0 to 100"));
        }
        self.rollout_percent = percent;
        Ok(self)
    }

    /// The rule's name (its policy's).
    pub fn name(&self) -> &str {
        self.policy.name()
    }

    /// Who it applies to.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The resource it is narrowed to, if any.
    pub fn resource_filter(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }

    /// What it allows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How it is applied.
    pub fn mode_of(&self) -> Mode {
        self.mode
    }

    /// The share of clients it is enforced for, 0 to 100.
    pub fn rollout_percent(&self) -> u8 {
        self.rollout_percent
    }

    /// Whether it applies to a request for `resource` (always, when it names none).
    pub fn covers(&self, resource: Option<&str>) -> bool {
        match (&self.resource, resource) {
            (None, _) => true,
            (Some(own), Some(asked)) => own.covers(asked),
            (Some(_), None) => false,
        }
    }

    /// The JSON form (an API key as its hash).
    pub fn to_spec(&self) -> RuleSpec {
        RuleSpec {
            name: self.name().to_owned(),
            scope: self.scope.as_str().to_owned(),
            r#match: self.scope.match_str(),
            resource: self.resource.as_ref().map(|r| r.0.clone()),
            quotas: self.policy.quotas().to_vec(),
            unlimited: self.policy.is_unlimited(),
            mode: Some(self.mode),
            rollout_percent: Some(u64::from(self.rollout_percent)),
        }
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name())
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .field("quotas", &self.policy.quotas())
            .field("mode", &self.mode)
            .field("rollout_percent", &self.rollout_percent)
            .finish()
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RuleSpec::deserialize(deserializer)?
            .into_rule()
            .map_err(serde::de::Error::custom)
    }
}

/// A rule as JSON carries it, before validation:
/// `{"name": "login-ip", "scope": "ip", "match": "203.0.113.0/24", "resource": "login",
/// "quotas": [{"limit": 5, "period": "1m", "burst": 5}], "mode": "enforce",
/// "rollout_percent": 100}`.
///
/// For `scope = "api_key"`, `match` is the raw key on write (hashed at once, never kept)
/// or its hash as answers show it (`sha256:…`), so an export imports unchanged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
    #[serde(default)]
    pub name: String,
    /// `global`, `tier`, `ip` or `api_key`.
    #[serde(default)]
    pub scope: String,
    /// What the scope matches: a tier name, a CIDR block, an API key; none for `global`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub r#match: Option<String>,
    /// A resource name or route prefix the rule is narrowed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// 1 to 8 quotas, all enforced together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
    /// No quotas at all: everything passes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
    /// `enforce` (default), `shadow` or `off`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// 0 to 100; default 100. Wider than a byte so that 101 or 1000 is refused by name.
    #[serde(default)]
    pub rollout_percent: Option<u64>,
}

impl fmt::Debug for RuleSpec {
    /// Without `match`, which may hold a raw API key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSpec")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl RuleSpec {
    /// Validates the spec into a rule; an API key is hashed here.
    ///
    /// # Errors
    /// A [`RuleError`] naming the first field that is wrong. Messages never echo `match`.
    pub fn into_rule(self) -> Result<Rule, RuleError> {
        let name = self.name;
        let scope = parse_scope(&self.scope, self.r#match.as_deref())?;
        let resource = self.resource.as_deref().map(Resource::new).transpose()?;
        let policy = match (self.unlimited, self.quotas.len()) {
            (true, 0) => Policy::unlimited(name.clone()),
            (false, 0) => {
                return Err(RuleError::new(
                    "quotas",
                    "give 1 to 8 quotas, or \"unlimited\": true",
                ));
            }
            (true, _) => {
                return Err(RuleError::new(
                    "unlimited",
                    "a rule is unlimited or has quotas, not both",
                ));
            }
            (false, n) if n > MAX_QUOTAS => {
                return Err(RuleError::new(
                    "quotas",
                    format!("{n} quotas, at most {MAX_QUOTAS} allowed"),
                ));
            }
            (false, _) => Policy::new(name.clone(), self.quotas),
        }
        .map_err(|e| RuleError::new("name", policy_reason(&e)))?;
        let rule = Rule {
            scope,
            resource,
            policy,
            mode: self.mode.unwrap_or_default(),
            rollout_percent: 100,
        };
        match self.rollout_percent {
            None => Ok(rule),
            Some(p) => rule.rollout(u8::try_from(p).unwrap_or(u8::MAX)),
        }
    }
}

/// The reason of a policy error, without the "invalid policy:" its message starts with.
fn policy_reason(e: &limiter_core::Error) -> String {
    match e {
        limiter_core::Error::InvalidPolicy { reason } => reason.clone(),
        other => other.to_string(),
    }
}

fn parse_scope(scope: &str, matched: Option<&str>) -> Result<Scope, RuleError> {
    let needs = |what: &str| RuleError::new("match", format!("scope {scope} needs {what}"));
    match (scope, matched) {
        ("global", None) => Ok(Scope::Global),
        ("global", Some(_)) => Err(RuleError::new(
            "match",
            "scope global matches every client: leave match out",
        )),
        ("tier", Some(name)) => name.parse::<Tier>().map(Scope::Tier).map_err(|_| {
            RuleError::new("match", "not a tier: anonymous, api_key, premium or admin")
        }),
        ("ip", Some(text)) => parse_network(text).map(Scope::Ip),
        ("api_key", Some(key)) => {
            if key.starts_with(KeyHash::PREFIX) {
                return key.parse().map(Scope::ApiKey);
            }
            if key.is_empty() || key.len() > MAX_API_KEY_LEN {
                return Err(RuleError::new(
                    "match",
                    "an API key must be 1 to 1024 bytes",
                ));
            }
            Ok(Scope::ApiKey(KeyHash::of(key.as_bytes())))
        }
        ("tier", None) => Err(needs("a tier name")),
        ("ip", None) => Err(needs("a CIDR block such as 203.0.113.0/24")),
        ("api_key", None) => Err(needs("the API key")),
        ("", _) => Err(RuleError::new(
            "scope",
            "missing: global, tier, ip or api_key",
        )),
        _ => Err(RuleError::new(
            "scope",
            "unknown: must be global, tier, ip or api_key",
        )),
    }
}

/// A CIDR block, or one address (a /32 or /128). Host bits must be zero, so a typo such as
/// `203.0.113.7/24` is refused rather than silently widened.
fn parse_network(text: &str) -> Result<IpNet, RuleError> {
    let bad = || {
        RuleError::new(
            "match",
            "not a CIDR block such as 203.0.113.0/24 or 2001:db8::/48",
        )
    };
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| bad())?,
    };
    if net.trunc() != net {
        return Err(RuleError::new(
            "match",
            format!("host bits are set: the block is {}", net.trunc()),
        ));
    }
    Ok(net)
}
