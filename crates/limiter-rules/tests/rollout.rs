//! A staged rollout enforces a stable share of clients, chosen by client hash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use limiter_core::{ClientKeyHasher, Tier};
use limiter_rules::{Query, RuleSet, RuleSpec, Treatment, from_json};

#[test]
fn ten_percent_is_ten_percent_and_stable() {
    let spec: RuleSpec = from_json(
        br#"{"name": "trial", "scope": "global", "rollout_percent": 10, "quotas": [{"limit": 5, "period": "1m"}]}"#,
    )
    .unwrap();
    let trial = spec.into_rule().unwrap();
    let rules = RuleSet::new(1, true, [trial.clone()]);
    // The same rule in another document: another version, other rules around it, another
    // order. A client's treatment depends on the rule and the client only.
    let other: RuleSpec = from_json(
        br#"{"name": "other", "scope": "global", "rollout_percent": 50, "quotas": [{"limit": 9, "period": "1s"}]}"#,
    )
    .unwrap();
    let reloaded = RuleSet::new(42, true, [other.into_rule().unwrap(), trial]);
    let hasher = ClientKeyHasher::new(b"rollout-test-secret!").unwrap();
    let treat_in = |rules: &RuleSet, i: usize| {
        let found = rules.resolve(&Query {
            tier: Tier::Anonymous,
            client: hasher.hash(format!("ip:10.0.{}.{}", i / 256, i % 256)),
            ip: None,
            api_key: None,
            resource: None,
        });
        // Enforced: the rule decides. Otherwise it is a shadow beside what decides.
        assert!(found.rule.is_some() != found.shadow.is_some());
        found.rule.is_some()
    };
    let enforced: Vec<usize> = (0..10_000).filter(|&i| treat_in(&rules, i)).collect();
    assert!(
        (800..=1200).contains(&enforced.len()),
        "{} of 10,000 enforced",
        enforced.len()
    );
    for i in 0..10_000 {
        // In the other document "other" may decide first for some clients (its own 50 %),
        // so the trial's treatment is read from explain, which lists every match.
        let query = Query {
            tier: Tier::Anonymous,
            client: hasher.hash(format!("ip:10.0.{}.{}", i / 256, i % 256)),
            ip: None,
            api_key: None,
            resource: None,
        };
        let in_other = reloaded
            .explain(&query)
            .iter()
            .any(|(r, t)| r.name() == "trial" && *t == Treatment::Enforced);
        assert_eq!(
            in_other,
            enforced.binary_search(&i).is_ok(),
            "client {i} changed treatment"
        );
    }
}
