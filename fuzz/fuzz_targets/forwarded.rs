//! `X-Forwarded-For` and `Forwarded` with any values, from any peer: the client address is
//! the peer's unless the peer is a trusted proxy, and is always an address; its identity is
//! its network under any prefix lengths; never a panic.
//!
//! Input, one item per line: the peer address; a byte whose bits pick the header the
//! proxies write and the IPv4 and IPv6 prefix lengths; then header lines, `x:` for an
//! `X-Forwarded-For` and `f:` for a `Forwarded` (each line one header, repeatable).

#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Request};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use limiter_http::{ClientIp, ForwardedHeader};

fn trusted() -> Vec<IpNet> {
    ["10.0.0.0/8", "192.168.0.0/16", "127.0.0.1/32", "fd00::/8"]
        .iter()
        .map(|net| net.parse().expect("a network"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(Ok(peer)) = lines.next().map(std::str::from_utf8) else {
        return;
    };
    let Ok(peer) = peer.parse::<IpAddr>() else {
        return;
    };
    let knobs = lines.next().and_then(|l| l.first().copied()).unwrap_or(0);
    let header = if knobs & 1 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let (v4, v6) = (knobs >> 1 & 0x3f, knobs.rotate_left(3));
    let ip = ClientIp::new()
        .trust_proxies(trusted())
        .forwarded_header(header);
    // Prefix lengths: 1 to 32 and 1 to 128, or an error, nothing in between.
    let ip = match ip.clone().key_prefixes(v4, v6) {
        Ok(prefixed) => {
            assert!((1..=32).contains(&v4) && (1..=128).contains(&v6));
            prefixed
        }
        Err(_) => {
            assert!(!((1..=32).contains(&v4) && (1..=128).contains(&v6)));
            ip
        }
    };

    let mut request = Request::get("/").body(()).expect("a request");
    let mut forwarded = false;
    for line in lines {
        let (name, value) = match line.split_first_chunk::<2>() {
            Some((b"x:", value)) => ("x-forwarded-for", value),
            Some((b"f:", value)) => ("forwarded", value),
            _ => continue,
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request.headers_mut().append(name, value);
            forwarded = true;
        }
    }
    request.extensions_mut().insert(SocketAddr::new(peer, 443));
    let (parts, ()) = request.into_parts();

    let client = ip.client_ip(&parts).expect("the peer is known");
    let canonical = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    let peer_trusted = trusted().iter().any(|net| net.contains(&canonical));
    if !peer_trusted || !forwarded {
        assert_eq!(
            client, canonical,
            "a header decided the client of an untrusted peer"
        );
    }
    let id = ip.client_id(client);
    assert!(id.starts_with("ip:"), "{id}");
});
