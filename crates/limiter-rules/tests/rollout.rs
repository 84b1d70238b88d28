//! A staged rollout enforces a stable share of clients, chosen by client hash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use limiter_core::{ClientKeyHasher, Tier};
use limiter_rules::{Query, RuleSet, RuleSpec, from_json};

#[test]
fn ten_percent_is_ten_percent_and_stable() {
    let spec: RuleSpec = from_json(
        br#"{"name": "trial", "scope": "global", "rollout_percent": 10, "quotas": [{"limit": 5, "period": "1m"}]}"#,
    )
    .unwrap();
    let rules = RuleSet::new(1, true, [spec.into_rule().unwrap()]);
    let hasher = ClientKeyHasher::new(b"rollout-test-secret!").unwrap();
    let treat = |i: usize| {
        let found = rules.resolve(&Query {
            tier: Tier::Anonymous,
            client: hasher.hash(format!("ip:10.0.{}.{}", i / 256, i % 256)),
            ip: None,
            api_key: None,
            resource: None,
        });
        // Enforced: the rule decides. Otherwise it is the shadow beside the tier policy.
        assert!(found.rule.is_some() != found.shadow.is_some());
        found.rule.is_some()
    };
    let enforced = (0..10_000).filter(|&i| treat(i)).count();
    assert!(
        (800..=1200).contains(&enforced),
        "{enforced} of 10,000 enforced"
    );
    for i in 0..1000 {
        assert_eq!(treat(i), treat(i), "client {i} changed treatment");
    }
}
