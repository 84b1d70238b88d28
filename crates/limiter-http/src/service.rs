//! [`RateLimit`], the guarded service, and the state its clones share.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use limiter_core::{ClientKey, ClientKeyHasher, Decision, Policy, RateLimiter, Tier, TierPolicies};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::{Check, ResponseFuture};
use crate::headers::policy_header;
use crate::identify::Identify;
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
        let request = Request::from_parts(parts, body);
        let tier = identity.tier();
        let client = self.shared.hasher.hash(identity.id());
        // The inner service was driven ready by `poll_ready`; keep that one for this request
        // and leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);

        let started = Instant::now();
        let policy = &self.shared.limits(tier).policy;
        let check = if policy.is_unlimited() {
            Check::Ready(Some(Ok(Decision::unlimited())))
        } else if let Some(result) =
            self.shared
                .limiter
                .check_now(&client, policy, self.shared.cost)
        {
            // In-process backends decide here: no future to box.
            Check::Ready(Some(result))
        } else {
            let shared = Arc::clone(&self.shared);
            Check::Pending(Box::pin(async move {
                let policy = &shared.limits(tier).policy;
                shared.limiter.check(&client, policy, shared.cost).await
            }))
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
