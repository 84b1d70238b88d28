//! [`RuleSet`]: rules indexed for matching, and the precedence that picks one.
//!
//! Precedence, most specific first (docs/rules.md has the table):
//!
//! | rank | scope                          | within the rank                              |
//! | ---- | ------------------------------ | -------------------------------------------- |
//! | 1    | `api_key`                      | with a matching resource before without       |
//! | 2    | `ip`                           | longest prefix; then with a resource before without |
//! | 3    | `global` or `tier` + resource  | longest resource; then `tier` before `global` |
//! | 4    | `tier`                         |                                              |
//! | 5    | `global`                       |                                              |
//!
//! Among rules of one rank, a longer resource is more specific than a shorter one, and a
//! name is compared last so that the order never depends on insertion. A rule in `off`
//! mode is skipped. The first rule *enforced* for the client decides; a `shadow` rule met
//! before it (or a rule whose rollout leaves this client out) is evaluated beside it and
//! recorded, never answered. Admin clients are unlimited whatever `global`, `ip` and
//! resource rules say: only an `api_key` rule or a `tier = admin` rule applies to them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use ipnet::IpNet;
use limiter_core::{ClientKey, Tier};
use serde::Serialize;

use crate::rule::{KeyHash, Mode, Rule, Scope};

/// A request as rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// The client's tier.
    pub tier: Tier,
    /// The client's hashed identity: it chooses the rollout share, stably.
    pub client: ClientKey,
    /// The client's address, when known.
    pub ip: Option<IpAddr>,
    /// The hash of the API key the client presented, when known.
    pub api_key: Option<KeyHash>,
    /// What the request is for: a name (`login`) or a path (`/api/upload/1`).
    pub resource: Option<&'a str>,
}

/// How a matching rule treats one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Treatment {
    /// Its decision is answered.
    Enforced,
    /// Its decision is recorded, never answered: a `shadow` rule, or an `enforce` rule
    /// whose rollout leaves this client out.
    Shadow,
}

/// The rules that apply to a query: the one that decides, and a shadow one evaluated beside.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resolution<'a> {
    /// The rule that decides; `None`: the tier's policy does.
    pub rule: Option<&'a Rule>,
    /// The most specific rule in shadow for this client, above the deciding one.
    pub shadow: Option<&'a Rule>,
}

/// Rules indexed so that resolving a request costs a few hash lookups however many there
/// are, with the fleet-wide enforcement switch and the document's version.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    version: u64,
    enforce: bool,
    rules: Vec<Indexed>,
    by_key: HashMap<KeyHash, Vec<usize>>,
    /// Per prefix length, longest first, the rules of each network.
    v4: Vec<(u8, HashMap<IpNet, Vec<usize>>)>,
    v6: Vec<(u8, HashMap<IpNet, Vec<usize>>)>,
    /// `global`/`tier` rules narrowed to a resource, by the resource's text.
    by_resource: HashMap<Arc<str>, Vec<usize>>,
    by_tier: [Vec<usize>; 4],
    global: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Indexed {
    rule: Rule,
    /// Mixed with the client's hash to choose the rollout share: each rule picks its own
    /// clients, so two rules at 10 % do not pick the same ones.
    salt: u64,
}

impl RuleSet {
    /// Indexes `rules` (names are unique: the document checks it) at `version`, with
    /// enforcement on or off fleet-wide.
    pub fn new(version: u64, enforce: bool, rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut set = RuleSet {
            version,
            enforce,
            ..RuleSet::default()
        };
        for rule in rules {
            let salt = salt_of(rule.name());
            set.rules.push(Indexed { rule, salt });
        }
        let mut v4: HashMap<u8, HashMap<IpNet, Vec<usize>>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<IpNet, Vec<usize>>> = HashMap::new();
        for (i, Indexed { rule, .. }) in set.rules.iter().enumerate() {
            if rule.mode_of() == Mode::Off {
                continue;
            }
            match (rule.scope(), rule.resource_filter()) {
                (Scope::ApiKey(hash), _) => set.by_key.entry(*hash).or_default().push(i),
                (Scope::Ip(net), _) => {
                    let lengths = if matches!(net, IpNet::V4(_)) {
                        &mut v4
                    } else {
                        &mut v6
                    };
                    let nets = lengths.entry(net.prefix_len()).or_default();
                    nets.entry(*net).or_default().push(i);
                }
                (Scope::Global | Scope::Tier(_), Some(resource)) => set
                    .by_resource
                    .entry(Arc::from(resource.as_str()))
                    .or_default()
                    .push(i),
                (Scope::Tier(tier), None) => set.by_tier[*tier as usize].push(i),
                (Scope::Global, None) => set.global.push(i),
            }
        }
        let rules = &set.rules;
        let order = |list: &mut Vec<usize>| {
            // Most specific first: a longer resource, then tier before global, then name.
            list.sort_by_key(|&i| {
                let rule = &rules[i].rule;
                (
                    std::cmp::Reverse(rule.resource_filter().map_or(0, |r| r.as_str().len() + 1)),
                    !matches!(rule.scope(), Scope::Tier(_)),
                    rule.name().to_owned(),
                )
            });
        };
        set.by_key.values_mut().for_each(order);
        set.by_resource.values_mut().for_each(order);
        set.by_tier.iter_mut().for_each(order);
        order(&mut set.global);
        let by_length = |lengths: HashMap<u8, HashMap<IpNet, Vec<usize>>>| {
            let mut lengths: Vec<_> = lengths
                .into_iter()
                .map(|(len, mut nets)| {
                    nets.values_mut().for_each(order);
                    (len, nets)
                })
                .collect();
            lengths.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
            lengths
        };
        set.v4 = by_length(v4);
        set.v6 = by_length(v6);
        set
    }

