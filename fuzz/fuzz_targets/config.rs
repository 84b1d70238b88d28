//! `ratelimitd`'s configuration from any file and environment: it loads, or it fails with
//! an error naming the setting; what loads also builds (`App::new`), and its redacted form
//! never depends on the hash secret; never a panic.
//!
//! Input: the TOML file, then a line `%%`, then environment variables, one `NAME=VALUE` per
//! line (`RATELIMIT_` is added to names without it).

#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use limiter_server::{App, Cli, Config};

/// The variables the last input set, removed before the next.
static SET: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("limiter-fuzz-{}.toml", std::process::id()))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let mut set = SET.lock().unwrap_or_else(|e| e.into_inner());
    for name in set.drain(..) {
        std::env::remove_var(name);
    }
    for line in env.lines().take(16) {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = if name.starts_with("RATELIMIT_") {
            name.to_owned()
        } else {
            format!("RATELIMIT_{name}")
        };
        // Names and values the environment can hold.
        if name.contains(['=', '\0']) || value.contains('\0') || name == "RATELIMIT_CONFIG" {
            continue;
        }
        std::env::set_var(&name, value);
        set.push(name);
    }
    std::fs::write(file(), toml).expect("a temporary file");
    let cli = Cli {
        listen: None,
        redis_url: None,
        config: Some(file().clone()),
        hash_secret: None,
        log_format: None,
        admin_token: None,
        admin_listen: None,
        rules_file: None,
        grpc_listen: None,
        rls_config: None,
        command: None,
    };
    let Ok(config) = Config::load(&cli) else {
        return;
    };
    // What loads is valid, and builds.
    config.validate().expect("a loaded config is valid");
    let _guard = runtime().enter();
    if let Err(e) = App::new(&config) {
        panic!("a config that loads does not build: {e}");
    }
    // The redacted form is the same whatever the secret.
    let mut other = config.clone();
    other.hash_secret = config.hash_secret.as_ref().map(|s| format!("{s}-other"));
    assert_eq!(
        config.redacted_json(),
        other.redacted_json(),
        "the hash secret shows"
    );
});
