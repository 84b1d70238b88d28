//! From a check's result to what the client gets: the whole policy of the middleware in one
//! place. Allowed: the inner service answers, with the limit headers. Denied: a 429. The
//! limiter could not decide: served without headers, or a 503, as configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use limiter_core::{ClientKey, Decision, Error, Policy, Tier};
use serde_json::Map;

use crate::body::ResponseBody;
use crate::headers::{insert_with_policy, policy_header};
use crate::layer::OnError;
use crate::problem::{problem, too_many_requests_body};
use crate::service::{Checked, RateLimitInfo, Shared};
use crate::telemetry;

/// Who asked, and since when: what the answer is made with.
pub(crate) struct Asked {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tier: Tier,
    pub(crate) client: ClientKey,
    pub(crate) started: Instant,
}

/// What to do with a request once its check is decided.
pub(crate) enum Verdict {
    /// Call the inner service with `info` in the request's extensions, and add the limit
    /// headers of its decision (made by a rule's policy, or the tier's) to the response.
    Serve(RateLimitInfo, Option<Policy>),
    /// Answer with this response instead.
    Answer(Response<Bytes>),
}

impl Asked {
    /// The verdict on `result`, recorded in the metrics and, when denied or failed, the log.
    pub(crate) fn verdict(&self, result: Result<Checked, Error>) -> Verdict {
        let (shared, tier, client) = (&self.shared, self.tier, self.client);
        match result {
            Ok(Checked { decision, policy }) => {
                // No backend asked (an unlimited tier), no latency to record.
                let latency = if decision.quota.is_none() {
                    Duration::ZERO
                } else {
                    self.started.elapsed()
                };
                telemetry::record_decision(tier, &decision, latency);
                if decision.allowed {
                    return self.serve(Some(decision), policy);
                }
                tracing::debug!(
                    target: "limiter_http",
                    %client,
                    %tier,
                    retry_after_ms = decision.retry_after.map(|d| d.as_millis()),
                    backend = decision.backend.as_str(),
                    "rate limited"
                );
                let limits = shared.limits(tier);
                let response = match &policy {
                    None => {
                        let reason = shared
                            .explain
                            .as_ref()
                            .and_then(|f| f(&limits.policy, &decision));
                        let mut response =
                            too_many_requests_body(&limits.policy, &decision, reason);
                        let headers = response.headers_mut();
                        insert_with_policy(
                            headers,
                            &limits.policy,
                            &limits.policy_header,
                            &decision,
                        );
                        response
                    }
                    Some(policy) => {
                        let reason = shared.explain.as_ref().and_then(|f| f(policy, &decision));
                        let mut response = too_many_requests_body(policy, &decision, reason);
                        let header = policy_header(policy);
                        insert_with_policy(response.headers_mut(), policy, &header, &decision);
                        response
                    }
                };
                Verdict::Answer(response)
            }
            Err(error) => {
                telemetry::record_error(tier, &error, self.started.elapsed());
                match shared.on_error {
                    OnError::Allow => {
                        tracing::warn!(target: "limiter_http", %error, %client, "rate limiter failed: request let through");
                        self.serve(None, None)
                    }
                    OnError::Deny => {
                        tracing::warn!(target: "limiter_http", %error, %client, "rate limiter failed: request refused");
                        Verdict::Answer(unavailable())
                    }
                }
            }
        }
    }

    fn serve(&self, decision: Option<Decision>, policy: Option<Policy>) -> Verdict {
        let info = RateLimitInfo {
            tier: self.tier,
            client: self.client,
            decision,
        };
        Verdict::Serve(info, policy)
    }
}

/// What the limit headers of an admitted request are made of.
pub(crate) struct Limits {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tier: Tier,
    pub(crate) decision: Decision,
    /// A rule's policy; `None`: the tier's.
    pub(crate) policy: Option<Policy>,
}

/// The inner service's `response` with the limit headers of `limits`, if any.
pub(crate) fn with_limits<B>(
    response: Response<B>,
    limits: Option<Limits>,
) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    if let Some(Limits {
        shared,
        tier,
        decision,
        policy,
    }) = limits
    {
        match policy {
            None => {
                let limits = shared.limits(tier);
                insert_with_policy(
                    &mut parts.headers,
                    &limits.policy,
                    &limits.policy_header,
                    &decision,
                );
            }
            Some(policy) => {
                let header = policy_header(&policy);
                insert_with_policy(&mut parts.headers, &policy, &header, &decision);
            }
        }
    }
    Response::from_parts(parts, ResponseBody::inner(body))
}

/// The limiter could not decide and is configured to refuse: 503, retry in a second.
fn unavailable() -> Response<Bytes> {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the rate limiter could not decide; retry shortly",
        Map::new(),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// What a future polled after it completed answers.
pub(crate) fn already_served() -> Response<Bytes> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "request already served",
        Map::new(),
    )
}