    /// The document version these rules came from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// False while the fleet-wide kill switch is on: every request is allowed, and what
    /// would have been denied is recorded as such.
    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// Every rule, in document order.
    pub fn rules(&self) -> impl ExactSizeIterator<Item = &Rule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True with no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when some rule matches API keys: only then is a caller's key worth hashing.
    pub fn matches_api_keys(&self) -> bool {
        !self.by_key.is_empty()
    }

    /// The rules that decide `query`: see the [module docs](self) for the precedence.
    #[inline]
    pub fn resolve(&self, query: &Query<'_>) -> Resolution<'_> {
        let mut found = Resolution::default();
        if self.rules.is_empty() {
            return found;
        }
        let _ = self.walk(query, |indexed, treatment| match treatment {
            Treatment::Enforced => {
                found.rule = Some(&indexed.rule);
                ControlFlow::Break(())
            }
            Treatment::Shadow => {
                found.shadow = found.shadow.or(Some(&indexed.rule));
                ControlFlow::Continue(())
            }
        });
        found
    }

    /// Every rule that matches `query`, most specific first, with how it treats this client;
    /// the walk [`resolve`](Self::resolve) stops at the first enforced one.
    pub fn explain(&self, query: &Query<'_>) -> Vec<(&Rule, Treatment)> {
        let mut matched = Vec::new();
        let _ = self.walk(query, |indexed, treatment| {
            matched.push((&indexed.rule, treatment));
            ControlFlow::<()>::Continue(())
        });
        matched
    }

    /// Visits the rules matching `query` in precedence order until `visit` breaks.
    fn walk<'s>(
        &'s self,
        query: &Query<'_>,
        mut visit: impl FnMut(&'s Indexed, Treatment) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut each = |list: &'s [usize], tier_only: bool| -> ControlFlow<()> {
            for &i in list {
                let indexed = &self.rules[i];
                let rule = &indexed.rule;
                if !rule.covers(query.resource) {
                    continue;
                }
                if tier_only && !matches!(rule.scope(), Scope::Tier(t) if *t == query.tier) {
                    continue;
                }
                if let Scope::Tier(t) = rule.scope()
                    && *t != query.tier
                {
                    continue;
                }
                visit(indexed, indexed.treatment(&query.client))?;
            }
            ControlFlow::Continue(())
        };
        let admin = query.tier == Tier::Admin;
        if let Some(hash) = &query.api_key
            && let Some(list) = self.by_key.get(hash)
        {
            each(list, false)?;
        }
        if let Some(ip) = query.ip.filter(|_| !admin) {
            // An IPv4 client seen through an IPv6 socket is an IPv4 client.
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            let lengths = match ip {
                IpAddr::V4(_) => &self.v4,
                IpAddr::V6(_) => &self.v6,
            };
            for (len, nets) in lengths {
                let Ok(net) = IpNet::new(ip, *len) else {
                    continue;
                };
                if let Some(list) = nets.get(&net.trunc()) {
                    each(list, false)?;
                }
            }
        }
        if let Some(resource) = query.resource
            && !self.by_resource.is_empty()
        {
            // An exact name; or a path and each of its parents, longest first.
            if let Some(list) = self.by_resource.get(resource) {
                each(list, admin)?;
            }
            if resource.starts_with('/') {
                let trimmed = resource.trim_end_matches('/');
                if trimmed.len() != resource.len()
                    && !trimmed.is_empty()
                    && let Some(list) = self.by_resource.get(trimmed)
                {
                    each(list, admin)?;
                }
                let mut prefix = trimmed;
                while let Some(cut) = prefix.rfind('/') {
                    prefix = &prefix[..cut];
                    let key = if prefix.is_empty() { "/" } else { prefix };
                    if let Some(list) = self.by_resource.get(key) {
                        each(list, admin)?;
                    }
                }
            }
        }
        each(&self.by_tier[query.tier as usize], false)?;
        if !admin {
            each(&self.global, false)?;
        }
        ControlFlow::Continue(())
    }
}

impl Indexed {
    fn treatment(&self, client: &ClientKey) -> Treatment {
        match self.rule.mode_of() {
            Mode::Enforce if in_rollout(client, self.salt, self.rule.rollout_percent()) => {
                Treatment::Enforced
            }
            _ => Treatment::Shadow,
        }
    }
}

/// Whether `client` is among the `percent` % a rule with `salt` is enforced for: stable for
/// a client and a rule, uniform over clients (the client key is already a keyed hash).
pub fn in_rollout(client: &ClientKey, salt: u64, percent: u8) -> bool {
    match percent {
        100.. => true,
        0 => false,
        p => {
            let low = client.as_u128() as u64;
            (mix(low ^ salt) % 100) < u64::from(p)
        }
    }
}

/// A rule's rollout salt, from its name.
pub fn salt_of(name: &str) -> u64 {
    // FNV-1a: small, stable across builds and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The splitmix64 finaliser: spreads a 64-bit value over all bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
