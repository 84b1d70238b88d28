//! [`RateLimit`], the guarded service, and the state its clones share.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::request::Parts;
use http::{HeaderValue, Request, Response};
use limiter_core::{
    ClientKey, ClientKeyHasher, Decision, Error, Policy, RateLimiter, Tier, TierPolicies,
};
use limiter_rules::{MAX_RESOURCE_LEN, Observe, Operation, Query, Rules, validate_resource};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::{Check, ResponseFuture};
use crate::headers::policy_header;
use crate::identify::{Identify, Identity};
use crate::layer::OnError;
use crate::response::Asked;

/// What the middleware learned about a request, in its extensions for the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The client's tier.
    pub tier: Tier,
    /// The client's hashed identity (never the raw ID).
    pub client: ClientKey,
    /// The decision that admitted the request; `None` when the limiter could not decide and
    /// the request was let through ([`OnError::Allow`](crate::OnError::Allow)).
    pub decision: Option<Decision>,
}

/// Everything a guarded request needs, shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) hasher: ClientKeyHasher,
    pub(crate) tiers: Arc<[TierLimits; 4]>,
    pub(crate) identify: Arc<dyn Identify>,
    pub(crate) cost: u64,
    pub(crate) on_error: OnError,
    pub(crate) rules: Option<Rules>,
    pub(crate) resource: ResourceOf,
    pub(crate) observer: Option<Arc<dyn Observe>>,
    pub(crate) explain: Option<ExplainDenial>,
}

/// Says why a denial happened when it is not the limit itself (`"throttled"`).
pub(crate) type ExplainDenial =
    Arc<dyn Fn(&Policy, &Decision) -> Option<&'static str> + Send + Sync>;

/// Names a request's resource for rules.
pub(crate) type ResourceOf = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The default resource: the request's path. A path longer than a rule can name is cut at
/// the last `/` that fits, so a long path still falls under the prefixes above it.
pub(crate) fn path_resource(parts: &Parts) -> Option<String> {
    let path = parts.uri.path();
    let path = if path.len() > MAX_RESOURCE_LEN {
        let head = &path.as_bytes()[..=MAX_RESOURCE_LEN];
        let cut = head.iter().rposition(|&b| b == b'/')?;
        &path[..cut.max(1)]
    } else {
        path
    };
    validate_resource(path).is_ok().then(|| path.to_owned())
}

/// A check's decision and the policy that made it: a rule's, or `None` for the tier's.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) decision: Decision,
    pub(crate) policy: Option<Policy>,
}

impl Checked {
    fn tier(decision: Decision) -> Self {
        Self {
            decision,
            policy: None,
        }
    }
}

/// A tier's policy and its `RateLimit-Policy` field, made once.
pub(crate) struct TierLimits {
    pub(crate) policy: Policy,
    pub(crate) policy_header: HeaderValue,
}

/// Each tier's limits, in [`Tier`] order.
pub(crate) fn tier_limits(tiers: &TierPolicies) -> Arc<[TierLimits; 4]> {
    Arc::new(Tier::ALL.map(|tier| {
        let policy = tiers.get(tier).clone();
        TierLimits {
            policy_header: policy_header(&policy),
            policy,
        }
    }))
}

impl Shared {
    /// `tier`'s limits.
    pub(crate) fn limits(&self, tier: Tier) -> &TierLimits {
        &self.tiers[tier as usize]
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policies: Vec<&Policy> = self.tiers.iter().map(|t| &t.policy).collect();
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("tiers", &policies)
            .field("cost", &self.cost)
            .field("on_error", &self.on_error)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// A service guarded by a rate limit; made by [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let identity = match self.shared.identify.identify(&parts) {
            Ok(identity) => identity,
            Err(rejection) => return ResponseFuture::rejected(&rejection),
        };
        let resource = match self.shared.rules {
            Some(_) => (self.shared.resource)(&parts),
            None => None,
        };
        let request = Request::from_parts(parts, body);
        let tier = identity.tier();
        let client = self.shared.hasher.hash(identity.id());
        // The inner service was driven ready by `poll_ready`; keep that one for this request
        // and leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);

