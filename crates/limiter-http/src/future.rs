use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use limiter_core::{ClientKey, Decision, Error, Tier};
use pin_project_lite::pin_project;
use serde_json::Map;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::headers::{problem, too_many_requests};
use crate::identify::Rejection;
use crate::layer::{OnError, Shared};
use crate::service::RateLimitInfo;
use crate::telemetry;

type CheckFuture = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

/// The limit check: decided at once by the backend ([`RateLimiter::check_now`]), or a
/// future to wait on.
///
/// [`RateLimiter::check_now`]: limiter_core::RateLimiter::check_now
pub(crate) enum Check {
    /// Decided; `None` once taken.
    Ready(Option<Result<Decision, Error>>),
    Pending(CheckFuture),
}

pin_project! {
    /// The response of a [`RateLimit`](crate::RateLimit) service: the limit check, then the
    /// inner service (allowed) or a response written here (denied, rejected).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Checking {
            check: Check,
            pending: Option<(S, Request<ReqBody>)>,
            shared: Arc<Shared>,
            tier: Tier,
            client: ClientKey,
            started: Instant,
        },
        Calling {
            #[pin]
            future: S::Future,
            // What the limit headers are made of, added to the inner response.
            limits: Option<(Arc<Shared>, Tier, Decision)>,
        },
        Answered {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn checking(
        check: Check,
        inner: S,
        request: Request<ReqBody>,
        shared: Arc<Shared>,
        tier: Tier,
        client: ClientKey,
        started: Instant,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some((inner, request)),
                shared,
                tier,
                client,
                started,
            },
        }
    }

    pub(crate) fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                limits: None,
            },
        }
    }

    pub(crate) fn rejected(rejection: &Rejection) -> Self {
        Self::answered(problem(rejection.status, &rejection.detail, Map::new()))
    }

    fn answered(response: Response<Bytes>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Checking {
                    check,
                    pending,
                    shared,
                    tier,
                    client,
                    started,
                } => {
                    let result = match check {
                        Check::Ready(result) => result.take(),
                        Check::Pending(future) => Some(ready!(future.as_mut().poll(cx))),
                    };
                    let latency = started.elapsed();
                    let policy = shared.tiers.get(*tier);
                    let (Some(result), Some((mut inner, mut request))) = (result, pending.take())
                    else {
                        // Polled again after completion: nothing left to serve.
                        let response = problem(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "request already served",
                            Map::new(),
                        );
                        state.set(State::Answered {
                            response: Some(response),
                        });
                        continue;
                    };
                    let next = match result {
                        Ok(decision) => {
                            telemetry::record_decision(*tier, &decision, latency);
                            if decision.allowed {
                                request.extensions_mut().insert(RateLimitInfo {
                                    tier: *tier,
                                    client: *client,
                                    decision: Some(decision),
                                });
                                State::Calling {
                                    future: inner.call(request),
                                    limits: Some((Arc::clone(shared), *tier, decision)),
                                }
                            } else {
                                tracing::debug!(
                                    target: "limiter_http",
                                    client = %client,
                                    tier = %tier,
                                    retry_after_ms = decision.retry_after.map(|d| d.as_millis()),
                                    backend = decision.backend.as_str(),
                                    "rate limited"
                                );
                                State::Answered {
                                    response: Some(too_many_requests(policy, &decision)),
                                }
                            }
                        }
                        Err(error) => {
                            telemetry::record_error(*tier, &error, latency);
                            match shared.on_error {
                                OnError::Allow => {
                                    tracing::warn!(target: "limiter_http", %error, client = %client, "rate limiter failed: request let through");
                                    request.extensions_mut().insert(RateLimitInfo {
                                        tier: *tier,
                                        client: *client,
                                        decision: None,
                                    });
                                    State::Calling {
                                        future: inner.call(request),
                                        limits: None,
                                    }
                                }
                                OnError::Deny => {
                                    tracing::warn!(target: "limiter_http", %error, client = %client, "rate limiter failed: request refused");
                                    let mut response = problem(
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        "the rate limiter could not decide; retry shortly",
                                        Map::new(),
                                    );
                                    response
                                        .headers_mut()
                                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                                    State::Answered {
                                        response: Some(response),
                                    }
                                }
                            }
                        }
                    };
                    state.set(next);
                }
                StateProj::Calling { future, limits } => {
                    let response = ready!(future.poll(cx))?;
                    let (mut parts, body) = response.into_parts();
                    if let Some((shared, tier, decision)) = limits.take() {
                        shared.insert_headers(&mut parts.headers, tier, &decision);
                    }
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
                }
                StateProj::Answered { response } => {
                    let response = response.take().unwrap_or_else(|| {
                        problem(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "request already served",
                            Map::new(),
                        )
                    });
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
