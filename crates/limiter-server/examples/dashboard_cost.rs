//! What the dashboard costs the fleet: checks/s of `limiter-bench` against the workers
//! with no browser open and with `--browsers` Chromium sessions on `/dashboard`, in
//! alternating rounds; and the page's weight and time to first render, from Chromium's
//! performance timing. Run by `scripts/bench-dashboard.sh`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a measuring tool: stop and say why"
)]

use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

struct Args {
    dashboard: String,
    token: String,
    webdriver: String,
    browsers: usize,
    rounds: usize,
    secs: u64,
    bench: String,
    targets: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        dashboard: String::new(),
        token: String::new(),
        webdriver: "http://127.0.0.1:9515".into(),
        browsers: 5,
        rounds: 5,
        secs: 5,
        bench: "target/release/limiter-bench".into(),
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dashboard" => a.dashboard = value,
            "--token" => a.token = value,
            "--webdriver" => a.webdriver = value,
            "--browsers" => a.browsers = value.parse().unwrap(),
            "--rounds" => a.rounds = value.parse().unwrap(),
            "--secs" => a.secs = value.parse().unwrap(),
            "--bench" => a.bench = value,
            "--target" => a.targets.push(value),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !a.dashboard.is_empty() && !a.token.is_empty() && !a.targets.is_empty(),
        "--dashboard, --token and --target are required"
    );
    a
}

async fn open(a: &Args) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1700"] }),
    );
    let b = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&a.webdriver)
        .await
        .expect("a Chromium session");
    b.goto(&format!("{}/dashboard/login", a.dashboard))
        .await
        .unwrap();
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&format!("{}\u{E007}", a.token))
        .await
        .unwrap();
    for _ in 0..100 {
        if b.find_all(Locator::Css("#chart polyline"))
            .await
            .map_or(0, |l| l.len())
            == 3
        {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dashboard did not render");
}

/// checks/s of one limiter-bench run against the targets.
fn bench(a: &Args) -> f64 {
    let mut cmd = Command::new(&a.bench);
    cmd.args([
        "--backend",
        "check",
        "--concurrency",
        "32",
        "--keys",
        "10000",
        "--json",
    ]);
    cmd.args(["--duration", &a.secs.to_string()]);
    // The checks are spread over every worker.
    for t in &a.targets {
        cmd.args(["--url", t]);
    }
    let out = cmd.output().expect("run limiter-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    report["checks_per_sec"].as_f64().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let a = args();
    // Weight and first render, from a fresh session.
    let first = open(&a).await;
    let timing = first
        .execute(
            "const nav = performance.getEntriesByType('navigation')[0];
             const res = performance.getEntriesByType('resource')
               .filter(r => r.name.includes('/dashboard/app.'))
               .map(r => ({name: r.name.split('/').pop(), bytes: r.decodedBodySize}));
             const paint = performance.getEntriesByType('paint').map(p => ({name: p.name, ms: p.startTime}));
             return {html_bytes: nav.decodedBodySize, resources: res, paint, dom_content_loaded_ms: nav.domContentLoadedEventEnd};",
            vec![],
        )
        .await
        .unwrap();
    println!("page: {timing}");
    first.close().await.unwrap();

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=a.rounds {
        let quiet = bench(&a);
        let mut open_now = Vec::new();
        for _ in 0..a.browsers {
            open_now.push(open(&a).await);
        }
        let watched = bench(&a);
        for b in open_now {
            b.close().await.unwrap();
        }
        println!(
            "round {round}: {quiet:.0} checks/s without, {watched:.0} with {} browsers",
            a.browsers
        );
        ratios.push(watched / quiet);
        without.push(quiet);
        with.push(watched);
    }
    println!(
        "median: {:.0} without, {:.0} with {} browsers; ratio (median of rounds) {:.3}",
        median(without),
        median(with),
        a.browsers,
        median(ratios)
    );
}
