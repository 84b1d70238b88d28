//! The rate-limit response fields.

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use limiter_core::{Decision, Policy, ceil_secs};

/// `X-RateLimit-Limit`: the capacity of the reported bucket.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: whole tokens left in it.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until it is full again.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10): every quota of the policy,
/// as `q` = its bucket's capacity per `w` = the seconds that bucket takes to refill.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10): the state of the reported quota.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The draft's policy name of quota `i`: the policy's name, suffixed with the index when
/// the policy has several quotas. Policy names are `[A-Za-z0-9_.-]`, safe in an sf-string.
fn item_name(policy: &Policy, i: usize) -> String {
    if policy.quotas().len() == 1 {
        policy.name().to_owned()
    } else {
        format!("{}.{i}", policy.name())
    }
}

fn value(v: String) -> HeaderValue {
    // Digits and sf-strings of safe characters only: always a valid header value.
    HeaderValue::try_from(v).unwrap_or(HeaderValue::from_static("0"))
}

/// `RateLimit-Policy` for `policy`: it depends on the policy alone, so the layer makes it
/// once per tier.
pub(crate) fn policy_header(policy: &Policy) -> HeaderValue {
    let items: Vec<String> = policy
        .quotas()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            // The bucket as a window: its capacity, over the time it takes to refill from
            // empty (the quota's period unless a burst was allowed), so `q` bounds `r`.
            format!(
                "\"{}\";q={};w={}",
                item_name(policy, i),
                q.capacity(),
                ceil_secs(q.full_refill())
            )
        })
        .collect();
    value(items.join(", "))
}

/// Adds the rate-limit fields of `decision` under `policy` to `headers`; and `Retry-After`
/// when denied.
///
/// `RateLimit`'s `t` is, when denied, the seconds until the request would pass (equal to
/// `Retry-After`) and, when allowed, the seconds until the bucket is full.
pub fn insert_rate_limit_headers(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    insert_with_policy(headers, policy, &policy_header(policy), decision);
}

/// As [`insert_rate_limit_headers`], with `RateLimit-Policy` made beforehand.
pub(crate) fn insert_with_policy(
    headers: &mut HeaderMap,
    policy: &Policy,
    policy_value: &HeaderValue,
    decision: &Decision,
) {
    let Some(reported) = decision.quota else {
        return; // unlimited: there is no limit to describe
    };
    headers.reserve(6);
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        X_RATELIMIT_RESET,
        HeaderValue::from(ceil_secs(decision.reset_after)),
    );
    headers.insert(RATELIMIT_POLICY, policy_value.clone());

    let t = match decision.retry_after {
        Some(wait) => ceil_secs(wait),
        None => ceil_secs(decision.reset_after),
    };
    // One buffer for the whole field: this runs on every response.
    let name = policy.name();
    let mut field = String::with_capacity(name.len() + 32);
    let _ = if policy.quotas().len() == 1 {
        write!(field, "\"{name}\"")
    } else {
        write!(field, "\"{name}.{reported}\"")
    };
    let _ = write!(field, ";r={};t={t}", decision.remaining);
    headers.insert(RATELIMIT, value(field));
    if let Some(wait) = decision.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(wait)));
    }
}