        let started = Instant::now();
        let check = match &self.shared.rules {
            None => self.check_tier(tier, client),
            Some(_) => self.check_rules(&identity, client, resource),
        };
        let asked = Asked {
            shared: Arc::clone(&self.shared),
            tier,
            client,
            started,
        };
        ResponseFuture::checking(check, inner, request, asked)
    }
}

impl<S> RateLimit<S> {
    /// The check of the tier's policy, without rules.
    fn check_tier(&self, tier: Tier, client: ClientKey) -> Check {
        let policy = &self.shared.limits(tier).policy;
        if policy.is_unlimited() {
            Check::Ready(Some(Ok(Checked::tier(Decision::unlimited()))))
        } else if let Some(result) =
            self.shared
                .limiter
                .check_now(&client, policy, self.shared.cost)
        {
            // In-process backends decide here: no future to box.
            Check::Ready(Some(result.map(Checked::tier)))
        } else {
            let shared = Arc::clone(&self.shared);
            Check::Pending(Box::pin(async move {
                let policy = &shared.limits(tier).policy;
                let decision = shared.limiter.check(&client, policy, shared.cost).await?;
                Ok(Checked::tier(decision))
            }))
        }
    }

    /// The check under the rules in force: the tier's policy unless a rule matches.
    fn check_rules(
        &self,
        identity: &Identity,
        client: ClientKey,
        resource: Option<String>,
    ) -> Check {
        let Some(rules) = &self.shared.rules else {
            return self.check_tier(identity.tier(), client);
        };
        let set = rules.current();
        let (tier, ip, api_key) = (identity.tier(), identity.ip(), identity.api_key());
        let query = Query {
            tier,
            client,
            ip,
            api_key,
            resource: resource.as_deref(),
        };
        let resolution = set.resolve(&query);
        let tier_policy = &self.shared.limits(tier).policy;
        if resolution.rule.is_none() && resolution.shadow.is_none() {
            // The tier decides: as without rules, in place when the backend can.
            let decided = if tier_policy.is_unlimited() {
                Some(Ok(Decision::unlimited()))
            } else {
                self.shared
                    .limiter
                    .check_now(&client, tier_policy, self.shared.cost)
            };
            if let Some(result) = decided {
                return Check::Ready(Some(result.map(|decision| {
                    let verdict = limiter_rules::finish(&set, resolution, decision, None);
                    if let Some(observer) = &self.shared.observer {
                        observer.observe(&query, &verdict);
                    }
                    Checked::tier(verdict.decision)
                })));
            }
        }
        let shared = Arc::clone(&self.shared);
        Check::Pending(Box::pin(async move {
            let query = Query {
                tier,
                client,
                ip,
                api_key,
                resource: resource.as_deref(),
            };
            let resolution = set.resolve(&query);
            let verdict = limiter_rules::decide(
                &*shared.limiter,
                &set,
                resolution,
                &shared.limits(tier).policy,
                &client,
                shared.cost,
                Operation::Check,
            )
            .await?;
            if let Some(observer) = &shared.observer {
                observer.observe(&query, &verdict);
            }
            Ok::<_, Error>(Checked {
                decision: verdict.decision,
                policy: resolution.rule.map(|r| r.policy().clone()),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource_of(path: &str) -> Option<String> {
        let (parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
        path_resource(&parts)
    }

    #[test]
    fn long_paths_stay_under_their_prefixes() {
        assert_eq!(
            resource_of("/api/upload/1").as_deref(),
            Some("/api/upload/1")
        );
        let long = format!("/api/upload/{}", "x".repeat(300));
        assert_eq!(resource_of(&long).as_deref(), Some("/api/upload"));
        let deep = format!("/a/{}/b", "y".repeat(300));
        assert_eq!(resource_of(&deep).as_deref(), Some("/a"));
        assert_eq!(
            resource_of(&format!("/{}", "z".repeat(300))).as_deref(),
            Some("/")
        );
    }
}
