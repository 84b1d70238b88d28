//! `/v1/admin/violations`, `/v1/admin/stats` and `/v1/admin/audit`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use limiter_core::Tier;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Refusal, problem};
use crate::fleet::{Counts, now_ms};
use crate::state::AppState;

/// The most entries one answer lists.
const MAX_LIMIT: usize = 10_000;
/// The most points one stats answer has.
const MAX_POINTS: u64 = 10_080;

fn bad(field: &str, why: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, Some(field), why)
}

fn unavailable(why: &str) -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        &format!("the fleet's records could not be read: {why}"),
    )
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, Refusal> {
    match text {
        None => Ok(default),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(bad(field, "must be a duration such as 90s, 15m, 1h or 7d").into()),
        },
    }
}

fn tier(text: Option<&str>) -> Result<Option<Tier>, Refusal> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|_| bad("tier", "must be anonymous, api_key, premium or admin").into())
        })
        .transpose()
}

/// A rule filter: a name, `-` for the tiers' own policies, or none.
fn matches_rule(filter: Option<&str>, rule: Option<&str>) -> bool {
    match filter.filter(|f| !f.is_empty()) {
        None => true,
        Some("-") => rule.is_none(),
        Some(f) => rule == Some(f),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ViolationsQuery {
    since: Option<String>,
    rule: Option<String>,
    tier: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/admin/violations?since=1h&rule=&tier=&limit=`: recent denials, newest first.
pub(crate) async fn violations(
    State(state): State<AppState>,
    query: Result<Query<ViolationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad("query", "takes since, rule, tier and limit");
    };
    let since = match duration("since", q.since.as_deref(), Duration::from_secs(3600)) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let tier = match tier(q.tier.as_deref()) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return bad("limit", "must be 1 to 10000");
    }
    let since_ms = now_ms().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let rule = q.rule;
    let keep = move |v: &crate::fleet::Violation| {
        matches_rule(rule.as_deref(), v.rule.as_deref()) && tier.is_none_or(|t| t == v.tier)
    };
    match state.fleet.violations(since_ms, limit, &keep).await {
        Ok(found) => Json(json!({ "violations": found })).into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    window: Option<String>,
    step: Option<String>,
    rule: Option<String>,
    tier: Option<String>,
}

fn counts_json(c: &Counts) -> Value {
    json!({
        "checks": c.checks,
        "allowed": c.allowed,
        "denied": c.denied,
        "shadow_denied": c.shadow_denied,
    })
}

/// `GET /v1/admin/stats?window=7d&step=1h&rule=&tier=`: fleet-wide totals, by rule and
/// tier, and a series. Steps of whole hours read hour buckets (kept 8 days); others read
/// minute buckets (kept 48 hours).
pub(crate) async fn stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad("query", "takes window, step, rule and tier");
    };
    let window = match duration("window", q.window.as_deref(), Duration::from_secs(3600)) {
        Ok(d) => d.as_secs(),
        Err(r) => return r.into_response(),
    };
    let step = match duration("step", q.step.as_deref(), Duration::from_secs(60)) {
        Ok(d) => d.as_secs(),
        Err(r) => return r.into_response(),
    };
    let tier = match tier(q.tier.as_deref()) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if step < 60 || step % 60 != 0 {
        return bad("step", "must be whole minutes (1m or more)");
    }
    let granularity = if step % 3600 == 0 { 3600 } else { 60 };
    let kept = if granularity == 3600 {
        crate::fleet::records::HOURS_KEPT
    } else {
        crate::fleet::records::MINUTES_KEPT
    };
    if window > kept.as_secs() {
        return bad(
            "window",
            "longer than kept: 48h with steps of minutes, 8d with steps of whole hours",
        );
    }
    if window < step || window % step != 0 {
        return bad("window", "must be a whole number of steps");
    }
    let steps = window / step;
    if steps > MAX_POINTS {
        return bad("step", "too small for the window: at most 10080 points");
    }
    // The last step ends with the current bucket, so the newest counts are included.
    let now = now_ms() / 1000;
    let end = now / granularity * granularity + granularity;
    let from = end - window;
    let rule = q.rule;
    let keep = move |r: Option<&str>, t: Tier| {
        matches_rule(rule.as_deref(), r) && tier.is_none_or(|want| want == t)
    };
    match state
        .fleet
        .stats(granularity, from, step, steps, &keep)
        .await
    {
        Ok(stats) => Json(json!({
            "window": window,
            "step": step,
            "from_ms": from * 1000,
            "totals": counts_json(&stats.total),
            "by_rule": stats.by.iter().map(|((rule, tier), c)| {
                let mut v = counts_json(c);
                v["rule"] = json!(rule);
                v["tier"] = json!(tier);
                v
            }).collect::<Vec<_>>(),
            "series": stats.series.iter().map(|(start, c)| {
                let mut v = counts_json(c);
                v["start_ms"] = json!(start * 1000);
                v
            }).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /v1/admin/audit?limit=`: the newest rule changes first.
pub(crate) async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad("query", "takes limit");
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return bad("limit", "must be 1 to 10000");
    }
    match state.fleet.changes(limit).await {
        Ok(changes) => Json(json!({ "changes": changes })).into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}

/// `GET /v1/admin/workers`: the live workers of the fleet, as their heartbeats say.
pub(crate) async fn workers(State(state): State<AppState>) -> Response {
    match state.fleet.workers().await {
        Ok(workers) => Json(serde_json::json!({ "workers": workers })).into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}
