//! `POST /v1/check`: a decision for any service, in any language, under the rules in
//! force; and `POST /v1/refund`, which gives tokens back.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use limiter_core::{Decision, Error, Tier, ceil_millis};
use limiter_rules::{KeyHash, Observe, Operation, Query, validate_resource};
use serde::{Deserialize, Serialize};
use serde_json::error::Category;

use crate::problem::Problem;
use crate::state::AppState;

/// Longest client ID accepted, in bytes.
pub const MAX_CLIENT_LEN: usize = 1024;

/// What a `/v1/check` client ID is hashed under: its own namespace, apart from the guarded
/// routes' identities (`ip:…`, `key:…`), so a caller posting `"ip:203.0.113.5"` counts a
/// client of its own, never drains that address's bucket on the guarded routes.
pub(crate) const NAMESPACE: &str = "check:";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    client: String,
    /// A string, parsed by hand so an unknown tier is not echoed back.
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    cost: Option<u64>,
    /// What the request is for (`login`, `/api/upload`), which rules may narrow to.
    #[serde(default)]
    resource: Option<String>,
    /// Answer without taking anything (a peek).
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CheckResponse {
    allowed: bool,
    /// `null` for an unlimited tier.
    limit: Option<u64>,
    /// `null` for an unlimited tier.
    remaining: Option<u64>,
    reset_after_ms: u64,
    retry_after_ms: Option<u64>,
    backend: &'static str,
    degraded: bool,
    tier: Tier,
    /// The rule that decided; `null`: the tier's policy.
    rule: Option<String>,
    /// Why a denial, when it is not the limit itself: `throttled` (the worker is under
    /// load and keeps only part of this limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl CheckResponse {
    fn new(tier: Tier, d: &Decision, rule: Option<String>) -> Self {
        let unlimited = d.quota.is_none();
        Self {
            allowed: d.allowed,
            limit: (!unlimited).then_some(d.limit),
            remaining: (!unlimited).then_some(d.remaining),
            reset_after_ms: ceil_millis(d.reset_after),
            retry_after_ms: d.retry_after.map(ceil_millis),
            backend: d.backend.as_str(),
            degraded: d.degraded,
            tier,
            rule,
            reason: None,
        }
    }
}

/// What a check or refund asks for.
enum Asked {
    Check,
    Refund,
}

pub(crate) async fn check(State(state): State<AppState>, request: Request) -> Response {
    let declared = declared_length(&request);
    match decide(&state, request.into_body(), declared, Asked::Check).await {
        Ok(response) => Json(response).into_response(),
        Err(problem) => with_retry(problem.into_response()),
    }
}

/// `POST /v1/refund`: gives `cost` tokens back to the client's buckets under the policy
/// that would decide its check (capped at each bucket's capacity), for a request that
/// should not count.
pub(crate) async fn refund(State(state): State<AppState>, request: Request) -> Response {
    let declared = declared_length(&request);
    match decide(&state, request.into_body(), declared, Asked::Refund).await {
        Ok(response) => Json(response).into_response(),
        Err(problem) => with_retry(problem.into_response()),
    }
}

async fn read_body(state: &AppState, body: Body, declared: Option<u64>) -> Result<Bytes, Problem> {
    let limit = state.max_body_bytes;
    let too_large = || Problem {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        detail: format!("request body larger than {limit} bytes"),
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = state.body_read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        metrics::counter!("ratelimit_http_connections_closed_total", "reason" => "body_timeout")
            .increment(1);
        return Err(Problem {
            status: StatusCode::REQUEST_TIMEOUT,
            detail: format!(
                "request body not received within {} ms",
                timeout.as_millis()
            ),
        });
    };
    read.map_err(|e| {
        if e.into_inner().is::<LengthLimitError>() {
            too_large()
        } else {
            Problem::bad_request("request body could not be read")
        }
    })
}

