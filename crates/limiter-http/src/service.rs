use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use limiter_core::{ClientKey, Decision, Tier};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::{Check, ResponseFuture};
use crate::layer::Shared;

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

/// A service guarded by a rate limit; made by [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
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
        let tier = identity.tier();
        let client = self.shared.hasher.hash(identity.id());
        let mut request = Request::from_parts(parts, body);
        // The inner service was driven ready by `poll_ready`; keep that one for this request
        // and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        if self.shared.tiers.get(tier).is_unlimited() {
            let decision = Decision::unlimited();
            crate::telemetry::record_decision(tier, &decision, std::time::Duration::ZERO);
            request.extensions_mut().insert(RateLimitInfo {
                tier,
                client,
                decision: Some(decision),
            });
            return ResponseFuture::calling(inner.call(request));
        }

        let started = Instant::now();
        let policy = self.shared.tiers.get(tier);
        let check = match self
            .shared
            .limiter
            .check_now(&client, policy, self.shared.cost)
        {
            // In-process backends decide here: no future to box.
            Some(result) => Check::Ready(Some(result)),
            None => {
                let shared = Arc::clone(&self.shared);
                Check::Pending(Box::pin(async move {
                    let policy = shared.tiers.get(tier);
                    shared.limiter.check(&client, policy, shared.cost).await
                }))
            }
        };
        ResponseFuture::checking(
            check,
            inner,
            request,
            Arc::clone(&self.shared),
            tier,
            client,
            started,
        )
    }
}
