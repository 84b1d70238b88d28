//! The dashboard in a real browser: Debian's Chromium driven over WebDriver (fantoccini),
//! against a three-worker fleet on real Redis. Screenshots go to
//! `target/dashboard-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};
use support::*;

/// A chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver); scripts/test.sh does"
            )
        });
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1700"] }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/dashboard-screenshots"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_the_fleet_puts_a_rule_in_shadow_and_flips_the_kill_switch() {
    let redis = TestRedis::start().await;
    let url = own_database(&redis.url, 4).await;
    let file = config_file(
        "[tiers.anonymous]\nquotas = [{ limit = 3, period = \"1h\" }]\n[admin]\nheartbeat_ttl_ms = 2000\n",
    );
    let fleet: Vec<Server> = (0..3)
        .map(|i| {
            let mut cmd = command();
            cmd.env("RATELIMIT_WORKER_NAME", format!("worker-{i}"));
            Server::start_with(
                cmd,
                &[
                    "--config",
                    path(&file),
                    "--redis-url",
                    &url,
                    "--hash-secret",
                    SECRET,
                    "--admin-token",
                    ADMIN_TOKEN,
                ],
            )
        })
        .collect();
    let http = client();
    for w in &fleet {
        ready(&http, w).await;
    }
    add_rule(&http, &fleet[0], json!({"name": "login-limit", "scope": "global", "resource": "login", "quotas": [{"limit": 2, "period": "1m"}]})).await;
    // Traffic with raw IDs that must never appear: some admitted, some denied.
    let raw = ["203.0.113.77", "raw-client-secret-id"];
    for i in 0..12 {
        let _ = check(&http, &fleet[i % 3], json!({"client": raw[i % 2]})).await;
        let _ = check(
            &http,
            &fleet[i % 3],
            json!({"client": raw[i % 2], "resource": "login"}),
        )
        .await;
    }

    let driver = chromedriver();
    let b = browser(&driver).await;
    let base = format!("http://{}", fleet[0].addr);

    // No session: the login form, never data.
    b.goto(&format!("{base}/dashboard")).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/dashboard/login")
    );
    shot(&b, "login").await;

    // A wrong token is refused and says so.
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-admin-token-000")
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the refusal shown", Duration::from_secs(5), || async {
        b.find(Locator::Css("#message")).await.is_ok_and(|_| true)
            && text(&b, "#message").await.contains("not an admin token")
    })
    .await;
    assert!(
        b.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/dashboard/login")
    );
    shot(&b, "login-refused").await;

    // The right one, typed and submitted from the keyboard.
    let field = b.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field
        .send_keys(&format!("{ADMIN_TOKEN}\u{E007}"))
        .await
        .unwrap(); // Enter
    until("the dashboard", Duration::from_secs(10), || async {
        b.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/dashboard")
    })
    .await;
    until(
        "three workers and the chart",
        Duration::from_secs(15),
        || async {
            let rows = b
                .find_all(Locator::Css("#workers tbody tr"))
                .await
                .map_or(0, |r| r.len());
            let lines = b
                .find_all(Locator::Css("#chart polyline"))
                .await
                .map_or(0, |l| l.len());
            rows == 3 && lines == 3 && text(&b, "#workers tbody").await.contains("worker-2")
        },
    )
    .await;
    until("the rule listed", Duration::from_secs(5), || async {
        b.find(Locator::Css("tr[data-rule='login-limit'] select"))
            .await
            .is_ok()
    })
    .await;
    shot(&b, "dashboard").await;
    // On a phone's width: one column, nothing wider than the screen but the tables,
    // which scroll inside their panels.
    b.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is {overflow} px wider than a phone"
    );
    shot(&b, "phone").await;
    b.set_window_size(1280, 1700).await.unwrap();
    let source = b.source().await.unwrap();
    for id in raw {
        assert!(!source.contains(id), "{id} shown in the page");
    }

    // The rule goes to shadow from the page; another worker applies it.
    let select = b
        .find(Locator::Css("tr[data-rule='login-limit'] select"))
        .await
        .unwrap();
    select.select_by_value("shadow").await.unwrap();
    b.find(Locator::Css("tr[data-rule='login-limit'] button.apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the change confirmed", Duration::from_secs(5), || async {
        text(&b, "#rules-message")
            .await
            .contains("applied fleet-wide")
    })
    .await;
    let changed = Instant::now();
    until("worker-2 in shadow", Duration::from_secs(3), || async {
        let (_, _, explained) = admin(
            &http,
            &fleet[2],
            Method::POST,
            "/v1/admin/explain",
            Some(json!({"client": "c", "resource": "login"})),
            None,
        )
        .await;
        explained["matches"].as_array().is_some_and(|m| {
            m.iter()
                .any(|r| r["name"] == "login-limit" && r["mode"] == "shadow")
        })
    })
    .await;
    eprintln!(
        "worker-2 applied the shadow mode {:?} after the page's change",
        changed.elapsed()
    );
    shot(&b, "shadow").await;

    // The kill switch: flipped from the page, in force on the other workers.
    b.find(Locator::Css("#kill"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the switch shown off", Duration::from_secs(5), || async {
        text(&b, "#enforce-state").await.contains("OFF")
    })
    .await;
    until(
        "nothing denied on worker-1",
        Duration::from_secs(3),
        || async {
            let (_, body) = check(&http, &fleet[1], json!({"client": raw[0]})).await;
            body["allowed"] == true
        },
    )
    .await;
    shot(&b, "killswitch").await;
    b.find(Locator::Css("#kill"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the switch back on", Duration::from_secs(5), || async {
        text(&b, "#enforce-state").await == "on"
    })
    .await;
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_cookies_that_guard_themselves() {
    let server = Server::start(&["--admin-token", ADMIN_TOKEN]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Without a session: a redirect to the login form, and no data.
    let res = http.get(server.url("/dashboard")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/dashboard/login");
    let res = http
        .get(server.url("/v1/admin/workers"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A login behind TLS: the cookie is HttpOnly, SameSite=Strict, Secure, expiring.
    let res = http
        .post(server.url("/dashboard/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=28800",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{part} missing: {cookie}");
    }
    assert!(!cookie.contains(ADMIN_TOKEN));
    let session = cookie.split(';').next().unwrap().to_owned();

    // With it: the page (with its anti-CSRF token) and the data.
    let page = http
        .get(server.url("/dashboard"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let html = page.text().await.unwrap();
    assert!(html.len() < 100 * 1024);
    let csrf = html
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64);
    let res = http
        .get(server.url("/v1/admin/workers"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["workers"][0]["backend"], "memory");

    // A change without the anti-CSRF token is refused; with it, done.
    let off = json!({"enforce": false});
    let res = http
        .post(server.url("/v1/admin/enforcement"))
        .header("cookie", &session)
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(server.url("/v1/admin/enforcement"))
        .header("cookie", &session)
        .header("x-csrf-token", "0".repeat(64))
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(server.url("/v1/admin/enforcement"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(&off)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Logging out ends it.
    let res = http
        .post(server.url("/dashboard/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let res = http
        .get(server.url("/v1/admin/workers"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Wrong tokens count against the same budget as the admin API's (10 a minute).
    let mut refused = Vec::new();
    for _ in 0..12 {
        let res = http
            .post(server.url("/dashboard/login"))
            .form(&[("token", "wrong-token-0123456789")])
            .send()
            .await
            .unwrap();
        refused.push(res.status().as_u16());
    }
    assert_eq!(refused[0], 401);
    assert_eq!(*refused.last().unwrap(), 429, "{refused:?}");
    let logs = server.logs();
    assert!(!logs.contains("wrong-token-0123456789") && !logs.contains(ADMIN_TOKEN));
}
