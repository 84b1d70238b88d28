//! The configuration: file < environment < overrides, TOML or YAML, and every mistake named
//! by its key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::result_large_err,
    reason = "figment's Jail closures return its Error"
)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;
use limiter_core::Quota;
use limiter_outbound::OutboundConfig;
use serde_json::json;

const FILE: &str = r#"
[defaults]
quotas = [{ limit = 5, period = "1s" }]
max_delay = "30s"

[[hosts]]
host = "api.example.org"
in_flight = 4
quotas = [{ limit = 10, period = "1s" }, { limit = 5000, period = "1h" }]
max_delay = "10s"
aimd = { min = 1, max = 20 }

[[hosts.roles]]
role = "artifact"
quotas = [{ limit = 2, period = "1s" }]
paths = ["/download/"]
"#;

fn no_overrides() -> serde_json::Value {
    json!({})
}

#[test]
fn file_then_environment_then_overrides() {
    Jail::expect_with(|jail| {
        jail.create_file("outbound.toml", FILE)?;
        let path = Path::new("outbound.toml");
        let config = OutboundConfig::load(Some(path), no_overrides()).unwrap();
        assert_eq!(config.hosts[0].host, "api.example.org");
        assert_eq!(config.hosts[0].quotas[1], Quota::per_hour(5000).unwrap());
        assert_eq!(config.hosts[0].roles[0].paths, ["/download/"]);
        assert_eq!(config.defaults.max_delay, Duration::from_secs(30));

        jail.set_env("LIMITER_OUTBOUND_DEFAULTS__MAX_DELAY", "5s");
        let config = OutboundConfig::load(Some(path), no_overrides()).unwrap();
        assert_eq!(config.defaults.max_delay, Duration::from_secs(5));

        let overrides = json!({"defaults": {"max_delay": "1s"}});
        let config = OutboundConfig::load(Some(path), overrides).unwrap();
        assert_eq!(config.defaults.max_delay, Duration::from_secs(1));
        // The rest of the file stands.
        assert_eq!(config.hosts.len(), 1);
        Ok(())
    });
}

#[test]
fn yaml_reads_the_same() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "outbound.yaml",
            "defaults:\n  quotas: [{limit: 5, period: 1s}]\n  max_delay: 30s\nhosts:\n  - host: api.example.org\n    quotas: [{limit: 10, period: 1s}]\n    roles:\n      - role: artifact\n        quotas: [{limit: 2, period: 1s}]\n",
        )?;
        let config =
            OutboundConfig::load(Some(Path::new("outbound.yaml")), no_overrides()).unwrap();
        assert_eq!(config.hosts[0].roles[0].role, "artifact");
        Ok(())
    });
}

#[test]
fn mistakes_are_named_by_their_key() {
    let cases = [
        ("[defaults]\ncolour = 1\n", "colour"),
        ("[defaults]\nquotas = []\n", "defaults.quotas"),
        ("[defaults]\nmax_delay = \"soon\"\n", "max_delay"),
        ("[defaults]\nmax_delay = \"2h\"\n", "defaults.max_delay"),
        ("[[hosts]]\nhost = \"a b\"\n", "hosts[0].host"),
        (
            "[[hosts]]\nhost = \"a\"\n[[hosts]]\nhost = \"A\"\n",
            "hosts[1].host",
        ),
        (
            "[[hosts]]\nhost = \"a\"\nin_flight = 0\n",
            "hosts[0].in_flight",
        ),
        (
            "[[hosts]]\nhost = \"a\"\naimd = { min = 5, max = 1 }\n",
            "hosts[0].aimd",
        ),
        (
            "[[hosts]]\nhost = \"a\"\nquotas = [{ limit = 0, period = \"1s\" }]\n",
            "limit",
        ),
        (
            "[[hosts]]\nhost = \"a\"\n[[hosts.roles]]\nrole = \"r\"\nquotas = []\n",
            "hosts[0].roles[0].quotas",
        ),
        (
            "[[hosts]]\nhost = \"a\"\n[[hosts.roles]]\nrole = \"r\"\nquotas = [{ limit = 1, period = \"1s\" }]\npaths = [\"download\"]\n",
            "hosts[0].roles[0].paths[0]",
        ),
    ];
    for (text, key) in cases {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", text)?;
            let error = OutboundConfig::load(Some(Path::new("bad.toml")), no_overrides())
                .expect_err(text)
                .to_string();
            assert!(error.contains(key), "{text}: {error}");
            Ok(())
        });
    }
    let missing = OutboundConfig::load(
        Some(Path::new("/nonexistent/outbound.toml")),
        no_overrides(),
    );
    assert!(missing.unwrap_err().to_string().contains("config"));
}
