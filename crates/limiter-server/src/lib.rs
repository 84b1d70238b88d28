//! `ratelimitd`: the limiter as an HTTP service, for services in any language.
//!
//! `POST /v1/check` decides for a client ID; `GET /v1/whoami` is a route guarded by the
//! `limiter-http` middleware; `/metrics` is Prometheus text; `/health/{live,ready,startup}`
//! are the probes; with `grpc_listen`, Envoy's rate limit service answers over gRPC. See [`Config`] for every setting and `docs/ratelimitd.md` for the API.

mod app;
pub mod config;
mod fleet;
mod grpc;
mod problem;
mod routes;
pub mod serve;
mod state;
pub mod telemetry;
mod throttle;

pub use app::App;
pub use config::{Cli, Command, Config, ConfigError, HttpSection, LogFormat};
pub use routes::MAX_CLIENT_LEN;
pub use serve::{HttpLimits, serve};
pub use state::AppState;
