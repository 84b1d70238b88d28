//! A domain's descriptor tree: built from the file (validated, each limit made a
//! [`Rule`]), and matched against a request's descriptors as the reference service does.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use limiter_core::{Policy, Quota};
use limiter_rules::{Mode, Rule, Scope};
use sha2::{Digest, Sha256};

use crate::ConfigError;
use crate::format;

/// The deepest tree accepted: Envoy's descriptors have a handful of entries.
pub const MAX_DEPTH: usize = 32;

/// The longest domain, key or value the file may hold, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A limit's time unit, as in `RateLimitResponse.RateLimit.Unit`. A month is 30 days and a
/// year 365, as in the reference service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Its length.
    pub fn period(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// Its name in the file, in lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit in any case (`second`, `SECOND`), as the reference service does.
    pub fn parse(text: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a matched entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowance {
    /// `requests_per_unit` per `unit`: a token bucket whose burst is `requests_per_unit`.
    Bucket {
        /// Requests per unit, and the bucket's capacity.
        requests_per_unit: u32,
        /// The unit.
        unit: Unit,
    },
    /// `requests_per_unit: 0`: every request is over the limit.
    Nothing {
        /// The unit, echoed in the answer.
        unit: Unit,
    },
    /// `unlimited: true`: every request passes, and no backend is asked.
    Unlimited,
}

/// One entry's limit, as a rule of the rules engine (its policy and its mode) plus what the
/// gRPC answer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    rule: Rule,
    allowance: Allowance,
    name: Option<String>,
    replaces: Vec<String>,
    detailed_metric: bool,
    path: String,
}

impl Limit {
    /// The rule it is: a `global` rule whose policy is this limit (named
    /// `rls.<domain>.<path>`, made safe for storage keys), `shadow` in shadow mode. Each
    /// request's descriptor values choose the bucket within it.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// The policy its buckets follow.
    pub fn policy(&self) -> &Policy {
        self.rule.policy()
    }

    /// What it allows.
    pub fn allowance(&self) -> Allowance {
        self.allowance
    }

    /// True in shadow mode: over the limit is answered `OK`, and counted.
    pub fn shadow(&self) -> bool {
        self.rule.mode_of() == Mode::Shadow
    }

    /// `rate_limit.name`, if given: what `replaces` refers to, and `current_limit.name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The names of the limits this one replaces when both match one request.
    pub fn replaces(&self) -> &[String] {
        &self.replaces
    }

    /// `detailed_metric` as written (request values never become metric labels: they may
    /// identify clients).
    pub fn detailed_metric(&self) -> bool {
        self.detailed_metric
    }

    /// Where it sits in the tree, much as the reference service names its statistics: each
    /// level `key`, or `key_v<i>` for the `i`-th entry of its list when it has a value
    /// (never the value itself: a value may be a client's ID or key), joined by `.`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The entries under one key at one level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Keyed {
    /// `value: login`.
    exact: HashMap<String, Node>,
    /// `value: api_*`: a prefix, in the file's order (the first that matches wins, as in
    /// the reference service).
    prefixes: Vec<(String, Node)>,
    /// No value: any value.
    any: Option<Box<Node>>,
}

/// One level of the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    limit: Option<Limit>,
    children: HashMap<String, Keyed>,
}

impl Node {
    /// The entry matching `key` = `value`: exact value first, then the first prefix in the
    /// file's order (`value: foo*`), then the key alone.
    fn child(&self, key: &str, value: &str) -> Option<&Node> {
        let keyed = self.children.get(key)?;
        if let Some(node) = keyed.exact.get(value) {
            return Some(node);
        }
        if let Some((_, node)) = keyed
            .prefixes
            .iter()
            .find(|(prefix, _)| value.starts_with(prefix.as_str()))
        {
            return Some(node);
        }
        keyed.any.as_deref()
    }
}

/// One domain's descriptor tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    name: String,
    root: Node,
    limits: usize,
}

