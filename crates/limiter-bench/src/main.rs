//! `limiter-bench`: drives a limiter with a closed loop of checks and prints one JSON object
//! of throughput, latency percentiles and outcomes.
//!
//! The `http` backend drives URLs (`ratelimitd`'s `/v1/whoami`, any route behind the
//! layer), spreading requests over every `--url` in turn: the load generator of the
//! docker-compose fleet.
//!
//! ```text
//! limiter-bench --backend http --url http://127.0.0.1:8080/v1/whoami \
//!     --concurrency 32 --duration 10 [--api-key KEY] [--json]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod args;
mod run;
mod script_cpu;
mod serve;
mod target;

use args::{Args, BackendKind};
use run::run;
use serve::serve;

fn main() -> ExitCode {
    let args = Args::parse();
    let durations = (
        Duration::try_from_secs_f64(args.duration),
        Duration::try_from_secs_f64(args.wait),
    );
    let (Ok(duration), Ok(wait)) = durations else {
        eprintln!(
            "limiter-bench: --duration and --wait must be finite numbers of seconds, not negative"
        );
        return ExitCode::from(2);
    };
    let over_the_wire = matches!(
        args.backend,
        BackendKind::Http | BackendKind::Check | BackendKind::Grpc
    );
    if !over_the_wire && !args.urls.is_empty() {
        eprintln!("limiter-bench: --url is for --backend http, check or grpc");
        return ExitCode::from(2);
    }
    if args.concurrency == 0 || duration.is_zero() || args.keys == 0 || args.cost == 0 {
        eprintln!("limiter-bench: --concurrency, --duration, --keys and --cost must be above zero");
        return ExitCode::from(2);
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        eprintln!("limiter-bench: --rate must be a positive number of checks per second");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("limiter-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.serve {
        return match runtime.block_on(serve(addr, args.guarded, args.static_headers)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("limiter-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(&args, duration, wait)) {
        Ok(report) => {
            let text = if args.json {
                serde_json::to_string(&report)
            } else {
                serde_json::to_string_pretty(&report)
            };
            println!("{}", text.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("limiter-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
