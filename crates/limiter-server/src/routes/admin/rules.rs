//! `/v1/admin/rules*`, `/v1/admin/enforcement` and `/v1/admin/explain`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, HeaderMap, HeaderValue, LOCATION};
use axum::response::{IntoResponse, Response};
use limiter_core::Tier;
use limiter_rules::{
    Document, Edit, EditError, KeyHash, Query, RuleError, RuleSpec, Treatment, from_json,
    rules_from_specs, validate_resource,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::TokenName;
use super::{Refusal, if_match, invalid, problem, tagged};
use crate::fleet::WriteError;
use crate::routes::check::NAMESPACE;
use crate::state::AppState;

/// Names that the fixed routes beside `/v1/admin/rules/{name}` take.
const RESERVED: [&str; 2] = ["export", "import"];

fn unavailable(why: &str) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        &format!("the rules could not be read or written, nothing changed: {why}"),
    );
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    response
}

fn not_found(name: &str) -> Response {
    let shown: String = name.chars().take(64).collect();
    problem(
        StatusCode::NOT_FOUND,
        Some("name"),
        &format!("no rule named {shown:?}"),
    )
}

fn write_failed(e: WriteError, name: Option<&str>) -> Response {
    match e {
        WriteError::Edit(EditError::NotFound) => not_found(name.unwrap_or("")),
        WriteError::Edit(EditError::Duplicate) => problem(
            StatusCode::CONFLICT,
            Some("name"),
            "a rule of this name exists: PUT or PATCH /v1/admin/rules/{name} changes it",
        ),
        WriteError::Edit(EditError::Invalid(e)) => invalid(&e),
        WriteError::Precondition { current } => tagged(
            problem(
                StatusCode::PRECONDITION_FAILED,
                Some("If-Match"),
                &format!(
                    "the rules changed meanwhile: version {current} is current; read them again"
                ),
            ),
            current,
        ),
        WriteError::Unavailable(why) => unavailable(&why),
    }
}

fn document_json(doc: &Document) -> Value {
    json!({ "version": doc.version, "enforce": doc.enforce, "rules": doc.rules })
}

/// A rule from a request body; its name from the body or the path.
fn rule_from(body: &[u8], path_name: Option<&str>) -> Result<limiter_rules::Rule, Refusal> {
    let mut spec: RuleSpec = from_json(body).map_err(|e| Refusal::from(invalid(&e)))?;
    if let Some(name) = path_name {
        if spec.name.is_empty() {
            spec.name = name.to_owned();
        } else if spec.name != name {
            return Err(invalid(&RuleError::new(
                "name",
                "differs from the name in the path; rename by DELETE and POST",
            ))
            .into());
        }
    }
    spec.into_rule().map_err(|e| invalid(&e).into())
}

/// `GET /v1/admin/rules`.
pub(crate) async fn list(State(state): State<AppState>) -> Response {
    match state.fleet.document().await {
        Ok(doc) => tagged(Json(document_json(&doc)).into_response(), doc.version),
        Err(e) => unavailable(&e.to_string()),
    }
}

/// `POST /v1/admin/rules`: 201 with the rule as stored.
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rule = match rule_from(&body, None) {
        Ok(rule) => rule,
        Err(refusal) => return refusal.into_response(),
    };
    if RESERVED.contains(&rule.name()) {
        return invalid(&RuleError::new("name", "export and import are reserved"));
    }
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let name = rule.name().to_owned();
    match state.fleet.edit(Edit::Add(rule), expected, &token.0).await {
        Ok((_, doc)) => {
            let mut response = (StatusCode::CREATED, Json(doc.get(&name))).into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/admin/rules/{name}")) {
                response.headers_mut().insert(LOCATION, location);
            }
            tagged(response, doc.version)
        }
        Err(e) => write_failed(e, Some(&name)),
    }
}

/// `GET /v1/admin/rules/{name}`.
pub(crate) async fn one(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    match state.fleet.document().await {
        Ok(doc) => match doc.get(&name) {
            Some(rule) => tagged(Json(rule).into_response(), doc.version),
            None => not_found(&name),
        },
        Err(e) => unavailable(&e.to_string()),
    }
}

