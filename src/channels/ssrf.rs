//! The SSRF guard: upstream base URLs must not lead to loopback, private (RFC 1918, ULA),
//! link-local (cloud metadata at 169.254.169.254 included), CGNAT, unspecified, multicast or
//! broadcast addresses, nor to IPv4-mapped, -compatible or NAT64 forms of them — unless
//! `ALLOW_PRIVATE_UPSTREAMS=true`. Names are checked when a channel is saved and again at
//! connect time by the resolver the upstream client uses (so a name that later resolves
//! elsewhere — DNS rebinding — is still refused); literal IP hosts, which reqwest connects to
//! without asking the resolver, are checked before every request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// True when `ip` is an address upstream traffic must not go to.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) or
/// NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(tail);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    None
}

/// Why a base URL is refused.
pub fn refusal(host: &str) -> String {
    format!(
        "the upstream host `{host}` is a loopback, private, link-local or otherwise internal address; \
         set ALLOW_PRIVATE_UPSTREAMS=true to allow it"
    )
}

/// Refuses a URL whose host is a literal internal address (no DNS involved).
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
            return Err(refusal(d));
        }
        _ => return Ok(()),
    };
    if is_forbidden(ip) { Err(refusal(&ip.to_string())) } else { Ok(()) }
}

/// Refuses a URL whose host is, or resolves to, an internal address (for saving a channel).
pub async fn check_url(url: &Url, allow_private: bool) -> Result<(), String> {
    check_literal(url, allow_private)?;
    if allow_private {
        return Ok(());
    }
    let Some(Host::Domain(name)) = url.host() else { return Ok(()) };
    let port = url.port_or_known_default().unwrap_or(443);
    // A name that does not resolve now is not refused (DNS may be down at start, or the name
    // not public yet): the resolver checks every address again at connect time.
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::debug!(host = name, error = %e, "the upstream host does not resolve now");
            Vec::new()
        }
    };
    if addrs.iter().any(|a| is_forbidden(a.ip())) {
        return Err(refusal(name));
    }
    Ok(())
}

/// The upstream client's resolver: the system's, keeping only addresses that are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| !is_forbidden(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(std::io::Error::other(refusal(&host))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_in_every_form() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(check_literal(&url("http://[::ffff:7f00:1]:8080/v1"), false).is_err());
        assert!(check_literal(&url("http://localhost:8080/v1"), false).is_err());
        assert!(check_literal(&url("http://127.0.0.1:8080/v1"), true).is_ok());
        assert!(check_literal(&url("https://api.example.com/v1"), false).is_ok());
    }
}
