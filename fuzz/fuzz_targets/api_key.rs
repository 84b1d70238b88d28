//! `X-API-Key` with any value, and any configured key hash: a known key names its tier and
//! is known only by its digest; an unknown one is anonymous or refused (401), as configured;
//! never a panic. The first byte picks what to do with unknown keys; the rest is the header.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::{HeaderValue, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use limiter_core::Tier;
use limiter_http::{ApiKeyOrIp, ApiKeys, ClientIp, Identify, UnknownKey};
use sha2::{Digest, Sha256};

const KNOWN: [(&str, Tier); 2] = [
    ("demo-key-1", Tier::ApiKey),
    ("premium-key-2", Tier::Premium),
];

fn identify(unknown: UnknownKey) -> &'static (ApiKeyOrIp, ClientIp) {
    static ANONYMOUS: OnceLock<(ApiKeyOrIp, ClientIp)> = OnceLock::new();
    static REJECT: OnceLock<(ApiKeyOrIp, ClientIp)> = OnceLock::new();
    let cell = match unknown {
        UnknownKey::Reject => &REJECT,
        _ => &ANONYMOUS,
    };
    cell.get_or_init(|| {
        let mut keys = ApiKeys::new().unknown(unknown);
        for (key, tier) in KNOWN {
            keys = keys
                .with_hash(&ApiKeys::hash_key(key), tier)
                .expect("a valid hash");
        }
        (ApiKeyOrIp::new(keys, ClientIp::new()), ClientIp::new())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, value)) = data.split_first() else {
        return;
    };
    // Key hashes come from configuration: exactly 64 hex digits, or an error.
    if let Ok(text) = std::str::from_utf8(value) {
        let valid = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
        assert_eq!(
            ApiKeys::new().with_hash(text, Tier::ApiKey).is_ok(),
            valid,
            "{text:?}"
        );
    }
    // A header value HTTP can carry; anything else never reaches the layer.
    let Ok(header) = HeaderValue::from_bytes(value) else {
        return;
    };
    let unknown = if mode % 2 == 0 {
        UnknownKey::Anonymous
    } else {
        UnknownKey::Reject
    };
    let (identify, ip) = identify(unknown);
    let peer: SocketAddr = "203.0.113.9:4321".parse().expect("an address");
    let mut request = Request::get("/").body(()).expect("a request");
    request.headers_mut().insert("x-api-key", header);
    request.extensions_mut().insert(peer);
    let (parts, ()) = request.into_parts();

    let known = KNOWN.iter().find(|(key, _)| key.as_bytes() == value);
    match (identify.identify(&parts), known) {
        (Ok(identity), Some(&(_, tier))) => {
            assert_eq!(identity.tier(), tier);
            let digest = hex::encode(Sha256::digest(value));
            assert_eq!(
                identity.id(),
                format!("key:{digest}"),
                "known only by its digest"
            );
        }
        (Ok(identity), None) => {
            assert_eq!(unknown, UnknownKey::Anonymous, "an unknown key passed");
            assert_eq!(identity.tier(), Tier::Anonymous);
            assert_eq!(identity.id(), ip.client_id(peer.ip()));
        }
        (Err(rejection), None) => {
            assert_eq!(unknown, UnknownKey::Reject, "{rejection:?}");
            assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
        }
        (Err(rejection), Some(_)) => panic!("a known key was refused: {rejection:?}"),
    }
});
