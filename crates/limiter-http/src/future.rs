//! [`ResponseFuture`]: the limit check, then the inner service or an answer written here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use limiter_core::Error;
use pin_project_lite::pin_project;
use serde_json::Map;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::identify::Rejection;
use crate::problem::problem;
use crate::response::{Asked, Limits, Verdict, already_served, with_limits};
use crate::service::Checked;

type CheckFuture = Pin<Box<dyn Future<Output = Result<Checked, Error>> + Send>>;

/// The limit check: decided at once by the backend ([`RateLimiter::check_now`]), or a
/// future to wait on.
///
/// [`RateLimiter::check_now`]: limiter_core::RateLimiter::check_now
pub(crate) enum Check {
    /// Decided; `None` once taken.
    Ready(Option<Result<Checked, Error>>),
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
            asked: Asked,
        },
        Calling {
            #[pin]
            future: S::Future,
            // What the limit headers are made of, added to the inner response.
            limits: Option<Limits>,
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
        asked: Asked,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some((inner, request)),
                asked,
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

impl<S, ReqBody> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// The state after the check: call the inner service, or answer.
    fn after(verdict: Verdict, asked: &Asked, pending: Option<(S, Request<ReqBody>)>) -> Self {
        match (verdict, pending) {
            (Verdict::Serve(info, policy), Some((mut inner, mut request))) => {
                request.extensions_mut().insert(info);
                State::Calling {
                    future: inner.call(request),
                    limits: info.decision.map(|decision| Limits {
                        shared: Arc::clone(&asked.shared),
                        tier: asked.tier,
                        decision,
                        policy,
                    }),
                }
            }
            (Verdict::Answer(response), _) => State::Answered {
                response: Some(response),
            },
            // Polled again after completion: nothing left to serve.
            (Verdict::Serve(..), None) => State::Answered {
                response: Some(already_served()),
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
                    asked,
                } => {
                    let result = match check {
                        Check::Ready(result) => result.take(),
                        Check::Pending(future) => Some(ready!(future.as_mut().poll(cx))),
                    };
                    let next = match result {
                        Some(result) => State::after(asked.verdict(result), asked, pending.take()),
                        None => State::Answered {
                            response: Some(already_served()),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { future, limits } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(with_limits(response, limits.take())));
                }
                StateProj::Answered { response } => {
                    let response = response.take().unwrap_or_else(already_served);
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
