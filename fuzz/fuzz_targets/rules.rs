//! Rule JSON as the admin API reads it (one rule, or a whole document as an import or the
//! store holds it): refused with a field, or accepted; never a panic. An accepted rule
//! prints to JSON that reads back as the same rule (an export imports unchanged), never
//! holds a raw API key, and resolves a request without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_core::{ClientKey, Tier};
use limiter_rules::{from_json, Document, Query, RuleSet, RuleSpec, Scope};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(spec) = from_json::<RuleSpec>(bytes) {
        let raw_match = spec.r#match.clone();
        if let Ok(rule) = spec.into_rule() {
            let json = serde_json::to_vec(&rule).expect("a rule prints");
            let again = from_json::<RuleSpec>(&json)
                .expect("a printed rule parses")
                .into_rule()
                .expect("a printed rule is valid");
            assert_eq!(again, rule);
            if let (Scope::ApiKey(_), Some(raw)) = (rule.scope(), raw_match) {
                if !raw.starts_with("sha256:") && raw.len() >= 8 {
                    let printed = String::from_utf8_lossy(&json);
                    assert!(!printed.contains(&raw), "a raw key was kept");
                }
            }
            let set = RuleSet::new(1, true, [rule]);
            for tier in Tier::ALL {
                for resource in [None, Some("login"), Some("/api/upload/1"), Some("/")] {
                    let _ = set.resolve(&Query {
                        tier,
                        client: ClientKey::from(0x0123_4567_89ab_cdef_u128),
                        ip: Some("203.0.113.7".parse().expect("an address")),
                        api_key: None,
                        resource,
                    });
                }
            }
        }
    }
    if let Ok(document) = Document::from_json(bytes) {
        let again = Document::from_json(&document.to_json()).expect("a printed document parses");
        assert_eq!(again, document);
    }
});
