//! The client's address: the socket peer, unless the peer is a trusted proxy
//! (`TRUSTED_PROXIES`); then the nearest address in `X-Forwarded-For` (or `Forwarded`) that is
//! not itself a trusted proxy. Walking from the right matters: a client can put anything at the
//! left of the header, but every entry to the right was appended by a proxy we trust.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address limits and logs should attribute a request to.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut chain = forwarded_for(headers, "x-forwarded-for", |e| Some(e.trim()));
    if chain.is_empty() {
        chain = forwarded_for(headers, "forwarded", forwarded_entry);
    }
    for entry in chain.iter().rev() {
        match entry {
            // An entry that is no address was not written by a proxy we trust: stop there.
            None => return peer,
            Some(ip) if is_trusted(ip) => {}
            Some(ip) => return *ip,
        }
    }
    // Every hop is a trusted proxy: the farthest one is the best we know.
    chain.first().copied().flatten().unwrap_or(peer)
}

/// The entries of every `name` header, in order; `None` where one is not an address.
fn forwarded_for<'a>(headers: &'a HeaderMap, name: &str, pick: fn(&'a str) -> Option<&'a str>) -> Vec<Option<IpAddr>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .filter_map(pick)
        .map(parse_addr)
        .collect()
}

/// The `for=` value of one `Forwarded` element (RFC 7239).
fn forwarded_entry(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// An address, with or without a port, brackets or quotes.
fn parse_addr(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':').filter(|(host, _)| !host.contains(':')).and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(ip("203.0.113.9"), &h, &trusted), ip("203.0.113.9"));
        // Without TRUSTED_PROXIES nothing is believed.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()];
        // The client spoofs 1.1.1.1 at the left; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.3")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        // Several headers are one list.
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "198.51.100.8:5000")]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("198.51.100.8"));
        // Garbage nearest to us: not from a trusted proxy, so the peer stands.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, not-an-ip")]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("10.1.1.1"));
        // Only trusted hops: the farthest.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.3")]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("forwarded", r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";by=10.0.0.1"#)]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("2001:db8:cafe::17"));
        assert_eq!(parse_addr("[::1]"), Some(ip("::1")));
        assert_eq!(parse_addr("::1"), Some(ip("::1")));
        assert_eq!(parse_addr("unknown"), None);
    }
}
