//! Who is the client? The TCP peer, unless that peer is a trusted proxy, in which case the
//! `X-Forwarded-For` (or RFC 7239 `Forwarded`) chain is walked right to left and the first
//! address that is not itself a trusted proxy is the client.
//!
//! Pure logic, no I/O: it runs first on every request.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// `peer` must already be canonical (an IPv4-mapped peer given as IPv4).
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain = forwarded_for_chain(headers);
    // Right to left: each hop appended the address it received from. The first hop we do not
    // trust is the furthest we can believe.
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            // An unparsable entry: we cannot see past it, stop at the last trusted hop.
            None => return client,
        }
    }
    client
}

/// The addresses listed by `X-Forwarded-For` (all instances, in order), or by `Forwarded`
/// when there is no `X-Forwarded-For`. `None` marks an entry that is not an IP address.
fn forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(|entry| parse_ip(entry.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("for=?").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_ip(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` and `[2001:db8::1]:443`. IPv4-mapped IPv6
/// addresses (`::ffff:1.2.3.4`) come back as the IPv4 address they are.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next()?.parse().ok()?
    } else {
        let (host, port) = text.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        IpAddr::V4(host.parse::<std::net::Ipv4Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

/// A trusted-proxy network written in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`) is the
/// IPv4 network it maps, since peers are compared in their canonical (IPv4) form.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
            }
            _ => net,
        },
        IpNet::V4(_) => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &h, &trusted()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.3")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted()), ip("198.51.100.7"));
    }

    #[test]
    fn spoofed_leftmost_entry_is_ignored() {
        // The client prepended 1.1.1.1 itself; our proxy appended the real address.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted()), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_entry_stops_the_walk() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.5")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted()), ip("10.0.0.5"));
    }

    #[test]
    fn forwarded_header_is_understood() {
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted()), ip("2001:db8::1"));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted()), ip("198.51.100.7"));
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(
            canonical_net(mapped),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn trusted_peer_without_headers_is_the_client() {
        assert_eq!(
            resolve(ip("10.0.0.2"), &HeaderMap::new(), &trusted()),
            ip("10.0.0.2")
        );
    }
}
