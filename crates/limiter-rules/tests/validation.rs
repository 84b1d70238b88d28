//! Every bad rule is refused with the field it is wrong in, without echoing a key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use limiter_rules::{Document, Edit, EditError, RuleSpec, from_json};

fn refused(json: &str) -> limiter_rules::RuleError {
    match from_json::<RuleSpec>(json.as_bytes()) {
        Err(e) => e,
        Ok(spec) => spec.into_rule().expect_err(json),
    }
}

#[test]
fn bad_rules_name_their_field() {
    let q = r#""quotas": [{"limit": 5, "period": "1m"}]"#;
    for (json, field) in [
        (format!(r#"{{"name": "a", "scope": "galaxy", {q}}}"#), "scope"),
        (format!(r#"{{"name": "a", {q}}}"#), "scope"),
        (format!(r#"{{"name": "a", "scope": "ip", "match": "203.0.113.0/33", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "ip", "match": "203.0.113.7/24", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "ip", "match": "not-an-ip", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "ip", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "tier", "match": "gold", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "global", "match": "x", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "api_key", "match": "sha256:abc", {q}}}"#), "match"),
        (format!(r#"{{"name": "a", "scope": "api_key", "match": "", {q}}}"#), "match"),
        (format!(r#"{{"name": "a b", "scope": "global", {q}}}"#), "name"),
        (format!(r#"{{"scope": "global", {q}}}"#), "name"),
        (format!(r#"{{"name": "a", "scope": "global", "resource": "has space", {q}}}"#), "resource"),
        (format!(r#"{{"name": "a", "scope": "global", "resource": "", {q}}}"#), "resource"),
        (format!(r#"{{"name": "a", "scope": "global", "rollout_percent": 101, {q}}}"#), "rollout_percent"),
        (format!(r#"{{"name": "a", "scope": "global", "mode": "loud", {q}}}"#), "mode"),
        (format!(r#"{{"name": "a", "scope": "global", "colour": "red", {q}}}"#), "colour"),
        (r#"{"name": "a", "scope": "global"}"#.to_owned(), "quotas"),
        (r#"{"name": "a", "scope": "global", "quotas": []}"#.to_owned(), "quotas"),
        (r#"{"name": "a", "scope": "global", "quotas": [{"limit": 0, "period": "1m"}]}"#.to_owned(), "quotas[0]"),
        (r#"{"name": "a", "scope": "global", "quotas": [{"limit": 1, "period": "0s"}]}"#.to_owned(), "quotas[0]"),
        (r#"{"name": "a", "scope": "global", "unlimited": true, "quotas": [{"limit": 1, "period": "1s"}]}"#.to_owned(), "unlimited"),
        (format!(r#"{{"name": "a", "scope": "global", "quotas": [{}]}}"#, [r#"{"limit": 1, "period": "1s"}"#; 9].join(",")), "quotas"),
    ] {
        let e = refused(&json);
        assert!(
            e.field() == field,
            "{json}: field {:?}, wanted {field:?} ({e})",
            e.field()
        );
    }
}

#[test]
fn api_keys_are_kept_only_as_hashes() {
    let raw = "k-raw-secret-key-0123456789";
    let spec: RuleSpec = from_json(
        format!(r#"{{"name": "k", "scope": "api_key", "match": "{raw}", "quotas": [{{"limit": 5, "period": "1m"}}]}}"#)
            .as_bytes(),
    )
    .unwrap();
    assert!(!format!("{spec:?}").contains(raw));
    let rule = spec.into_rule().unwrap();
    let json = serde_json::to_string(&rule).unwrap();
    assert!(!json.contains(raw), "{json}");
    assert!(!format!("{rule:?}").contains(raw));
    assert!(json.contains("\"match\":\"sha256:"), "{json}");
    // The hash form reads back as the same rule: an export imports unchanged.
    let again: RuleSpec = from_json(json.as_bytes()).unwrap();
    assert_eq!(again.into_rule().unwrap(), rule);
    // A bad key in an error is never echoed.
    let e = refused(&format!(
        r#"{{"name": "k", "scope": "api_key", "match": "{}", "quotas": [{{"limit": 5, "period": "1m"}}]}}"#,
        "x".repeat(2000)
    ));
    assert!(!e.to_string().contains("xxxx"), "{e}");
}

#[test]
fn edits_are_all_or_nothing() {
    let rule = |name: &str| {
        from_json::<RuleSpec>(
            format!(r#"{{"name": "{name}", "scope": "global", "quotas": [{{"limit": 5, "period": "1m"}}]}}"#).as_bytes(),
        )
        .unwrap()
        .into_rule()
        .unwrap()
    };
    let doc = Document::default();
    let one = doc.apply(Edit::Add(rule("a"))).unwrap();
    assert_eq!((one.version, one.rules.len()), (1, 1));
    assert_eq!(
        one.apply(Edit::Add(rule("a"))).unwrap_err(),
        EditError::Duplicate
    );
    assert_eq!(
        one.apply(Edit::Remove("b".into())).unwrap_err(),
        EditError::NotFound
    );
    assert_eq!(
        one.apply(Edit::Replace(rule("b"))).unwrap_err(),
        EditError::NotFound
    );
    let dup = one.apply(Edit::ReplaceAll {
        rules: vec![rule("x"), rule("x")],
        enforce: None,
    });
    assert!(matches!(dup, Err(EditError::Invalid(_))));
    let off = one.apply(Edit::Enforce(false)).unwrap();
    assert!(!off.enforce && off.version == 2 && off.rules.len() == 1);
    // Round trip through the stored form.
    assert_eq!(Document::from_json(&off.to_json()).unwrap(), off);
}

#[test]
fn resources_print_as_they_read_back() {
    for (given, kept) in [
        ("/api/", "/api"),
        ("/api//", "/api"),
        ("//", "/"),
        ("/", "/"),
        ("i/upl:::a//", "i/upl:::a//"),
        ("login", "login"),
    ] {
        let json = format!(
            r#"{{"name": "r", "scope": "global", "resource": "{given}", "quotas": [{{"limit": 1, "period": "1s"}}]}}"#
        );
        let rule = from_json::<RuleSpec>(json.as_bytes())
            .unwrap()
            .into_rule()
            .unwrap();
        assert_eq!(rule.resource_filter().unwrap().as_str(), kept, "{given}");
        let again: RuleSpec = from_json(serde_json::to_string(&rule).unwrap().as_bytes()).unwrap();
        assert_eq!(again.into_rule().unwrap(), rule, "{given}");
    }
}
