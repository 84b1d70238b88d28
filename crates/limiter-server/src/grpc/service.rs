//! `ShouldRateLimit`: each request descriptor's limit found in the descriptor config,
//! its bucket (chosen by the descriptor's values, hashed) asked of the limiter, and the
//! answers gathered all or nothing.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf;
use futures_util::future::join_all;
use limiter_core::{Backend as Decider, ClientKey, Decision, Error, Tier};
use limiter_rls::{Allowance, Domain, Limit, Unit, apply_replaces};
use limiter_rules::{Observe, Query, Verdict};
use tonic::{Request, Response, Status};

use super::LiveConfig;
use crate::state::AppState;

/// The most descriptors one request may carry (Envoy sends a handful).
pub(crate) const MAX_DESCRIPTORS: usize = 64;

/// What the limiter is asked for one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// Take the hits if they fit.
    Check,
    /// `hits_addend: 0` on the descriptor: answer, take nothing.
    Peek,
    /// `is_negative_hits`: give the hits back.
    Refund,
}

/// One descriptor, decided.
enum Outcome<'a> {
    /// No entry of the config matches (or `replaces` dropped it): OK, no limit.
    Unmatched,
    /// `unlimited: true`: OK, and no backend asked.
    Unlimited,
    Decided(Decided<'a>),
}

struct Decided<'a> {
    limit: &'a Limit,
    key: ClientKey,
    cost: u64,
    decision: Decision,
    /// The limit would deny (whether or not the denial is answered).
    over: bool,
    /// The denial is answered: not shadow, enforcement on.
    answered: bool,
    /// Tokens were taken, to give back if another descriptor denies the request.
    taken: bool,
    /// A check (not a peek or a refund): what statistics count.
    checked: bool,
}

/// The gRPC rate limit service over the service's limiter.
#[derive(Clone)]
pub(crate) struct Rls {
    pub(crate) state: AppState,
    pub(crate) config: LiveConfig,
    /// Add the project's rate-limit headers to the answer (`response_headers_to_add`).
    pub(crate) headers: bool,
}

impl std::fmt::Debug for Rls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rls")
            .field("domains", &self.config.load().domains().len())
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        if request.domain.is_empty() {
            return Err(Status::invalid_argument("domain: must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("descriptors: must not be empty"));
        }
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "descriptors: at most {MAX_DESCRIPTORS}"
            )));
        }
        let config = self.config.load();
        let Some(domain) = config.domain(&request.domain) else {
            // As the reference service: an unknown domain limits nothing. Its name is the
            // caller's, so it is not a metric label.
            count_request("", Code::Ok);
            let statuses = request.descriptors.iter().map(|_| unmatched()).collect();
            return Ok(Response::new(answer(Code::Ok, statuses)));
        };
        let response = self.decide(domain, &request).await?;
        let code = Code::try_from(response.overall_code).unwrap_or(Code::Unknown);
        count_request(domain.name(), code);
        metrics::histogram!("ratelimit_rls_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Response::new(response))
    }
}

