//! Configuration: flags over environment over file over defaults, and clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::*;

/// Runs `ratelimitd` with a config file holding `file` (if any), the `env` variables, the
/// `flags`, then `last` (a subcommand, or nothing for a real start).
fn run_with(
    file: Option<&str>,
    env: &[(&str, &str)],
    flags: &[&str],
    last: &[&str],
) -> (i32, String, String) {
    let file = file.map(config_file);
    let mut cmd = command();
    // `ratelimitd config` writes nothing: the built-in default is what these tests read.
    cmd.env_remove("RATELIMIT_RULES_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut args: Vec<&str> = flags.to_vec();
    if let Some(f) = &file {
        args.extend(["--config", path(f)]);
    }
    args.extend(last);
    run(cmd, &args)
}

/// The effective configuration `ratelimitd config` prints for these inputs.
fn effective(file: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> Value {
    let (code, out, err) = run_with(file, env, flags, &["config"]);
    assert_eq!(code, 0, "ratelimitd config failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn each_level_overrides_the_one_below() {
    let file = "listen = \"127.0.0.1:9001\"\nlog_format = \"json\"\n[fallback]\ndeadline_ms = 30\n";
    let env = [
        ("RATELIMIT_LISTEN", "127.0.0.1:9002"),
        ("RATELIMIT_FALLBACK__DEADLINE_MS", "40"),
    ];

    let defaults = effective(None, &[], &[]);
    assert_eq!(defaults["listen"], "127.0.0.1:8080");
    assert_eq!(defaults["fallback"]["deadline_ms"], 50);
    assert_eq!(defaults["log_format"], "text");

    let from_file = effective(Some(file), &[], &[]);
    assert_eq!(from_file["listen"], "127.0.0.1:9001");
    assert_eq!(from_file["fallback"]["deadline_ms"], 30);
    assert_eq!(from_file["log_format"], "json");

    let from_env = effective(Some(file), &env, &[]);
    assert_eq!(from_env["listen"], "127.0.0.1:9002");
    assert_eq!(from_env["fallback"]["deadline_ms"], 40);
    assert_eq!(
        from_env["log_format"], "json",
        "the file still sets what env does not"
    );

    let from_flag = effective(
        Some(file),
        &env,
        &["--listen", "127.0.0.1:9003", "--log-format", "text"],
    );
    assert_eq!(from_flag["listen"], "127.0.0.1:9003");
    assert_eq!(from_flag["log_format"], "text");
    assert_eq!(from_flag["fallback"]["deadline_ms"], 40);
}

#[test]
fn the_config_path_and_secrets_come_from_the_environment_too() {
    let file = config_file("hash_secret = \"from-the-file-0123456789\"\n");
    let mut cmd = command();
    cmd.env("RATELIMIT_CONFIG", path(&file));
    let (code, out, err) = run(cmd, &["config"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["hash_secret"], "<redacted>",
        "secrets are never printed"
    );
    assert!(!out.contains("from-the-file"));

    // A secret made of digits stays a string, and the URL's password is hidden.
    let mut cmd = command();
    cmd.env("RATELIMIT_HASH_SECRET", "12345678901234567890")
        .env("RATELIMIT_REDIS_URL", "redis://user:pw-9876@127.0.0.1:6379");
    let (code, out, err) = run(cmd, &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("pw-9876") && !out.contains("12345678901234567890"));
    assert!(out.contains("127.0.0.1:6379"));

    // Every form of URL: a Unix socket's password is a query parameter.
    let mut cmd = command();
    cmd.env("RATELIMIT_HASH_SECRET", "12345678901234567890")
        .env(
            "RATELIMIT_REDIS_URL",
            "redis+unix:///run/redis/redis.sock?db=2&pass=pw-5432",
        );
    let (code, out, err) = run(cmd, &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("pw-5432"), "{out}");
    assert!(out.contains("redis.sock?db=2&pass=<redacted>"), "{out}");
}

fn refused(file: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> String {
    // Not `config`: the real start-up must refuse, before binding anything.
    let (code, out, err) = run_with(file, env, flags, &[]);
    assert_eq!(code, 2, "expected exit code 2; stdout {out}\nstderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn an_invalid_file_fails_at_start_naming_the_field() {
    let cases = [
        (
            "[fallback]\ndeadline_ms = \"soon\"\n",
            "fallback.deadline_ms",
        ),
        ("[fallback]\ndeadline_ms = 0\n", "fallback.deadline_ms"),
        ("listen = \"not an address\"\n", "listen"),
        ("listn = \"127.0.0.1:1\"\n", "listn"),
        (
            "[tiers.anonymous]\nquotas = [{ limit = 0, period = \"1m\" }]\n",
            "tiers",
        ),
        (
            "[tiers.premium]\nquotas = [{ limit = 10, period = \"soon\" }]\n",
            "tiers",
        ),
        (
            "[[api_keys]]\nsha256 = \"abc\"\ntier = \"premium\"\n",
            "api_keys[0].sha256",
        ),
        (
            "[[api_keys]]\nsha256 = \"00\"\ntier = \"gold\"\n",
            "api_keys",
        ),
        ("trusted_proxies = [\"10.0.0.0/33\"]\n", "trusted_proxies"),
        ("[memory]\nmax_buckets = 0\n", "memory.max_buckets"),
        ("[redis]\nconnections = 0\n", "redis.connections"),
        ("[redis]\nmax_batch = 0\n", "redis.max_batch"),
        ("this is not toml", "line 1, column 6"),
    ];
    for (file, field) in cases {
        let err = refused(Some(file), &[], &[]);
        assert!(
            err.contains(field),
            "error for {file:?} does not name {field}: {err}"
        );
    }
}

#[test]
fn missing_files_short_secrets_and_redis_without_a_secret_are_refused() {
    let err = refused(None, &[], &["--config", "/nonexistent/ratelimitd.toml"]);
    assert!(
        err.contains("config") && err.contains("/nonexistent/ratelimitd.toml"),
        "{err}"
    );
    let err = refused(None, &[], &["--redis-url", "redis://127.0.0.1:6379"]);
    assert!(
        err.contains("hash_secret") && err.contains("required"),
        "{err}"
    );
    let err = refused(None, &[("RATELIMIT_HASH_SECRET", "short")], &[]);
    assert!(
        err.contains("hash_secret") && err.contains("16 bytes"),
        "{err}"
    );
    let err = refused(
        None,
        &[("RATELIMIT_FALLBACK__EXPECTED_WORKERS", "many")],
        &[],
    );
    assert!(err.contains("fallback.expected_workers"), "{err}");
    let err = refused(None, &[], &["--listen", "not-an-address"]);
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test]
async fn a_file_configures_the_running_service() {
    let file = config_file("[tiers.anonymous]\nquotas = [{ limit = 3, period = \"1h\" }]\n");
    let server = Server::start(&["--config", path(&file)]);
    let http = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                http.get(server.url("/v1/whoami"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    let mut child = command()
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"my-api-key\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        limiter_http::ApiKeys::hash_key("my-api-key")
    );
}

#[test]
fn the_example_file_states_exactly_the_defaults() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let example = std::fs::read_to_string(format!("{root}/ratelimitd.example.toml")).unwrap();
    assert_eq!(
        effective(Some(&example), &[], &[]),
        effective(None, &[], &[])
    );
    // And the fleet's file is valid.
    let fleet = std::fs::read_to_string(format!("{root}/docker/ratelimitd.toml")).unwrap();
    assert_eq!(
        effective(Some(&fleet), &[], &[])["api_keys"][0]["tier"],
        "api_key"
    );
}

#[test]
fn a_tier_can_become_unlimited_or_limited() {
    let file = "[tiers.anonymous]\nunlimited = true\n[tiers.admin]\nquotas = [{ limit = 7, period = \"1s\" }]\n";
    let shown = effective(Some(file), &[], &[]);
    assert_eq!(shown["tiers"]["anonymous"]["unlimited"], true, "{shown}");
    assert!(
        shown["tiers"]["anonymous"].get("quotas").is_none(),
        "{shown}"
    );
    assert_eq!(shown["tiers"]["admin"]["quotas"][0]["limit"], 7, "{shown}");
    // Tiers not given keep their defaults.
    assert_eq!(
        shown["tiers"]["premium"]["quotas"][0]["limit"], 5000,
        "{shown}"
    );
}

/// Every key of `expected`, at any depth, is in `actual` with the same value; `actual` may
/// have more (settings added since).
fn holds(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            for (key, value) in expected {
                let here = format!("{at}.{key}");
                let found = actual.get(key).unwrap_or_else(|| panic!("{here} is gone"));
                holds(found, value, &here);
            }
        }
        _ => assert_eq!(actual, expected, "{at} changed"),
    }
}

#[test]
fn every_setting_keeps_its_key_and_value() {
    // `ratelimitd config` as it printed the defaults (and the example file, which states
    // exactly them) when the configuration was reorganised: operators' files and scripts
    // rely on these keys.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let recorded: Value =
        serde_json::from_str(include_str!("fixtures/effective-config.json")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/ratelimitd.example.toml")).unwrap();
    holds(&effective(None, &[], &[]), &recorded, "config");
    holds(&effective(Some(&example), &[], &[]), &recorded, "config");
}
