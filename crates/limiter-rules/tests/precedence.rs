//! Which rule decides when several match: a table of overlapping rules and requests, and
//! the explain walk agreeing with every resolution.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use limiter_core::{ClientKeyHasher, Tier};
use limiter_rules::{KeyHash, Query, Rule, RuleSet, RuleSpec, Treatment, from_json};

fn rule(json: &str) -> Rule {
    from_json::<RuleSpec>(json.as_bytes())
        .unwrap()
        .into_rule()
        .unwrap()
}

fn overlapping() -> RuleSet {
    let q = r#""quotas": [{"limit": 5, "period": "1m"}]"#;
    RuleSet::new(
        7,
        true,
        [
            rule(&format!(
                r#"{{"name": "everyone", "scope": "global", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "anon", "scope": "tier", "match": "anonymous", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "login-all", "scope": "global", "resource": "login", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "login-anon", "scope": "tier", "match": "anonymous", "resource": "login", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "api", "scope": "global", "resource": "/api", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "api-upload", "scope": "global", "resource": "/api/upload", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "net16", "scope": "ip", "match": "203.0.0.0/16", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "net24", "scope": "ip", "match": "203.0.113.0/24", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "net24-login", "scope": "ip", "match": "203.0.113.0/24", "resource": "login", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "v6", "scope": "ip", "match": "2001:db8::/32", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "key", "scope": "api_key", "match": "k-abusive-0123456789", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "key-login", "scope": "api_key", "match": "k-abusive-0123456789", "resource": "login", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "admins", "scope": "tier", "match": "admin", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "disabled", "scope": "ip", "match": "198.51.100.0/24", "mode": "off", {q}}}"#
            )),
            rule(&format!(
                r#"{{"name": "trial", "scope": "ip", "match": "192.0.2.0/24", "mode": "shadow", {q}}}"#
            )),
        ],
    )
}

#[test]
fn the_most_specific_rule_decides() {
    let rules = overlapping();
    let hasher = ClientKeyHasher::new(b"precedence-test-secret").unwrap();
    let abusive = KeyHash::of(b"k-abusive-0123456789");
    let other_key = KeyHash::of(b"k-someone-else-0000");
    // (tier, ip, api key, resource) → deciding rule, shadow rule
    type Row<'a> = (
        Tier,
        Option<&'a str>,
        Option<KeyHash>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    #[rustfmt::skip]
    let table: &[Row<'_>] = &[
        (Tier::Anonymous, None, None, None, Some("anon"), None),
        (Tier::ApiKey, None, None, None, Some("everyone"), None),
        (Tier::Premium, None, None, Some("search"), Some("everyone"), None),
        (Tier::Anonymous, None, None, Some("login"), Some("login-anon"), None),
        (Tier::ApiKey, None, None, Some("login"), Some("login-all"), None),
        (Tier::ApiKey, None, None, Some("/api/items/3"), Some("api"), None),
        (Tier::ApiKey, None, None, Some("/api/upload/big"), Some("api-upload"), None),
        (Tier::ApiKey, None, None, Some("/api/uploads"), Some("api"), None),
        (Tier::ApiKey, None, None, Some("/apix"), Some("everyone"), None),
        (Tier::Anonymous, Some("203.0.9.9"), None, None, Some("net16"), None),
        (Tier::Anonymous, Some("203.0.113.7"), None, None, Some("net24"), None),
        (Tier::Anonymous, Some("203.0.113.7"), None, Some("login"), Some("net24-login"), None),
        (Tier::Anonymous, Some("203.0.113.7"), None, Some("/api/x"), Some("net24"), None),
        (Tier::Anonymous, Some("2001:db8:1::1"), None, None, Some("v6"), None),
        // An IPv4 client seen through an IPv6 socket.
        (Tier::Anonymous, Some("::ffff:203.0.113.7"), None, None, Some("net24"), None),
        (Tier::Anonymous, Some("2001:db9::1"), None, None, Some("anon"), None),
        (Tier::ApiKey, Some("203.0.113.7"), Some(abusive), None, Some("key"), None),
        (Tier::ApiKey, Some("203.0.113.7"), Some(abusive), Some("login"), Some("key-login"), None),
        (Tier::ApiKey, Some("203.0.113.7"), Some(other_key), None, Some("net24"), None),
        // Admins: only api_key and tier = admin rules.
        (Tier::Admin, Some("203.0.113.7"), None, Some("login"), Some("admins"), None),
        (Tier::Admin, None, Some(abusive), None, Some("key"), None),
        // Off is absent; shadow is recorded beside the next enforced rule.
        (Tier::Anonymous, Some("198.51.100.1"), None, None, Some("anon"), None),
        (Tier::Anonymous, Some("192.0.2.1"), None, None, Some("anon"), Some("trial")),
    ];
    for (i, &(tier, ip, api_key, resource, decides, shadow)) in table.iter().enumerate() {
        let query = Query {
            tier,
            client: hasher.hash(format!("client-{i}")),
            ip: ip.map(|ip| ip.parse().unwrap()),
            api_key,
            resource,
        };
        let found = rules.resolve(&query);
        assert_eq!(found.rule.map(Rule::name), decides, "row {i}: {query:?}");
        assert_eq!(found.shadow.map(Rule::name), shadow, "row {i}: shadow");

        // The explain walk lists every match in order; its first enforced one decides.
        let explained = rules.explain(&query);
        let first_enforced = explained
            .iter()
            .find(|(_, t)| *t == Treatment::Enforced)
            .map(|(r, _)| r.name());
        assert_eq!(first_enforced, decides, "row {i}: explain");
        let first_shadow = explained
            .iter()
            .take_while(|(_, t)| *t == Treatment::Shadow)
            .map(|(r, _)| r.name())
            .next();
        assert_eq!(first_shadow, shadow, "row {i}: explain shadow");
    }
}

#[test]
fn no_rules_leave_the_tier_in_charge() {
    let hasher = ClientKeyHasher::new(b"precedence-test-secret").unwrap();
    let empty = RuleSet::new(0, true, []);
    let query = Query {
        tier: Tier::Anonymous,
        client: hasher.hash("x"),
        ip: Some("203.0.113.7".parse().unwrap()),
        api_key: None,
        resource: Some("login"),
    };
    assert!(empty.resolve(&query).rule.is_none());
    assert!(empty.explain(&query).is_empty());
}