async fn decide(
    state: &AppState,
    body: Body,
    declared: Option<u64>,
    asked: Asked,
) -> Result<CheckResponse, Problem> {
    // A declared length over the limit is refused unread; an undeclared one is cut off there.
    let bytes = read_body(state, body, declared).await?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let req: CheckRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::bad_request(format!("body: malformed JSON: {inner}"))
            }
            Category::Data if path != "." => Problem::bad_request(format!("{path}: {inner}")),
            Category::Data => Problem::bad_request(format!("body: {inner}")),
        }
    })?;
    if req.client.is_empty() || req.client.len() > MAX_CLIENT_LEN {
        return Err(Problem::bad_request(format!(
            "client: must be 1 to {MAX_CLIENT_LEN} bytes"
        )));
    }
    let tier = match req.tier.as_deref() {
        None => Tier::Anonymous,
        Some(name) => name
            .parse::<Tier>()
            .map_err(|e| Problem::bad_request(format!("tier: {e}")))?,
    };
    // Zero is refused here, whatever the tier (an unlimited one asks no backend); a cost
    // above the tier's burst is refused by the limiter, which knows the quotas.
    let cost = match req.cost {
        None => 1,
        Some(0) => return Err(Problem::bad_request("cost: must be at least 1")),
        Some(cost) => cost,
    };
    if let Some(resource) = &req.resource
        && let Err(why) = validate_resource(resource)
    {
        return Err(Problem::bad_request(format!("resource: {why}")));
    }
    if matches!(asked, Asked::Refund) && req.dry_run {
        return Err(Problem::bad_request(
            "dry_run: a refund cannot be a dry run",
        ));
    }

    let key = state
        .hasher
        .hash([NAMESPACE.as_bytes(), req.client.as_bytes()].concat());
    let set = state.fleet.rules.current();
    // The client ID is what rules match: an address for `ip` rules, a key (by its hash)
    // for `api_key` rules, hashed only when some rule could match it.
    let query = Query {
        tier,
        client: key,
        ip: req.client.parse().ok(),
        api_key: set
            .matches_api_keys()
            .then(|| KeyHash::of(req.client.as_bytes())),
        resource: req.resource.as_deref(),
    };
    let resolution = set.resolve(&query);
    let tier_policy = state.tiers.get(tier);
    let policy = resolution.rule.map_or(tier_policy, |r| r.policy());
    let rule = resolution.rule.map(|r| r.name().to_owned());
    let started = Instant::now();
    let result = match asked {
        Asked::Refund => {
            // A check took from the shadow rule's bucket too: give back there as well, so
            // the rule on trial sees what it would enforce. Its errors change nothing.
            if let Some(shadow) = resolution.shadow {
                let _ = state.limiter.refund(&key, shadow.policy(), cost).await;
            }
            state
                .limiter
                .refund(&key, policy, cost)
                .await
                .map(|decision| (decision, rule))
        }
        Asked::Check => {
            let operation = if req.dry_run {
                Operation::Peek
            } else {
                Operation::Check
            };
            let verdict = limiter_rules::decide(
                &*state.limiter,
                &set,
                resolution,
                tier_policy,
                &key,
                cost,
                operation,
            )
            .await;
            verdict.map(|verdict| {
                // A dry run is not a request: nothing to count or record.
                if operation == Operation::Check {
                    state.fleet.records.observe(&query, &verdict);
                }
                (verdict.decision, verdict.rule)
            })
        }
    };
    match result {
        Ok((decision, rule)) => {
            let latency = if decision.backend == limiter_core::Backend::None {
                Duration::ZERO
            } else {
                started.elapsed()
            };
            if matches!(asked, Asked::Check) && !req.dry_run {
                limiter_http::telemetry::record_decision(tier, &decision, latency);
            }
            let mut response = CheckResponse::new(tier, &decision, rule);
            if state
                .throttle
                .as_ref()
                .is_some_and(|t| t.denied(policy, &decision))
            {
                response.reason = Some("throttled".to_owned());
            }
            Ok(response)
        }
        Err(e) if e.is_invalid_input() || e.is_insufficient_capacity() => {
            Err(cost_problem(policy.name(), &e))
        }
        Err(e) => {
            limiter_http::telemetry::record_error(tier, &e, started.elapsed());
            tracing::error!(error = %e, client = %key, "check failed");
            Err(Problem {
                status: StatusCode::SERVICE_UNAVAILABLE,
                detail: "the rate limiter could not decide; retry shortly".into(),
            })
        }
    }
}

fn cost_problem(policy: &str, e: &Error) -> Problem {
    match e {
        Error::InsufficientCapacity { cost, capacity } => Problem::bad_request(format!(
            "cost: {cost} exceeds the capacity {capacity} of policy {policy}: the request could never pass"
        )),
        e => Problem::bad_request(format!("cost: {e}")),
    }
}

/// `Retry-After: 1` on 503s from this module; `Connection: close` after a body that did not
/// arrive in time (what is left of it would be read as the next request).
fn with_retry(mut response: Response) -> Response {
    match response.status() {
        StatusCode::SERVICE_UNAVAILABLE => {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::REQUEST_TIMEOUT => {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}

/// The declared body length, if any.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
