//! A response body that holds its request's in-flight lease until it is read to the end or
//! dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use reqwest_outbound::{Response, ResponseBuilderExt};

use crate::leases::Lease;

pin_project! {
    /// The body, and the lease that goes with it.
    struct Leased {
        #[pin]
        inner: reqwest_outbound::Body,
        lease: Option<Lease>,
    }
}

impl Body for Leased {
    type Data = Bytes;
    type Error = reqwest_outbound::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &frame {
            // Read to the end (or failed): the place is free for the next request.
            this.lease.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `response` whose body keeps `lease` until it is read to the end or dropped.
pub(crate) fn with_lease(response: Response, lease: Option<Lease>) -> Response {
    let Some(lease) = lease else {
        return response;
    };
    let url = response.url().clone();
    let (parts, body) = http::Response::<reqwest_outbound::Body>::from(response).into_parts();
    let leased = Leased {
        inner: body,
        lease: Some(lease),
    };
    let mut rebuilt = http::Response::builder()
        .url(url)
        .body(reqwest_outbound::Body::wrap(leased))
        .unwrap_or_default();
    *rebuilt.status_mut() = parts.status;
    *rebuilt.version_mut() = parts.version;
    *rebuilt.headers_mut() = parts.headers;
    // What the client recorded (the peer's address, TLS details) stays with the response.
    rebuilt.extensions_mut().extend(parts.extensions);
    Response::from(rebuilt)
}
