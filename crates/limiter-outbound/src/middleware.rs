//! [`OutboundLimit`]: the `reqwest-middleware` middleware.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::Extensions;
use http::header::RETRY_AFTER;
use reqwest_middleware::{Middleware, Next};
use reqwest_outbound::{Request, Response, StatusCode, Url};

use crate::Pacer;
use crate::error::OutboundError;

/// The role of a request, set as a request extension
/// (`client.get(url).with_extension(Role::new("artifact"))`); without one, the host's
/// path prefixes decide, and failing those the host's quotas alone apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role(pub String);

impl Role {
    /// A role named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
}

/// Paces every request through a [`Pacer`] before it is sent, and pauses a host that
/// answers `429` or `503` with `Retry-After`. Put it below an HTTP cache, so hits spend
/// nothing.
#[derive(Clone, Debug)]
pub struct OutboundLimit {
    pacer: Arc<Pacer>,
}

impl OutboundLimit {
    /// The middleware around `pacer`.
    pub fn new(pacer: Arc<Pacer>) -> Self {
        Self { pacer }
    }
}

/// `host` or `host:port` as the configuration names it (the port when the URL gives one).
pub fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

#[async_trait]
impl Middleware for OutboundLimit {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let host = authority(request.url());
        let role = match extensions.get::<Role>() {
            Some(role) => Some(role.0.clone()),
            None => self
                .pacer
                .classify(&host, request.url().path())
                .map(str::to_owned),
        };
        let role_label = role.clone().unwrap_or_else(|| "-".to_owned());
        let lease = match self.pacer.acquire(&host, role.as_deref()).await {
            Ok(turn) => {
                if !turn.waited.is_zero() {
                    metrics::counter!("outbound_waits_total", "host" => host.clone(), "role" => role_label.clone())
                        .increment(1);
                }
                metrics::histogram!("outbound_wait_seconds", "host" => host.clone(), "role" => role_label.clone())
                    .record(turn.waited.as_secs_f64());
                turn.lease
            }
            Err(e) => {
                let reason = match &e {
                    OutboundError::TooLongWait(_) => "too_long_wait",
                    _ => "limiter",
                };
                metrics::counter!("outbound_refused_total", "host" => host, "role" => role_label, "reason" => reason)
                    .increment(1);
                return Err(reqwest_middleware::Error::middleware(e));
            }
        };
        metrics::counter!("outbound_requests_total", "host" => host.clone(), "role" => role_label.clone())
            .increment(1);
        // A failed send drops the lease here; a response carries it in its body.
        let response = next.run(request, extensions).await?;
        let status = response.status();
        self.pacer.answered(&host, status.as_u16()).await;
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            metrics::counter!("outbound_pushback_total", "host" => host.clone(), "role" => role_label, "status" => status.as_str().to_owned())
                .increment(1);
            if let Some(until) = retry_after(&response) {
                self.pacer.pause(&host, until).await;
            }
        }
        Ok(crate::body::with_lease(response, lease))
    }
}

/// The end of a `Retry-After`: seconds from now, or an HTTP date.
fn retry_after(response: &Response) -> Option<SystemTime> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs.min(u64::from(u32::MAX)))),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(retry_after: &str) -> Response {
        Response::from(
            http::Response::builder()
                .status(429)
                .header(RETRY_AFTER, retry_after)
                .body(Vec::<u8>::new())
                .unwrap(),
        )
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::now();
        let secs = retry_after(&response("120")).unwrap();
        assert!(secs >= now + Duration::from_secs(119) && secs <= now + Duration::from_secs(121));
        let date = retry_after(&response("Wed, 21 Oct 2065 07:28:00 GMT")).unwrap();
        assert_eq!(
            httpdate::fmt_http_date(date),
            "Wed, 21 Oct 2065 07:28:00 GMT"
        );
        assert!(retry_after(&response("soon")).is_none());
        assert!(retry_after(&response("-5")).is_none());
    }
}
