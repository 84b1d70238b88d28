//! `ratelimitd`: the limiter as an HTTP service, for services in any language.
//!
//! `POST /v1/check` decides for a client ID; `GET /v1/whoami` is a route guarded by the
//! `limiter-http` middleware; `/metrics` is Prometheus text; `/health/{live,ready,startup}`
//! are the probes. See [`Config`] for every setting and `docs/ratelimitd.md` for the API.

mod app;
mod check;
pub mod config;
mod health;
mod problem;
pub mod serve;
pub mod telemetry;

pub use app::{App, AppState};
pub use check::MAX_CLIENT_LEN;
pub use config::{Cli, Command, Config, ConfigError, HttpSection, LogFormat};
pub use serve::{HttpLimits, serve};
