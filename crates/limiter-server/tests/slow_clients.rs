//! Slow and idle clients cannot hold `ratelimitd`'s door: a request header must arrive within
//! the header timeout, a body within the body timeout, an idle kept-alive connection is
//! closed after the keep-alive timeout, and connections over the cap are refused at once.
//! Each against the real binary over real sockets.
//!
//! (Before: 1,200 connections that sent half a request header were all still open 32 s
//! later: a few thousand such sockets exhaust a worker's file descriptors.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn server(http: &str) -> (tempfile::NamedTempFile, Server) {
    let file = config_file(&format!("[http]\n{http}\n"));
    let server = Server::start(&["--config", path(&file)]);
    (file, server)
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_headers_are_cut_off_at_the_header_timeout() {
    const CONNECTIONS: usize = 2_000;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let files = rlimit::increase_nofile_limit(4 * CONNECTIONS as u64).unwrap();
    assert!(
        files > CONNECTIONS as u64 + 100,
        "{files} open files allowed: raise the hard limit (ulimit -Hn) to run this test"
    );
    let (_file, server) = server("header_read_timeout_ms = 2000");
    let addr = server.addr;

    let mut half_open = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        // In waves the listen queue holds, so every connection reaches the server.
        if n % 250 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        half_open.spawn(async move {
            // From before the connection exists: the server cannot start its clock earlier.
            let asked = Instant::now();
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // From when it exists: a connection the listen queue held back (SYN retried)
            // starts late, and the server cannot have started its clock before this either
            // by more than the time the connection waited to be accepted.
            let opened = Instant::now();
            stream
                .write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: ratelimitd\r\nX-Slow: ")
                .await
                .unwrap();
            let answer = until_closed(&mut stream).await;
            (asked.elapsed(), opened.elapsed(), answer)
        });
    }
    // Meanwhile a normal client is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = client();
    let res = http.get(server.url("/v1/whoami")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let (mut since_asked, mut since_opened) = (Vec::new(), Vec::new());
    while let Some(done) = half_open.join_next().await {
        let (asked, opened, answer) = done.unwrap();
        assert!(
            answer.is_empty(),
            "answered {}",
            String::from_utf8_lossy(&answer)
        );
        since_asked.push(asked);
        since_opened.push(opened);
    }
    let first = since_asked.iter().min().unwrap();
    let last = since_opened.iter().max().unwrap();
    eprintln!("{CONNECTIONS} half-sent headers held their connections {first:?} to {last:?}");
    assert!(
        *first >= TIMEOUT - Duration::from_millis(20),
        "closed after {first:?}, before the {TIMEOUT:?} header timeout"
    );
    // The timeout plus the time 2,000 connections take to be accepted and closed on a busy
    // machine: without a header timeout they would stay open until the test gave up.
    assert!(
        *last <= TIMEOUT + Duration::from_secs(5),
        "a half-sent header held its connection {last:?}"
    );
    let metrics = metrics(&http, &server).await;
    let closed = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"ratelimit_http_connections_closed_total{reason="header_timeout"} "#)
        })
        .unwrap_or_else(|| panic!("no header timeouts counted:\n{metrics}"));
    assert!(
        closed.parse::<u64>().unwrap() >= CONNECTIONS as u64,
        "{closed}"
    );
}

#[tokio::test]
async fn an_idle_connection_waits_the_keep_alive_timeout_not_the_header_timeout() {
    let (_file, server) = server("header_read_timeout_ms = 500\nkeep_alive_timeout_ms = 2500");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: ratelimitd\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = Instant::now();
    // Idle for three header timeouts: still open, and still serving.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: ratelimitd\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "closed while idle for {:?}",
        idle.elapsed()
    );
    // Then idle past the keep-alive timeout: closed.
    let idle = Instant::now();
    let rest = until_closed(&mut stream).await;
    assert!(rest.is_empty());
    let waited = idle.elapsed();
    assert!(
        (Duration::from_millis(2_400)..Duration::from_secs(6)).contains(&waited),
        "an idle connection was closed after {waited:?}, not the 2.5 s keep-alive timeout"
    );
}

#[tokio::test]
async fn a_later_request_on_a_kept_connection_has_the_header_timeout_too() {
    let (_file, server) = server("header_read_timeout_ms = 1000\nkeep_alive_timeout_ms = 30000");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: ratelimitd\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Half of the next request's header, then nothing.
    let started = Instant::now();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: ")
        .await
        .unwrap();
    assert!(until_closed(&mut stream).await.is_empty());
    let held = started.elapsed();
    assert!(
        (Duration::from_millis(950)..Duration::from_secs(5)).contains(&held),
        "a half-sent second header held its connection {held:?}, not the 1 s header timeout"
    );
}

#[tokio::test]
async fn an_idle_connection_outlives_hypers_own_30_s_header_timeout() {
    // hyper closes a connection that waits 30 s for a request header unless told not to:
    // that would cut every idle kept-alive connection at 30 s, under the 60 s idle timeout
    // of the load balancers in front, which then send on connections this server closed.
    let (_file, server) = server("keep_alive_timeout_ms = 40000");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /health/live HTTP/1.1\r\nHost: ratelimitd\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(31)).await;
    stream.write_all(request).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "closed after 31 s idle: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_408() {
    let (_file, server) = server("body_read_timeout_ms = 800");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/check HTTP/1.1\r\nHost: ratelimitd\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"client\": ",
        )
        .await
        .unwrap();
    let answer = String::from_utf8(until_closed(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("not received within 800 ms"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    const CAP: usize = 20;
    let (_file, server) = server(&format!(
        "max_connections = {CAP}\nheader_read_timeout_ms = 10000"
    ));
    // Hold every place with connections that have not sent a request yet.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        // A client that sends its request at once still reads the refusal: the server reads
        // what it sent before closing, so the close is not a reset.
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        extra
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: ratelimitd\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(until_closed(&mut extra).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains("retry-after: 1"), "{answer:?}");
    }
    // Places free up as connections close, and then everyone is served again.
    drop(held);
    let http = client();
    let mut refused_here = 0;
    let metrics = loop {
        let res = http.get(server.url("/metrics")).send().await;
        match res {
            Ok(res) if res.status() == 200 => break res.text().await.unwrap(),
            // Not every place is free yet: this request was refused, and counted.
            _ => refused_here += 1,
        }
        assert!(refused_here < 50, "places never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ratelimit_http_connections_refused_total "))
        .unwrap_or_else(|| panic!("no refusals counted:\n{metrics}"));
    assert_eq!(refused, (3 + refused_here).to_string());
    assert!(
        metrics.contains("ratelimit_http_connections_open "),
        "{metrics}"
    );
}
