//! The command line of `ratelimitd`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ratelimitd",
    version,
    about = "A distributed rate limiter as an HTTP service"
)]
pub struct Cli {
    /// Address to listen on [env: RATELIMIT_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Redis shared by every worker; unset: in-memory only [env: RATELIMIT_REDIS_URL]
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// TOML configuration file
    #[arg(long, value_name = "FILE", env = "RATELIMIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Secret for hashing client IDs, the same on every worker; required with a Redis URL
    /// [env: RATELIMIT_HASH_SECRET]
    #[arg(long, value_name = "SECRET")]
    pub hash_secret: Option<String>,
    /// Log format [env: RATELIMIT_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Turns the admin API on, for requests bearing this token (16+ bytes; more tokens,
    /// with names, in the file's `[admin]`) [env: RATELIMIT_ADMIN_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Serve the admin API on this address instead of beside the check API
    /// [env: RATELIMIT_ADMIN_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Where rules persist without Redis [env: RATELIMIT_RULES_FILE]
    /// [default: ratelimitd.rules.json]
    #[arg(long, value_name = "PATH")]
    pub rules_file: Option<PathBuf>,
    /// Serve Envoy's rate limit service (gRPC) on this address; unset: off
    /// [env: RATELIMIT_GRPC_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,
    /// The rate limit service's descriptor config: a YAML file or a directory of them, one
    /// domain per file, reloaded when it changes [env: RATELIMIT_RLS_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub rls_config: Option<PathBuf>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands: tools for operators.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration as JSON (secrets redacted) and exit.
    Config,
    /// Read an API key from standard input and print its SHA-256, for `[[api_keys]]`.
    HashKey,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}