impl Domain {
    /// Parses and validates one file's text; `origin` names it in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: malformed YAML, an unknown key, a missing or
    /// contradictory `rate_limit` field, an unknown unit, a duplicate entry, `replaces`
    /// naming no limit, a tree deeper than [`MAX_DEPTH`].
    pub fn parse(text: &str, origin: &str) -> Result<Domain, ConfigError> {
        // serde_yaml's message names the field's path, and the line and column.
        let file: format::File =
            serde_yaml::from_str(text).map_err(|e| ConfigError::new(origin, "", e.to_string()))?;
        Domain::build(file, origin)
    }

    fn build(file: format::File, origin: &str) -> Result<Domain, ConfigError> {
        check_text(origin, "domain", &file.domain)?;
        let mut builder = Builder {
            origin,
            domain: &file.domain,
            names: HashSet::new(),
            replaced: Vec::new(),
            limits: 0,
        };
        let root = builder.level(&file.descriptors, "descriptors", "", 1)?;
        for (field, name) in &builder.replaced {
            if !builder.names.contains(name.as_str()) {
                return Err(ConfigError::new(
                    origin,
                    field.clone(),
                    format!(
                        "no rate_limit in domain {:?} is named {name:?}",
                        file.domain
                    ),
                ));
            }
        }
        Ok(Domain {
            limits: builder.limits,
            name: file.domain,
            root,
        })
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many entries carry a limit.
    pub fn limits(&self) -> usize {
        self.limits
    }

    /// The limit for one request descriptor (its entries in order), as the reference
    /// service finds it: each entry picks an entry of the tree's next level (its exact
    /// value, else the longest matching `prefix*`, else the key alone); the limit is the one
    /// on the entry the last request entry reached. No entry at some level, or none on the
    /// last: no limit.
    pub fn find<K, V>(&self, entries: impl IntoIterator<Item = (K, V)>) -> Option<&Limit>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut node = &self.root;
        let mut any = false;
        for (key, value) in entries {
            node = node.child(key.as_ref(), value.as_ref())?;
            any = true;
        }
        if any { node.limit.as_ref() } else { None }
    }
}

/// Applies `replaces`: a limit named by another matched limit's `replaces` is dropped
/// (`None`), as the reference service does.
pub fn apply_replaces(limits: &mut [Option<&Limit>]) {
    let replaced: HashSet<&str> = limits
        .iter()
        .flatten()
        .flat_map(|l| l.replaces.iter().map(String::as_str))
        .collect();
    if replaced.is_empty() {
        return;
    }
    for slot in limits.iter_mut() {
        if slot
            .and_then(Limit::name)
            .is_some_and(|n| replaced.contains(n))
        {
            *slot = None;
        }
    }
}

struct Builder<'a> {
    origin: &'a str,
    domain: &'a str,
    /// Every `rate_limit.name`.
    names: HashSet<String>,
    /// Every `replaces` name, with where it was written.
    replaced: Vec<(String, String)>,
    limits: usize,
}

