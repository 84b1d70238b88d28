//! Every transition of the circuit is a `tracing` event naming both states and the reason.
//!
//! Alone in its test binary: a thread-local subscriber can miss events while other tests on
//! other threads register the same callsites.

#![allow(clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use limiter_core::RateLimiter;
use support::{DOWN, KEY, UP, config, policy, setup};

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn every_transition_is_a_tracing_event_with_its_reason() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (fallback, primary) = setup(config());
    primary.set(DOWN);
    fallback.check(&KEY, &policy(), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_010)).await; // a failed probe
    primary.set(UP);
    tokio::time::sleep(Duration::from_millis(1_000)).await; // a successful one

    let log = String::from_utf8(captured.0.lock().clone()).unwrap();
    let transitions: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            let from = l.split("from=\"").nth(1)?.split('"').next()?;
            let to = l.split("to=\"").nth(1)?.split('"').next()?;
            Some((from, to))
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "open"),
            ("open", "half_open"),
            ("half_open", "closed")
        ],
        "{log}"
    );
    assert_eq!(
        log.matches("reason=").count(),
        2,
        "the opening and the failed probe give reasons: {log}"
    );
    assert!(log.contains("connection refused"), "{log}");
}