/// `PUT /v1/admin/rules/{name}`: replaces the rule as a whole.
pub(crate) async fn replace(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rule = match rule_from(&body, Some(&name)) {
        Ok(rule) => rule,
        Err(refusal) => return refusal.into_response(),
    };
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    match state
        .fleet
        .edit(Edit::Replace(rule), expected, &token.0)
        .await
    {
        Ok((_, doc)) => tagged(Json(doc.get(&name)).into_response(), doc.version),
        Err(e) => write_failed(e, Some(&name)),
    }
}

/// `PATCH /v1/admin/rules/{name}`: the fields given replace the rule's (a JSON merge patch,
/// RFC 7396: `null` removes an optional field).
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let patch: serde_json::Map<String, Value> = match from_json(&body) {
        Ok(patch) => patch,
        Err(e) => return invalid(&e),
    };
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let doc = match state.fleet.document().await {
        Ok(doc) => doc,
        Err(e) => return unavailable(&e.to_string()),
    };
    let Some(current) = doc.get(&name) else {
        return not_found(&name);
    };
    let mut merged = serde_json::to_value(current.to_spec()).unwrap_or_default();
    if let Some(fields) = merged.as_object_mut() {
        for (key, value) in patch {
            // quotas and unlimited exclude each other: setting one drops the other.
            match key.as_str() {
                "quotas" => {
                    fields.remove("unlimited");
                }
                "unlimited" if value == Value::Bool(true) => {
                    fields.remove("quotas");
                }
                _ => {}
            }
            if value.is_null() {
                fields.remove(&key);
            } else {
                fields.insert(key, value);
            }
        }
    }
    let body = serde_json::to_vec(&merged).unwrap_or_default();
    let rule = match rule_from(&body, Some(&name)) {
        Ok(rule) => rule,
        Err(refusal) => return refusal.into_response(),
    };
    // Against the version read, so a change in between is not overwritten.
    let expected = expected.or(Some(doc.version));
    match state
        .fleet
        .edit(Edit::Replace(rule), expected, &token.0)
        .await
    {
        Ok((_, doc)) => tagged(Json(doc.get(&name)).into_response(), doc.version),
        Err(WriteError::Precondition { current }) if headers.get("if-match").is_none() => {
            unavailable(&format!(
                "the rules changed meanwhile (version {current}); retry"
            ))
        }
        Err(e) => write_failed(e, Some(&name)),
    }
}

/// `DELETE /v1/admin/rules/{name}`: 204.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    match state
        .fleet
        .edit(Edit::Remove(name.clone()), expected, &token.0)
        .await
    {
        Ok((_, doc)) => tagged(StatusCode::NO_CONTENT.into_response(), doc.version),
        Err(e) => write_failed(e, Some(&name)),
    }
}

