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

/// With file events, the file is still read this often, for changes no event shows.
const LOOK: Duration = Duration::from_secs(10);

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
    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "watching the rate limit service config"),
        })
        .and_then(|mut w| w.watch(&target, RecursiveMode::NonRecursive).map(|()| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, path = %target.display(), "cannot watch the rate limit service config; reading it every 2 s instead");
            None
        }
    };
    // Events miss what happens outside the watched directory (a symbolic link to it
    // swapped, the directory replaced): a look every `LOOK` catches those, at the cost of
    // a read when nothing changed.
    let every = if _watcher.is_some() { LOOK } else { POLL };
    // The last refusal logged: a broken file read again every `LOOK` is said once.
    let mut refused = None;
    // What changed between the first load and the watch.
    reload(&path, &live, &mut refused).await;
    loop {
        tokio::select! {
            event = rx.recv() => {
                if event.is_none() {
                    return;
                }
                // Let the burst of events of one change settle: read once nothing has
                // arrived for `SETTLE`.
                loop {
                    match tokio::time::timeout(SETTLE, rx.recv()).await {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(every) => {}
        }
        reload(&path, &live, &mut refused).await;
    }
}

/// Reads `path` again; puts it in force if it is good and differs. A refusal is logged
/// unless it is `refused`, the one logged last.
pub(crate) async fn reload(path: &Path, live: &LiveConfig, refused: &mut Option<String>) {
    let read = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || RlsConfig::load(&path)).await
    };
    match read {
        Ok(Ok(config)) => {
            *refused = None;
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
            let e = e.to_string();
            if refused.as_ref() != Some(&e) {
                metrics::counter!("ratelimit_rls_config_reloads_total", "result" => "error")
                    .increment(1);
                tracing::error!(error = %e, "rate limit service config refused; the previous one stays in force");
                *refused = Some(e);
            }
        }
        Err(e) => tracing::error!(error = %e, "rate limit service config reload failed"),
    }
}
