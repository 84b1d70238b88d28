//! Anonymous clients by address: the TCP peer, or the first untrusted hop of the forwarding
//! header trusted proxies write, keyed by its network.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::header::{FORWARDED, HeaderName};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use ipnet::IpNet;
use limiter_core::Tier;
use serde::{Deserialize, Serialize};

use super::{Identify, Identity, Rejection};

/// Forwarding hops read from `Forwarded` / `X-Forwarded-For`, right to left, at most.
const MAX_HOPS: usize = 64;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Anonymous clients, known by IP address, or by the network it belongs to.
///
/// The address is the TCP peer's (axum's `ConnectInfo<SocketAddr>`, or a `SocketAddr` in the
/// request extensions for plain hyper). Only when the peer is a trusted proxy is the one
/// forwarding header the proxies write read ([`ForwardedHeader`], `X-Forwarded-For` by
/// default), right to left, skipping trusted hops: the client is the first untrusted
/// address. The other header is never read: proxies pass it through from the client
/// untouched. A client talking directly cannot name itself, so it cannot spoof its way to a
/// fresh bucket.
///
/// One client is one network of [`key_prefixes`](Self::key_prefixes): by default an IPv4
/// address (/32) or an IPv6 /64, the block one subscriber line or host gets, so that a
/// client cannot take a fresh bucket for each of its 2^64 addresses.
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::default(),
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// The IPv4 network one anonymous client is known by, by default: one address.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;

/// The IPv6 network one anonymous client is known by, by default: a /64, the smallest block
/// a subscriber line or host is handed (RFC 6177), inside which it picks any address.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Which forwarding header the trusted proxies write. In configuration files:
/// `"x-forwarded-for"` or `"forwarded"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most cloud load balancers). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters.
    Forwarded,
}

impl ClientIp {
    /// Peer addresses only: no proxy is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts forwarding headers from peers in these networks (load balancers, ingress).
    #[must_use]
    pub fn trust_proxies(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(networks);
        self
    }

    /// Reads `header` from trusted proxies instead of `X-Forwarded-For`.
    #[must_use]
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Knows clients by their IPv4 network of `ipv4` bits and IPv6 network of `ipv6` bits
    /// instead of /32 and /64: all addresses of one network share one bucket.
    ///
    /// # Errors
    /// [`ipnet::PrefixLenError`] unless `ipv4` is 1 to 32 and `ipv6` 1 to 128.
    pub fn key_prefixes(mut self, ipv4: u8, ipv6: u8) -> Result<Self, ipnet::PrefixLenError> {
        if !(1..=32).contains(&ipv4) || !(1..=128).contains(&ipv6) {
            return Err(ipnet::PrefixLenError);
        }
        self.ipv4_prefix = ipv4;
        self.ipv6_prefix = ipv6;
        Ok(self)
    }

    /// The identity of the client at `ip`: its address, or its network when the prefix is
    /// shorter than the address (`ip:2001:db8:1:2::/64`).
    pub fn client_id(&self, ip: IpAddr) -> String {
        let prefix = match ip {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        match IpNet::new(ip, prefix) {
            Ok(net) if net.prefix_len() < net.max_prefix_len() => format!("ip:{}", net.trunc()),
            _ => format!("ip:{ip}"),
        }
    }

    /// The networks trusted as proxies.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request, if the server recorded its peer.
    pub fn client_ip(&self, request: &Parts) -> Option<IpAddr> {
        let peer = peer_addr(request)?;
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let headers = &request.headers;
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
            ForwardedHeader::Forwarded => forwarded_for(headers),
        };
        // Right to left: each trusted hop vouches for the one before it.
        let mut client = peer;
        for hop in hops.into_iter().rev().take(MAX_HOPS) {
            match hop {
                Some(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // An entry that is not an address (obfuscated, garbled): nothing to its left
                // can be vouched for, so the last good hop is the client.
                None => break,
            }
        }
        Some(client)
    }
}

impl Identify for ClientIp {
    fn identify(&self, request: &Parts) -> Result<Identity, Rejection> {
        match self.client_ip(request) {
            Some(ip) => Ok(Identity::new(Tier::Anonymous, self.client_id(ip)).with_ip(ip)),
            None => Err(no_peer()),
        }
    }
}

fn no_peer() -> Rejection {
    tracing::error!(
        "no client address on the request: serve with `into_make_service_with_connect_info::<SocketAddr>()` or insert the peer SocketAddr"
    );
    Rejection::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server could not tell the client's address",
    )
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack sockets) as IPv4, so one
/// client has one identity and IPv4 networks match it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn peer_addr(request: &Parts) -> Option<IpAddr> {
    let ext = &request.extensions;
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
        .map(canonical)
}

