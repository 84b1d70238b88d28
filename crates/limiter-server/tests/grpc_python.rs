//! A client that is not ours: Python `grpcio`, with stubs that `grpcio-tools` compiles at
//! test time from the `.proto` files shipped inside the `envoy-types` crate, calling a
//! running `ratelimitd` and getting the answers the tonic client gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::*;

const EDGE: &str = include_str!("fixtures/edge.yaml");

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The envoy-types crate's directory, as cargo resolved it.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types among the packages")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    Path::new(&manifest).parent().unwrap().to_path_buf()
}

/// The venv with grpcio and the compiled stubs, made when missing.
fn python_client() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rls-python");
    let out = Command::new("bash")
        .arg(root().join("scripts/python-rls-client.sh"))
        .arg(&venv)
        .arg(envoy_types_dir())
        .output()
        .expect("run scripts/python-rls-client.sh");
    assert!(
        out.status.success(),
        "the Python client could not be set up (it needs python3 with venv and pip, and PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv
}

/// Runs the Python client's `calls` against `addr`: its results.
fn python(venv: &Path, addr: std::net::SocketAddr, calls: &Value) -> Vec<Value> {
    let mut child = Command::new(venv.join("bin/python"))
        .arg(root().join("crates/limiter-server/tests/python/rls_client.py"))
        .arg(addr.to_string())
        .env("PYTHONPATH", venv.join("stubs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "calls": calls }).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    results["results"].as_array().unwrap().clone()
}

fn rls(domain: &str, descriptors: Value, hits: u32) -> Value {
    json!({ "rls": { "domain": domain, "descriptors": descriptors, "hits_addend": hits } })
}

fn one(entries: Value) -> Value {
    json!([{ "entries": entries }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_gets_the_answers_of_the_contract() {
    let venv = python_client();
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 9).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("edge.yaml"), EDGE).unwrap();
    let server = Server::start(&[
        "--redis-url",
        &url,
        "--hash-secret",
        SECRET,
        "--grpc-listen",
        "127.0.0.1:0",
        "--rls-config",
        dir.path().to_str().unwrap(),
    ]);
    ready(&client(), &server).await;
    let addr = server.grpc_addr();

    let address = one(json!([["remote_address", "192.0.2.44"]]));
    let calls = json!([
        { "health": "" },
        { "health": "envoy.service.ratelimit.v3.RateLimitService" },
        rls("edge", address.clone(), 0),
        rls("edge", address.clone(), 0),
        rls("edge", address.clone(), 0),
        rls("edge", address.clone(), 0),
        rls("edge", one(json!([["path", "/login"], ["remote_address", "192.0.2.44"]])), 0),
        rls("edge", one(json!([["path", "/static/app.js"]])), 0),
        rls("edge", one(json!([["user", "py-user"]])), 0),
        rls("edge", one(json!([["user", "py-user"]])), 0),
        rls("edge", one(json!([["plan", "bulk"]])), 4),
        rls("edge", json!([{ "entries": [["plan", "bulk"]], "hits_addend": 6 }]), 0),
        rls("edge", one(json!([["plan", "bulk"]])), 1),
        rls("nowhere", one(json!([["remote_address", "192.0.2.44"]])), 0),
        rls("", one(json!([["a", "b"]])), 0),
    ]);
    let r = python(&venv, addr, &calls);
    assert_eq!(r[0]["status"], "SERVING");
    assert_eq!(r[1]["status"], "SERVING");

    let minute3 = json!({ "name": "", "requests_per_unit": 3, "unit": "MINUTE" });
    for (i, left) in [(2, 2), (3, 1), (4, 0)] {
        assert_eq!(r[i]["overall_code"], "OK", "{}", r[i]);
        let s = &r[i]["statuses"][0];
        assert_eq!(s["code"], "OK");
        assert_eq!(s["current_limit"], minute3);
        assert_eq!(s["limit_remaining"], left);
        let reset = s["duration_until_reset_ms"].as_u64().unwrap();
        assert!((1..=60_000).contains(&reset), "{reset}");
    }
    assert_eq!(r[5]["overall_code"], "OVER_LIMIT");
    assert_eq!(r[5]["statuses"][0]["code"], "OVER_LIMIT");
    assert_eq!(r[5]["statuses"][0]["limit_remaining"], 0);
    let headers = r[5]["response_headers_to_add"].as_array().unwrap();
    assert!(
        headers.contains(&json!(["x-ratelimit-limit", "3"])),
        "{headers:?}"
    );
    assert!(headers.iter().any(|h| h[0] == "retry-after"), "{headers:?}");

    assert_eq!(r[6]["statuses"][0]["current_limit"]["name"], "login");
    assert_eq!(r[6]["statuses"][0]["limit_remaining"], 1);
    assert_eq!(
        r[7]["statuses"][0]["current_limit"],
        Value::Null,
        "unlimited"
    );
    assert_eq!(r[7]["statuses"][0]["limit_remaining"], u32::MAX);
    // Shadow: the second is over its limit of 1, and still OK.
    assert_eq!(r[9]["overall_code"], "OK");
    assert_eq!(r[9]["statuses"][0]["current_limit"]["requests_per_unit"], 1);
    assert_eq!(r[9]["statuses"][0]["limit_remaining"], 0);
    // hits_addend: 4 of 10, then a descriptor's own 6, then one more is over.
    assert_eq!(r[10]["statuses"][0]["limit_remaining"], 6);
    assert_eq!(r[11]["statuses"][0]["limit_remaining"], 0);
    assert_eq!(r[12]["overall_code"], "OVER_LIMIT");
    // Unknown domain: OK, a status without a limit.
    assert_eq!(r[13]["overall_code"], "OK");
    assert_eq!(
        r[13]["statuses"][0],
        json!({ "code": "OK", "current_limit": null, "limit_remaining": 0, "duration_until_reset_ms": null })
    );
    assert_eq!(r[14]["error"]["code"], "INVALID_ARGUMENT", "{}", r[14]);
}
