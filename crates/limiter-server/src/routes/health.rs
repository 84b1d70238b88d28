//! `GET /health/live`, `/health/ready` and `/health/startup`.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use limiter_fallback::CircuitState;
use serde_json::{Value, json};

use crate::state::{AppState, Backend};

/// The process is up and answering.
pub(crate) async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Start-up is done: the backend's connections were tried.
pub(crate) async fn startup(State(state): State<AppState>) -> Response {
    if state.started.load(Ordering::Acquire) {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
            .into_response()
    }
}

/// Ready for traffic: 200 while deciding, from Redis (`ok`) or from memory because Redis
/// is unavailable (`degraded`); 503 while starting or draining.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let (status, mut components) = components(&state);
    // Rules that cannot be refreshed stay in force: degraded, still ready.
    let (rules_ok, rules) = state.fleet.health();
    components["rules"] = rules;
    components["fleet"] = json!({ "workers": state.fleet.members.seen() });
    if let Some(throttle) = &state.throttle {
        components["throttle"] = throttle.health();
    }
    let status = if rules_ok { status } else { "degraded" };
    if state.draining.load(Ordering::Acquire) {
        let body = json!({ "status": "draining", "components": components });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if !state.started.load(Ordering::Acquire) {
        let body = json!({ "status": "starting", "components": components });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": status, "components": components })).into_response()
}

fn components(state: &AppState) -> (&'static str, Value) {
    match &state.backend {
        Backend::Memory(memory) => (
            "ok",
            json!({ "memory": { "status": "ok", "buckets": memory.len() } }),
        ),
        Backend::Redis(fallback, _) => {
            let stats = fallback.stats();
            let redis_ok = stats.state == CircuitState::Closed;
            let memory = fallback.local();
            (
                if redis_ok { "ok" } else { "degraded" },
                json!({
                    "redis": {
                        "status": match stats.state {
                            CircuitState::Closed => "ok",
                            // Some cluster masters unreachable: their clients' slots only.
                            CircuitState::Partial => "partial",
                            CircuitState::Open | CircuitState::HalfOpen => "unavailable",
                        },
                        "circuit": stats.state.as_str(),
                        "degraded_keyspace": stats.degraded_share(),
                    },
                    "memory": {
                        "status": "ok",
                        "role": "fallback",
                        "active": !redis_ok,
                        "buckets": memory.len(),
                    },
                }),
            )
        }
    }
}