/// `GET /v1/admin/rules/export`: the whole document, the backup.
pub(crate) async fn export(State(state): State<AppState>) -> Response {
    match state.fleet.document().await {
        Ok(doc) => {
            let mut response = tagged(Json(document_json(&doc)).into_response(), doc.version);
            response.headers_mut().insert(
                CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"rules.json\""),
            );
            response
        }
        Err(e) => unavailable(&e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Import {
    rules: Vec<RuleSpec>,
    #[serde(default)]
    enforce: Option<bool>,
    /// An export's version: accepted and ignored (`If-Match` guards an import).
    #[serde(default)]
    #[allow(dead_code, reason = "read so that an export imports unchanged")]
    version: Option<u64>,
}

/// `PUT /v1/admin/rules/import`: replaces every rule at once, the restore.
pub(crate) async fn import(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let import: Import = match from_json(&body) {
        Ok(import) => import,
        Err(e) => return invalid(&e),
    };
    let rules = match rules_from_specs(import.rules) {
        Ok(rules) => rules,
        Err(e) => return invalid(&e),
    };
    if let Some(i) = rules.iter().position(|r| RESERVED.contains(&r.name())) {
        return invalid(&RuleError::new(
            format!("rules[{i}].name"),
            "export and import are reserved",
        ));
    }
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let edit = Edit::ReplaceAll {
        rules,
        enforce: import.enforce,
    };
    match state.fleet.edit(edit, expected, &token.0).await {
        Ok((_, doc)) => tagged(Json(document_json(&doc)).into_response(), doc.version),
        Err(e) => write_failed(e, None),
    }
}

/// `GET /v1/admin/enforcement`.
pub(crate) async fn enforcement(State(state): State<AppState>) -> Response {
    let set = state.fleet.rules.current();
    Json(json!({ "enforce": set.enforce(), "version": set.version() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enforcement {
    enforce: bool,
}

/// `POST /v1/admin/enforcement` `{"enforce": false}`: the fleet-wide kill switch.
pub(crate) async fn set_enforcement(
    State(state): State<AppState>,
    Extension(token): Extension<TokenName>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Enforcement { enforce } = match from_json(&body) {
        Ok(e) => e,
        Err(e) => return invalid(&e),
    };
    let expected = match if_match(&headers) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    match state
        .fleet
        .edit(Edit::Enforce(enforce), expected, &token.0)
        .await
    {
        Ok((_, doc)) => tagged(
            Json(json!({ "enforce": doc.enforce, "version": doc.version })).into_response(),
            doc.version,
        ),
        Err(e) => write_failed(e, None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Explain {
    /// As `/v1/check` takes it: an address is matched by `ip` rules, and its hash by
    /// `api_key` rules.
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    /// As the guarded routes see a request: the client's address and API key.
    #[serde(default)]
    ip: Option<std::net::IpAddr>,
    #[serde(default)]
    api_key: Option<String>,
}

/// `POST /v1/admin/explain`: which rule decides a client and resource, and every rule
/// that matches, in precedence order.
pub(crate) async fn explain(State(state): State<AppState>, body: Bytes) -> Response {
    let asked: Explain = match from_json(&body) {
        Ok(asked) => asked,
        Err(e) => return invalid(&e),
    };
    let tier = match asked.tier.as_deref().map(str::parse::<Tier>).transpose() {
        Ok(tier) => tier.unwrap_or(Tier::Anonymous),
        Err(e) => return invalid(&RuleError::new("tier", e)),
    };
    if let Some(resource) = &asked.resource
        && let Err(why) = validate_resource(resource)
    {
        return invalid(&RuleError::new("resource", why));
    }
    let client = asked.client.unwrap_or_default();
    let api_key = match &asked.api_key {
        Some(raw) if raw.starts_with(KeyHash::PREFIX) => match raw.parse() {
            Ok(hash) => Some(hash),
            Err(e) => return invalid(&RuleError::new("api_key", RuleError::reason(&e))),
        },
        Some(raw) => Some(KeyHash::of(raw.as_bytes())),
        None if !client.is_empty() => Some(KeyHash::of(client.as_bytes())),
        None => None,
    };
    // The client as the layer or /v1/check counts it: its rollout share depends on it.
    let key = match (&asked.api_key, asked.ip) {
        (Some(_), _) => state.hasher.hash(format!(
            "key:{}",
            api_key
                .map(|h| hex::encode(h.as_bytes()))
                .unwrap_or_default()
        )),
        (None, Some(ip)) => state
            .hasher
            .hash(state.addresses.client_id(ip.to_canonical())),
        (None, None) => state
            .hasher
            .hash([NAMESPACE.as_bytes(), client.as_bytes()].concat()),
    };
    let query = Query {
        tier,
        client: key,
        ip: asked.ip.or_else(|| client.parse().ok()),
        api_key,
        resource: asked.resource.as_deref(),
    };
    let set = state.fleet.rules.current();
    let resolution = set.resolve(&query);
    let matches: Vec<Value> = set
        .explain(&query)
        .into_iter()
        .map(|(rule, treatment)| {
            json!({
                "name": rule.name(),
                "scope": rule.scope().as_str(),
                "resource": rule.resource_filter().map(|r| r.as_str()),
                "mode": rule.mode_of(),
                "treatment": treatment,
            })
        })
        .collect();
    let policy = match resolution.rule {
        Some(rule) => serde_json::to_value(rule.policy()).unwrap_or_default(),
        None => serde_json::to_value(state.tiers.get(tier)).unwrap_or_default(),
    };
    Json(json!({
        "decided_by": resolution.rule.map(|r| r.name()),
        "tier": tier,
        "policy": policy,
        "treatment": resolution.rule.map(|_| Treatment::Enforced),
        "shadow": resolution.shadow.map(|r| r.name()),
        "enforce": set.enforce(),
        "version": set.version(),
        "matches": matches,
    }))
    .into_response()
}