impl Rls {
    async fn decide(
        &self,
        domain: &Domain,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let mut limits: Vec<Option<&Limit>> = request
            .descriptors
            .iter()
            .map(|d| domain.find(d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()))))
            .collect();
        apply_replaces(&mut limits);
        let enforce = self.state.fleet.rules.load().enforce();
        let outcomes = join_all(limits.iter().zip(&request.descriptors).map(
            |(limit, descriptor)| {
                self.decide_one(domain, *limit, descriptor, request.hits_addend, enforce)
            },
        ))
        .await;
        let mut decided = Vec::with_capacity(outcomes.len());
        let mut failed = None;
        for outcome in outcomes {
            match outcome {
                Ok(outcome) => decided.push(outcome),
                Err(e) => failed = Some(e),
            }
        }
        let denied = decided
            .iter()
            .any(|o| matches!(o, Outcome::Decided(d) if d.answered));
        // All or nothing: a request denied by one descriptor (or not decided) takes from
        // none, so the others' hits are given back.
        if denied || failed.is_some() {
            self.give_back(&mut decided).await;
        }
        if let Some(e) = failed {
            tracing::error!(error = %e, domain = domain.name(), "rate limit service could not decide");
            return Err(Status::unavailable(
                "the rate limiter could not decide; retry shortly",
            ));
        }
        for outcome in &decided {
            if let Outcome::Decided(d) = outcome
                && d.checked
            {
                self.record(domain, d);
            }
        }
        let mut response = answer(
            if denied { Code::OverLimit } else { Code::Ok },
            decided.iter().map(status).collect(),
        );
        if self.headers {
            response.response_headers_to_add = headers(&decided);
        }
        Ok(response)
    }

    async fn decide_one<'a>(
        &self,
        domain: &Domain,
        limit: Option<&'a Limit>,
        descriptor: &RateLimitDescriptor,
        request_hits: u32,
        enforce: bool,
    ) -> Result<Outcome<'a>, Error> {
        let Some(limit) = limit else {
            return Ok(Outcome::Unmatched);
        };
        if descriptor.limit.is_some() {
            ignored_override();
        }
        let (cost, asked) = match (&descriptor.hits_addend, descriptor.is_negative_hits) {
            // The request's hits: 0 (unset) means 1, as in the reference service.
            (None, negative) => (u64::from(request_hits.max(1)), asked(negative)),
            (Some(hits), _) if hits.value == 0 => (1, Asked::Peek),
            (Some(hits), negative) => (hits.value, asked(negative)),
        };
        let (unit, capacity) = match limit.allowance() {
            Allowance::Unlimited => return Ok(Outcome::Unlimited),
            Allowance::Nothing { unit } => (unit, 0),
            Allowance::Bucket {
                unit,
                requests_per_unit,
            } => (unit, u64::from(requests_per_unit)),
        };
        let key = self.key(domain, descriptor);
        if capacity == 0 {
            // `requests_per_unit: 0`: always over, no bucket to ask.
            let decision = over_capacity(0, unit);
            return Ok(Outcome::Decided(decided(
                limit, key, cost, decision, asked, enforce,
            )));
        }
        let limiter = &*self.state.limiter;
        let policy = limit.policy();
        let result = match asked {
            Asked::Check => match limiter.check_now(&key, policy, cost) {
                Some(result) => result,
                None => limiter.check(&key, policy, cost).await,
            },
            Asked::Peek => limiter.peek(&key, policy, cost).await,
            // A bucket never holds more than its capacity: giving back more fills it.
            Asked::Refund => limiter.refund(&key, policy, cost.min(capacity)).await,
        };
        let decision = match result {
            Ok(decision) => decision,
            // More hits than the bucket holds: over the limit, now and always.
            Err(Error::InsufficientCapacity { capacity, .. }) => over_capacity(capacity, unit),
            Err(e) => return Err(e),
        };
        Ok(Outcome::Decided(decided(
            limit, key, cost, decision, asked, enforce,
        )))
    }

    /// The bucket of one descriptor: the domain and every entry's key and value, each
    /// length-prefixed (so `a`,`bc` and `ab`,`c` differ), hashed with the deployment's
    /// secret before any backend sees it.
    fn key(&self, domain: &Domain, descriptor: &RateLimitDescriptor) -> ClientKey {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(b"rls:");
        let mut put = |part: &str| {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(part.as_bytes());
        };
        put(domain.name());
        for entry in &descriptor.entries {
            put(&entry.key);
            put(&entry.value);
        }
        self.state.hasher.hash(bytes)
    }

    /// Gives back what the checks of a request took when the request is not admitted.
    async fn give_back(&self, decided: &mut [Outcome<'_>]) {
        let limiter = &*self.state.limiter;
        let refunds = decided.iter_mut().filter_map(|o| match o {
            Outcome::Decided(d) if d.taken => Some(d),
            _ => None,
        });
        join_all(refunds.map(|d| async move {
            match limiter.refund(&d.key, d.limit.policy(), d.cost).await {
                Ok(after) => {
                    d.decision.remaining = after.remaining;
                    d.decision.reset_after = after.reset_after;
                    d.taken = false;
                }
                Err(e) => {
                    // The denied request keeps what it took from this bucket.
                    metrics::counter!("ratelimit_rls_give_back_failures_total").increment(1);
                    tracing::warn!(error = %e, "could not give back a denied request's hits");
                }
            }
        }))
        .await;
    }

    /// Counts the descriptor's decision, and records it with the rules' statistics and
    /// violations (under its rule's name).
    fn record(&self, domain: &Domain, d: &Decided<'_>) {
        let code = match (d.over, d.answered) {
            (false, _) => "ok",
            (true, true) => "over_limit",
            (true, false) => "shadow_over_limit",
        };
        metrics::counter!(
            "ratelimit_rls_descriptors_total",
            "domain" => domain.name().to_owned(),
            "descriptor" => d.limit.path().to_owned(),
            "code" => code,
            "backend" => d.decision.backend.as_str(),
        )
        .increment(1);
        if d.decision.backend == Decider::None {
            return;
        }
        let query = Query {
            tier: Tier::Anonymous,
            client: d.key,
            ip: None,
            api_key: None,
            resource: None,
        };
        let verdict = Verdict {
            decision: d.decision,
            rule: Some(d.limit.rule().name().to_owned()),
            resource: None,
            denied: d.over,
            retry_after: d.decision.retry_after,
            enforced: !d.over || d.answered,
            shadow: None,
        };
        self.state.fleet.records.observe(&query, &verdict);
    }
}

