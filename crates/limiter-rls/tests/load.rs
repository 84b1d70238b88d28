//! Loading a descriptor configuration from a file or a directory, as operators mount it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::fs;

use limiter_rls::{MAX_FILE_BYTES, RlsConfig};

const EDGE: &str = "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n";
const AUTH: &str = "domain: auth\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n";

#[test]
fn a_directory_holds_one_domain_per_yaml_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("edge.yaml"), EDGE).unwrap();
    fs::write(dir.path().join("auth.yml"), AUTH).unwrap();
    fs::write(dir.path().join("README.md"), "not a config").unwrap();
    fs::write(dir.path().join(".edge.yaml.swp"), "garbage: [").unwrap();
    fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
    let config = RlsConfig::load(dir.path()).unwrap();
    assert_eq!(config.domains().len(), 2);
    assert!(
        config
            .domain("edge")
            .unwrap()
            .find([("remote_address", "x")])
            .is_some()
    );
    assert!(
        config
            .domain("auth")
            .unwrap()
            .find([("user", "x")])
            .is_some()
    );
    assert_eq!(config.files().len(), 2);
}

#[test]
fn a_single_file_is_one_domain() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    fs::write(&file, EDGE).unwrap();
    let config = RlsConfig::load(&file).unwrap();
    assert_eq!(config.domains().len(), 1);
}

#[test]
fn two_files_for_one_domain_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), EDGE).unwrap();
    fs::write(dir.path().join("b.yaml"), EDGE).unwrap();
    let e = RlsConfig::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("b.yaml: domain: domain \"edge\" is also defined in"),
        "{e}"
    );
    assert!(e.contains("a.yaml"), "{e}");
}

#[test]
fn a_missing_path_an_oversized_file_and_a_bad_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = RlsConfig::load(&dir.path().join("nope.yaml")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");

    let big = dir.path().join("big.yaml");
    let filler = "#".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1);
    fs::write(&big, format!("{EDGE}{filler}")).unwrap();
    let e = RlsConfig::load(&big).unwrap_err().to_string();
    assert!(
        e.ends_with(&format!("larger than {MAX_FILE_BYTES} bytes")),
        "{e}"
    );

    let bad = dir.path().join("bad.yaml");
    fs::write(&bad, "domain: edge\ndescriptors: {}\n").unwrap();
    let e = RlsConfig::load(&bad).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: descriptors: invalid type", bad.display())),
        "{e}"
    );
}