impl Builder<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.origin, field, reason)
    }

    fn level(
        &mut self,
        entries: &[format::Descriptor],
        field: &str,
        path: &str,
        depth: usize,
    ) -> Result<Node, ConfigError> {
        if depth > MAX_DEPTH && !entries.is_empty() {
            return Err(self.err(field, format!("deeper than {MAX_DEPTH} levels")));
        }
        let mut node = Node::default();
        let mut seen: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let here = format!("{field}[{i}]");
            check_text(self.origin, &format!("{here}.key"), &entry.key)?;
            // An empty value is the key alone, as in the reference service.
            let value = entry.value.as_deref().filter(|v| !v.is_empty());
            if let Some(value) = value {
                check_text(self.origin, &format!("{here}.value"), value)?;
            }
            if let Some(first) = seen.insert((entry.key.as_str(), value), i) {
                return Err(self.err(here, format!("the same key and value as {field}[{first}]")));
            }
            if let Some(v) = value
                && v.find('*').is_some_and(|at| at + 1 != v.len())
            {
                return Err(self.err(
                    format!("{here}.value"),
                    "a * is supported only at the end (a prefix)",
                ));
            }
            let step = step(&entry.key, value.map(|_| i));
            let path = if path.is_empty() {
                step
            } else {
                format!("{path}.{step}")
            };
            let mut child = self.level(
                &entry.descriptors,
                &format!("{here}.descriptors"),
                &path,
                depth + 1,
            )?;
            child.limit = match &entry.rate_limit {
                Some(limit) => Some(self.limit(limit, entry, &here, path)?),
                None => None,
            };
            let keyed = node.children.entry(entry.key.clone()).or_default();
            match value {
                None => keyed.any = Some(Box::new(child)),
                Some(v) => match v.strip_suffix('*') {
                    Some(prefix) => keyed.prefixes.push((prefix.to_owned(), child)),
                    None => {
                        keyed.exact.insert(v.to_owned(), child);
                    }
                },
            }
        }
        Ok(node)
    }

    fn limit(
        &mut self,
        spec: &format::RateLimit,
        entry: &format::Descriptor,
        here: &str,
        path: String,
    ) -> Result<Limit, ConfigError> {
        let field = format!("{here}.rate_limit");
        let allowance = if spec.unlimited {
            // As the reference service: a unit contradicts unlimited; a requests_per_unit
            // beside it is accepted and means nothing.
            if spec.unit.is_some() {
                return Err(self.err(format!("{field}.unit"), "unlimited: true takes no unit"));
            }
            Allowance::Unlimited
        } else {
            let Some(unit) = &spec.unit else {
                return Err(self.err(format!("{field}.unit"), "missing (or unlimited: true)"));
            };
            let Some(unit) = Unit::parse(unit) else {
                return Err(self.err(
                    format!("{field}.unit"),
                    format!(
                        "unknown unit {unit:?}: second, minute, hour, day, week, month or year"
                    ),
                ));
            };
            match spec.requests_per_unit {
                None => {
                    return Err(self.err(
                        format!("{field}.requests_per_unit"),
                        "missing (or unlimited: true)",
                    ));
                }
                Some(0) => Allowance::Nothing { unit },
                Some(requests_per_unit) => Allowance::Bucket {
                    requests_per_unit,
                    unit,
                },
            }
        };
        let name = match &spec.name {
            Some(name) if name.is_empty() => None,
            Some(name) => {
                check_text(self.origin, &format!("{field}.name"), name)?;
                self.names.insert(name.clone());
                Some(name.clone())
            }
            None => None,
        };
        let mut replaces = Vec::with_capacity(spec.replaces.len());
        for (i, replace) in spec.replaces.iter().enumerate() {
            let at = format!("{field}.replaces[{i}].name");
            check_text(self.origin, &at, &replace.name)?;
            if name.as_deref() == Some(replace.name.as_str()) {
                return Err(self.err(at, "a limit cannot replace itself"));
            }
            self.replaced.push((at, replace.name.clone()));
            replaces.push(replace.name.clone());
        }
        let rule_name = rule_name(self.domain, &path);
        let policy = match allowance {
            Allowance::Bucket {
                requests_per_unit,
                unit,
            } => Quota::new(u64::from(requests_per_unit), unit.period())
                .and_then(|q| Policy::new(rule_name, [q])),
            Allowance::Nothing { .. } | Allowance::Unlimited => Policy::unlimited(rule_name),
        }
        .map_err(|e| self.err(field.as_str(), e.to_string()))?;
        let mode = if entry.shadow_mode {
            Mode::Shadow
        } else {
            Mode::Enforce
        };
        self.limits += 1;
        Ok(Limit {
            rule: Rule::new(Scope::Global, policy).mode(mode),
            allowance,
            name,
            replaces,
            detailed_metric: entry.detailed_metric,
            path,
        })
    }
}