/// Every `X-Forwarded-For` entry in order, `None` where one is not an address.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(v) => v.split(',').map(parse_node).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect()
}

/// The `for=` node of every `Forwarded` element (RFC 7239) in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(v) => v
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, node)| parse_node(node.trim().trim_matches('"')))
                })
                .collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    node.parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            node.strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
        })
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::super::parts;
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn behind_lb() -> ClientIp {
        ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let p = parts("198.51.100.7:5000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(ClientIp::new().client_ip(&p), ip("198.51.100.7"));
        assert_eq!(behind_lb().client_ip(&p), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_hops_are_skipped_right_to_left() {
        // The client prepended a lie; the load balancer appended what it saw.
        let p = parts(
            "10.0.0.2:80",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.9")],
        );
        assert_eq!(behind_lb().client_ip(&p), ip("203.0.113.5"));
    }

    #[test]
    fn several_headers_read_in_order() {
        let p = parts(
            "10.0.0.2:80",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.5"),
            ],
        );
        assert_eq!(behind_lb().client_ip(&p), ip("203.0.113.5"));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let p = parts(
            "10.0.0.2:80",
            &[
                (
                    "forwarded",
                    r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https"#,
                ),
                ("x-forwarded-for", "5.5.5.5"),
            ],
        );
        assert_eq!(behind_lb().client_ip(&p), ip("5.5.5.5"));
        let rfc7239 = behind_lb().forwarded_header(ForwardedHeader::Forwarded);
        assert_eq!(rfc7239.client_ip(&p), ip("2001:db8::7"));
    }

    #[test]
    fn garbage_stops_at_the_last_good_hop() {
        let p = parts(
            "10.0.0.2:80",
            &[("x-forwarded-for", "203.0.113.5, nonsense, 10.0.0.3")],
        );
        assert_eq!(behind_lb().client_ip(&p), ip("10.0.0.3"));
        let p = parts("10.0.0.2:80", &[("forwarded", "for=_hidden")]);
        let rfc7239 = behind_lb().forwarded_header(ForwardedHeader::Forwarded);
        assert_eq!(rfc7239.client_ip(&p), ip("10.0.0.2"));
    }

    #[test]
    fn mapped_ipv4_is_one_client() {
        let p = parts("[::ffff:198.51.100.7]:5000", &[]);
        assert_eq!(ClientIp::new().client_ip(&p), ip("198.51.100.7"));
    }

    #[test]
    fn ipv6_clients_are_their_64_ipv4_clients_their_address() {
        let who =
            |ip: &ClientIp, peer: &str| ip.identify(&parts(peer, &[])).unwrap().id().to_owned();
        let ip = ClientIp::new();
        assert_eq!(who(&ip, "[2001:db8:1:2::7]:1"), "ip:2001:db8:1:2::/64");
        assert_eq!(
            who(&ip, "[2001:db8:1:2:ffff:ffff:ffff:ffff]:1"),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(who(&ip, "[2001:db8:1:3::7]:1"), "ip:2001:db8:1:3::/64");
        assert_eq!(who(&ip, "198.51.100.7:1"), "ip:198.51.100.7");
        let wide = ClientIp::new().key_prefixes(24, 48).unwrap();
        assert_eq!(who(&wide, "198.51.100.7:1"), "ip:198.51.100.0/24");
        assert_eq!(who(&wide, "[2001:db8:1:2::7]:1"), "ip:2001:db8:1::/48");
        let exact = ClientIp::new().key_prefixes(32, 128).unwrap();
        assert_eq!(who(&exact, "[2001:db8:1:2::7]:1"), "ip:2001:db8:1:2::7");
        for (v4, v6) in [(0, 64), (33, 64), (32, 0), (32, 129)] {
            assert!(ClientIp::new().key_prefixes(v4, v6).is_err(), "/{v4} /{v6}");
        }
    }

    #[test]
    fn no_peer_is_a_rejection_not_a_panic() {
        let (p, ()) = http::Request::new(()).into_parts();
        assert!(ClientIp::new().identify(&p).is_err());
    }
}
