//! The layer on a plain tower service (no axum), as a hyper server would use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{Counted, layer};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test]
async fn a_plain_tower_service_with_the_peer_in_its_extensions() {
    let limiter = Counted::new();
    let mut service = ServiceBuilder::new()
        .layer(layer(limiter.clone()))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        });
    let request = |peer: &str| {
        let mut req = Request::new(Full::new(Bytes::new()));
        // What a hyper server inserts from its accepted connection.
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        req
    };

    let res = service
        .ready()
        .await
        .unwrap()
        .call(request("192.0.2.1:1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "99");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");

    for _ in 0..99 {
        service
            .ready()
            .await
            .unwrap()
            .call(request("192.0.2.1:2"))
            .await
            .unwrap();
    }
    let res = service
        .ready()
        .await
        .unwrap()
        .call(request("192.0.2.1:3"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(limiter.calls(), 101);
}