/// One level of a limit's path: `key`, or for an entry with a value `key_v` and the
/// entry's index in its list. Never the value: a value written in the file may itself
/// identify a client (an API key given a limit of its own), and paths become storage keys,
/// metric labels and the name in clients' `RateLimit-Policy` headers.
fn step(key: &str, value_entry: Option<usize>) -> String {
    match value_entry {
        Some(i) => format!("{key}_v{i}"),
        None => key.to_owned(),
    }
}

/// Domains, keys and values: 1 to [`MAX_NAME_LEN`] bytes, no control characters (they
/// end up in logs and metric labels).
fn check_text(origin: &str, field: &str, text: &str) -> Result<(), ConfigError> {
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return Err(ConfigError::new(
            origin,
            field,
            format!("must be 1 to {MAX_NAME_LEN} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ConfigError::new(
            origin,
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A policy name for the entry at `path` of `domain`: `rls.<domain>.<path>` where that is
/// a valid policy name, else its safe characters cut to fit and a hash of the whole, so
/// two entries never share one.
pub(crate) fn rule_name(domain: &str, path: &str) -> String {
    const MAX: usize = 64;
    let full = format!("rls.{domain}.{path}");
    let safe: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == full && full.len() <= MAX {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let tag = hex::encode(&digest[..4]);
    let keep = MAX - tag.len() - 1;
    let cut: String = safe.chars().take(keep).collect();
    format!("{cut}-{tag}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: path
    value: /login
    rate_limit: {unit: MINUTE, requests_per_unit: 5}
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    value: /api/*
    rate_limit: {unit: hour, requests_per_unit: 1000, name: api}
  - key: path
    value: /api/v2*
    rate_limit: {unit: hour, requests_per_unit: 2000}
  - key: path
    rate_limit: {unit: day, requests_per_unit: 100000}
  - key: user
    value: internal
    rate_limit: {unlimited: true}
  - key: user
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: api}]}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: header_match
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 3}
"#;

    fn edge() -> Domain {
        Domain::parse(EDGE, "edge.yaml").unwrap()
    }

    fn path(d: &Domain, entries: &[(&str, &str)]) -> Option<String> {
        d.find(entries.iter().copied()).map(|l| l.path().to_owned())
    }

    /// The path of the entries `levels` (key, the index of an entry with a value).
    fn at(levels: &[(&str, Option<usize>)]) -> Option<String> {
        let steps: Vec<String> = levels.iter().map(|(k, v)| step(k, *v)).collect();
        Some(steps.join("."))
    }

    #[test]
    fn exact_values_win_then_the_first_prefix_in_file_order_then_the_key_alone() {
        let d = edge();
        assert_eq!(path(&d, &[("path", "/login")]), at(&[("path", Some(1))]));
        // `/api/*` comes before `/api/v2*` in the file: it wins, as in the reference.
        assert_eq!(
            path(&d, &[("path", "/api/v2/users")]),
            at(&[("path", Some(2))])
        );
        assert_eq!(path(&d, &[("path", "/api/v1")]), at(&[("path", Some(2))]));
        assert_eq!(path(&d, &[("path", "/other")]), at(&[("path", None)]));
    }

    #[test]
    fn nested_entries_match_only_the_whole_descriptor() {
        let d = edge();
        assert_eq!(
            path(&d, &[("path", "/login"), ("remote_address", "10.0.0.1")]),
            at(&[("path", Some(1)), ("remote_address", None)])
        );
        // Deeper than the tree, a key the level lacks, or a level with no limit: none.
        assert_eq!(path(&d, &[("remote_address", "a"), ("x", "y")]), None);
        assert_eq!(path(&d, &[("nope", "a")]), None);
        assert_eq!(path(&d, &[("header_match", "a")]), None);
        assert_eq!(
            path(&d, &[("header_match", "a"), ("remote_address", "b")]).as_deref(),
            Some("header_match.remote_address")
        );
        // Values written in the file never appear in a path (they may be clients' keys).
        assert!(
            !path(&d, &[("user", "internal")])
                .unwrap()
                .contains("internal")
        );
        assert_eq!(d.find(std::iter::empty::<(&str, &str)>()), None);
    }

    #[test]
    fn limits_carry_their_allowance_mode_and_rule() {
        let d = edge();
        let login = d.find([("path", "/login")]).unwrap();
        assert_eq!(
            login.allowance(),
            Allowance::Bucket {
                requests_per_unit: 5,
                unit: Unit::Minute
            }
        );
        assert_eq!(login.policy().quotas()[0].capacity(), 5);
        assert_eq!(
            login.rule().name(),
            format!("rls.edge.{}", at(&[("path", Some(1))]).unwrap())
        );
        assert!(!login.shadow());
        assert_eq!(
            d.find([("user", "internal")]).unwrap().allowance(),
            Allowance::Unlimited
        );
        assert!(d.find([("user", "bob")]).unwrap().shadow());
        assert_eq!(
            d.find([("blocked", "x")]).unwrap().allowance(),
            Allowance::Nothing { unit: Unit::Second }
        );
        assert_eq!(d.limits(), 10);
    }

    #[test]
    fn a_replacing_limit_drops_the_replaced_one() {
        let d = edge();
        let mut limits = vec![d.find([("path", "/api/x")]), d.find([("user", "bob")])];
        apply_replaces(&mut limits);
        assert!(limits[0].is_none());
        assert!(limits[1].is_some());
    }

    #[test]
    fn rule_names_are_valid_policy_names_and_distinct() {
        assert_eq!(
            rule_name("edge", "remote_address"),
            "rls.edge.remote_address"
        );
        let a = rule_name("edge", "path_/a");
        let b = rule_name("edge", "path_?a");
        assert_ne!(a, b);
        let long = rule_name("edge", &"x".repeat(300));
        assert_eq!(long.len(), 64);
        for name in [a, b, long] {
            Policy::unlimited(name).unwrap();
        }
    }

    fn refused(text: &str) -> String {
        Domain::parse(text, "f.yaml").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_named_by_field() {
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"
            ),
            "f.yaml: descriptors[0].rate_limit.unit: unknown unit \"fortnight\": second, minute, hour, day, week, month or year"
        );
        assert!(
            refused("domain: d\ndescriptors:\n  - key: a\n    shadow_mod: true\n")
                .starts_with("f.yaml: descriptors[0]: unknown field `shadow_mod`")
        );
        assert_eq!(
            refused("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second}\n"),
            "f.yaml: descriptors[0].rate_limit.requests_per_unit: missing (or unlimited: true)"
        );
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n"
            ),
            "f.yaml: descriptors[0].rate_limit.unit: unlimited: true takes no unit"
        );
        assert_eq!(
            refused("domain: d\ndescriptors:\n  - key: a\n  - key: a\n"),
            "f.yaml: descriptors[1]: the same key and value as descriptors[0]"
        );
        assert_eq!(
            refused(
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: nope}]}\n"
            ),
            "f.yaml: descriptors[0].rate_limit.replaces[0].name: no rate_limit in domain \"d\" is named \"nope\""
        );
        assert_eq!(
            refused("domain: ''\n"),
            "f.yaml: domain: must be 1 to 256 bytes"
        );
        assert_eq!(
            refused("domain: d\ndescriptors:\n  - key: a\n    value: x*y\n"),
            "f.yaml: descriptors[0].value: a * is supported only at the end (a prefix)"
        );
        assert!(refused("descriptors: []\n").contains("missing field `domain`"));
        assert!(refused("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n")
            .starts_with("f.yaml: descriptors[0].rate_limit.requests_per_unit: "));
    }

    #[test]
    fn depth_is_bounded() {
        let mut text = String::from("domain: d\ndescriptors:\n");
        for level in 0..=MAX_DEPTH {
            let indent = "  ".repeat(2 * level + 1);
            text.push_str(&format!(
                "{indent}- key: k{level}\n{indent}  descriptors:\n"
            ));
        }
        assert!(refused(&text).contains(&format!("deeper than {MAX_DEPTH} levels")));
    }
}
