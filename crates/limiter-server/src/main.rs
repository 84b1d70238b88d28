//! `ratelimitd`: see `ratelimitd --help` and `docs/ratelimitd.md`.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use limiter_http::ApiKeys;
use limiter_server::{App, Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashKey) = cli.command {
        return hash_key();
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ratelimitd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Config) = cli.command {
        println!("{}", config.redacted_json());
        return ExitCode::SUCCESS;
    }
    init_logs(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ratelimitd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ratelimitd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = App::new(&config)?;
    let limits = App::http_limits(&config);
    open_files_for(limits.max_connections);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen: cannot bind {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    app.advertise(addr);
    tracing::info!(%addr, backend = app.backend_name(), "listening");
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    // One shutdown for both listeners: the admin one stops when the main one does.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let admin = match (app.admin_router(), config.admin_listen) {
        (Some(router), Some(at)) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("admin_listen: cannot bind {at}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "admin API listening");
            let mut stopped = stopped.clone();
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(limiter_server::serve(listener, router, limits, stop))
        }
        _ => None,
    };
    let grpc = match config.grpc_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("grpc_listen: cannot bind {at}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "rate limit service (gRPC) listening");
            Some(listener)
        }
        None => None,
    };
    let main_stop = async {
        shutdown(app.clone(), grace).await;
        let _ = stopping.send(true);
    };
    let server = limiter_server::serve(listener, app.router(), limits, main_stop);
    let admin = async {
        match admin {
            Some(admin) => admin.await,
            None => Ok(()),
        }
    };
    let grpc = async {
        match grpc {
            Some(listener) => {
                let mut stopped = stopped.clone();
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                app.serve_grpc(listener, stop).await
            }
            None => Ok(()),
        }
    };
    let (served, admin_served, grpc_served, ()) = tokio::join!(server, admin, grpc, app.start());
    served?;
    admin_served?;
    grpc_served?;
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft limit on open files towards the hard one, as far as `connections` (and
/// room for Redis, logs and the listener) needs; warns when even that is too few, since a
/// server out of descriptors refuses connections below its own cap.
fn open_files_for(connections: usize) {
    let wanted = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_files = got,
            max_connections = connections,
            "the open-files limit is below http.max_connections: raise it (ulimit -n) or lower the cap"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}

/// SIGTERM: report `draining` for `grace` (balancers stop sending), then stop accepting and
/// finish the requests in flight. Ctrl-C: the same without the wait.
async fn shutdown(app: App, grace: Duration) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let wait = tokio::select! {
        () = ctrl_c => Duration::ZERO,
        () = term => grace,
    };
    app.drain();
    tracing::info!(
        grace_ms = wait.as_millis(),
        "draining: readiness answers 503"
    );
    tokio::time::sleep(wait).await;
    tracing::info!("shutting down: finishing requests in flight");
}

/// Reads one API key from standard input and prints its SHA-256: the key never appears on a
/// command line or in shell history.
fn hash_key() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("ratelimitd: cannot read the key from standard input: {e}");
        return ExitCode::FAILURE;
    }
    let key = line.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!("ratelimitd: no key on standard input");
        return ExitCode::from(2);
    }
    println!("{}", ApiKeys::hash_key(key));
    ExitCode::SUCCESS
}
