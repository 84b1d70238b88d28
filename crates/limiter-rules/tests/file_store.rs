//! The file store: writes are all or nothing, a stale writer is refused, and the audit log
//! stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use limiter_rules::{
    Change, Document, Edit, FileStore, RuleSpec, RuleStore, StoreError, from_json,
};

fn change(version: u64) -> Change {
    Change {
        time_ms: 0,
        token: "test".into(),
        action: "create".into(),
        rule: None,
        version,
        before: serde_json::Value::Null,
        after: serde_json::Value::Null,
    }
}

fn add(doc: &Document, name: &str) -> Document {
    let spec: RuleSpec = from_json(
        format!(
            r#"{{"name": "{name}", "scope": "global", "quotas": [{{"limit": 1, "period": "1s"}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    doc.apply(Edit::Add(spec.into_rule().unwrap())).unwrap()
}

#[tokio::test]
async fn writes_are_versioned_atomic_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    let store = FileStore::new(&path).audit_max(3);
    assert_eq!(store.load().await.unwrap(), None);

    let mut doc = Document::default();
    for i in 0..10 {
        let next = add(&doc, &format!("r{i}"));
        store
            .store(doc.version, &next, &change(next.version))
            .await
            .unwrap();
        doc = next;
    }
    assert_eq!(store.load().await.unwrap(), Some(doc.clone()));
    // A writer that read version 3 is refused, and nothing changes.
    let stale = Document {
        version: 4,
        ..Document::default()
    };
    assert_eq!(
        store.store(3, &stale, &change(4)).await,
        Err(StoreError::Conflict { current: 10 })
    );
    assert_eq!(store.load().await.unwrap(), Some(doc));
    // No temporary file is left behind; the audit log is trimmed to its cap (at most twice
    // the cap between trims) and lists the newest first.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let changes = store.changes(100).await.unwrap();
    assert!((3..=6).contains(&changes.len()), "{}", changes.len());
    assert_eq!(changes[0].version, 10);

    // A file that is not a document is reported, never taken for an empty store.
    std::fs::write(&path, b"{ not rules").unwrap();
    assert!(matches!(store.load().await, Err(StoreError::Corrupt(_))));
}
