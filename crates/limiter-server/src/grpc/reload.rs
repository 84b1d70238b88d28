//! Reloading the descriptor config when its file (or a file in its directory) changes: a
//! new config replaces the old one whole, between two requests; one that cannot be read or
//! is refused is logged and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use limiter_rls::RlsConfig;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::LiveConfig;

/// Changes arriving within this of each other are read once (an editor writes, renames
/// and touches; Kubernetes swaps a symbolic link).
const SETTLE: Duration = Duration::from_millis(150);

/// Without file events (a watcher that cannot start), the file is read this often.
const POLL: Duration = Duration::from_secs(2);

/// Watches `path` and puts each good new config in `live`, until the future is dropped.
pub(crate) async fn watch(path: PathBuf, live: LiveConfig) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A file is watched through its directory: a file replaced by a rename (editors,
    // ConfigMaps) is a new inode that a watch on the old one would never see.
    let target = if path.is_dir() {
        path.clone()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| w.watch(&target, RecursiveMode::NonRecursive).map(|()| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, path = %target.display(), "cannot watch the rate limit service config; reading it every 2 s instead");
            None
        }
    };
    let polling = _watcher.is_none();
    loop {
        if polling {
            tokio::time::sleep(POLL).await;
        } else {
            if rx.recv().await.is_none() {
                return;
            }
            // Let the burst of events of one change settle.
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
        }
        reload(&path, &live).await;
    }
}

/// Reads `path` again; puts it in force if it is good and differs.
pub(crate) async fn reload(path: &Path, live: &LiveConfig) {
    let read = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || RlsConfig::load(&path)).await
    };
    match read {
        Ok(Ok(config)) => {
            if **live.load() == config {
                return;
            }
            let domains = config.domains().len();
            let limits: usize = config.domains().map(limiter_rls::Domain::limits).sum();
            live.store(Arc::new(config));
            metrics::counter!("ratelimit_rls_config_reloads_total", "result" => "ok").increment(1);
            metrics::gauge!("ratelimit_rls_config_domains").set(domains as f64);
            tracing::info!(domains, limits, "rate limit service config reloaded");
        }
        Ok(Err(e)) => {
            metrics::counter!("ratelimit_rls_config_reloads_total", "result" => "error")
                .increment(1);
            tracing::error!(error = %e, "rate limit service config refused; the previous one stays in force");
        }
        Err(e) => tracing::error!(error = %e, "rate limit service config reload failed"),
    }
}