/// A descriptor's `limit` (an override from Envoy's metadata) is not applied: the config
/// decides. Counted, and said once.
fn ignored_override() {
    static SAID: std::sync::Once = std::sync::Once::new();
    metrics::counter!("ratelimit_rls_limit_overrides_ignored_total").increment(1);
    SAID.call_once(|| {
        tracing::warn!(
            "a descriptor carried a limit override, which is ignored: limits come from rls_config"
        );
    });
}

fn asked(negative: bool) -> Asked {
    if negative {
        Asked::Refund
    } else {
        Asked::Check
    }
}

fn decided<'a>(
    limit: &'a Limit,
    key: ClientKey,
    cost: u64,
    decision: Decision,
    asked: Asked,
    enforce: bool,
) -> Decided<'a> {
    let checked = asked == Asked::Check;
    // Only a check can be over: a peek (hits 0) asks how many are left, and a refund gives
    // back.
    let over = checked && !decision.allowed;
    let mut decision = decision;
    if asked == Asked::Peek {
        // A peek took one hit's measure: what is left now is one more, or nothing.
        decision.remaining = if decision.allowed {
            decision.remaining.saturating_add(1)
        } else {
            0
        };
        decision.allowed = true;
        decision.retry_after = None;
    }
    Decided {
        limit,
        key,
        cost,
        decision,
        over,
        answered: over && enforce && !limit.shadow(),
        taken: checked && decision.allowed,
        checked,
    }
}

/// The answer for hits that can never fit: nothing left, and the bucket's capacity.
fn over_capacity(capacity: u64, unit: Unit) -> Decision {
    Decision {
        allowed: false,
        limit: capacity,
        remaining: 0,
        reset_after: unit.period(),
        retry_after: None,
        backend: Decider::None,
        degraded: false,
        quota: Some(0),
    }
}

fn answer(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code as i32,
        statuses,
        ..RateLimitResponse::default()
    }
}

fn unmatched() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..DescriptorStatus::default()
    }
}

fn status(outcome: &Outcome<'_>) -> DescriptorStatus {
    match outcome {
        Outcome::Unmatched => unmatched(),
        Outcome::Unlimited => DescriptorStatus {
            code: Code::Ok as i32,
            limit_remaining: u32::MAX,
            ..DescriptorStatus::default()
        },
        Outcome::Decided(d) => {
            let (requests_per_unit, unit) = match d.limit.allowance() {
                Allowance::Bucket {
                    requests_per_unit,
                    unit,
                } => (requests_per_unit, unit),
                Allowance::Nothing { unit } => (0, unit),
                Allowance::Unlimited => (u32::MAX, Unit::Second),
            };
            DescriptorStatus {
                code: if d.answered {
                    Code::OverLimit
                } else {
                    Code::Ok
                } as i32,
                current_limit: Some(RateLimit {
                    name: d.limit.name().unwrap_or_default().to_owned(),
                    requests_per_unit,
                    unit: proto_unit(unit) as i32,
                }),
                limit_remaining: if d.over {
                    0
                } else {
                    u32::try_from(d.decision.remaining).unwrap_or(u32::MAX)
                },
                duration_until_reset: Some(duration(d.decision.reset_after)),
                ..DescriptorStatus::default()
            }
        }
    }
}

fn proto_unit(unit: Unit) -> rate_limit::Unit {
    match unit {
        Unit::Second => rate_limit::Unit::Second,
        Unit::Minute => rate_limit::Unit::Minute,
        Unit::Hour => rate_limit::Unit::Hour,
        Unit::Day => rate_limit::Unit::Day,
        Unit::Week => rate_limit::Unit::Week,
        Unit::Month => rate_limit::Unit::Month,
        Unit::Year => rate_limit::Unit::Year,
    }
}

fn duration(d: Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The project's rate-limit headers for the descriptor that tells the client most: the
/// answered denial that frees up last, else the bucket with the fewest tokens left.
fn headers(decided: &[Outcome<'_>]) -> Vec<HeaderValue> {
    let reported = decided
        .iter()
        .filter_map(|o| match o {
            Outcome::Decided(d) if d.answered || !d.over => Some(d),
            _ => None,
        })
        .max_by_key(|d| {
            (
                d.answered,
                d.decision.retry_after.unwrap_or_default(),
                std::cmp::Reverse(d.decision.remaining),
            )
        });
    let Some(d) = reported else {
        return Vec::new();
    };
    if d.decision.backend == Decider::None {
        return Vec::new();
    }
    let mut map = axum::http::HeaderMap::new();
    limiter_http::insert_rate_limit_headers(&mut map, d.limit.policy(), &d.decision);
    map.iter()
        .filter_map(|(name, value)| {
            Some(HeaderValue {
                key: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
                ..HeaderValue::default()
            })
        })
        .collect()
}

fn count_request(domain: &str, code: Code) {
    let code = match code {
        Code::OverLimit => "over_limit",
        _ => "ok",
    };
    metrics::counter!("ratelimit_rls_requests_total", "domain" => domain.to_owned(), "code" => code)
        .increment(1);
}
