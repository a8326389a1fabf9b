//! The address guard of avatar downloads: never a connection to a
//! loopback, private, link-local or otherwise internal address. Literal
//! addresses are judged before any connection ([`internal_reason`]); host
//! names after DNS resolution, inside the HTTP client's own resolver
//! ([`CheckedResolver`]), so the connection can only go to an address that
//! was checked (no time-of-check/time-of-use gap, no DNS rebinding). Hosts
//! in `AVATAR_ALLOWED_HOSTS` ([`AllowedHost`]) skip the check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Host;

/// Why `ip` must not be contacted ("a loopback", …), or None for a
/// public address.
pub fn internal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (this-network)",
        (10, _, _) => "a private",
        (100, 64..=127, _) => "a shared (carrier-grade NAT)",
        (127, _, _) => "a loopback",
        (169, 254, _) => "a link-local",
        (172, 16..=31, _) => "a private",
        (192, 0, 0) => "an IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (192, 88, 99) => "a 6to4 relay",
        (192, 168, _) => "a private",
        (198, 18..=19, _) => "a benchmarking",
        (224..=239, _, _) => "a multicast",
        (255, 255, 255) if ip.is_broadcast() => "the broadcast",
        (240..=255, _, _) => "a reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_loopback() {
        return Some("a loopback");
    }
    // ::ffff:a.b.c.d reaches a.b.c.d: judge the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "an IPv4-mapped internal");
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address too.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded(s[6], s[7])).map(|_| "a NAT64 internal");
    }
    // 6to4 (2002::/16) embeds an IPv4 address in its next 32 bits.
    if s[0] == 0x2002 {
        return v4_reason(embedded(s[1], s[2])).map(|_| "a 6to4 internal");
    }
    Some(match s[0] {
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0 => "a reserved",
        0x0064 if s[1] == 0xff9b => "a local-use NAT64",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only",
        0x2001 if s[1] == 0 => "a Teredo",
        0x2001 if s[1] == 0x0db8 => "a documentation",
        0x2001 if s[1] < 0x0200 => "an IETF protocol",
        0x3fff if s[1] < 0x1000 => "a documentation",
        x if x & 0xfe00 == 0xfc00 => "a unique-local",
        x if x & 0xffc0 == 0xfe80 => "a link-local",
        x if x & 0xffc0 == 0xfec0 => "a site-local",
        x if x & 0xff00 == 0xff00 => "a multicast",
        _ => return None,
    })
}

/// The refusal a [`CheckedResolver`] hands to the HTTP client; found again
/// in the error's source chain by [`super::describe`].
#[derive(Debug)]
pub(super) struct AddressRefused(pub(super) String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// Resolves a name, then refuses it if any of its addresses is internal;
/// the client connects only to the addresses returned here.
pub(super) struct CheckedResolver;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                if let Some(why) = internal_reason(addr.ip()) {
                    let refusal =
                        AddressRefused(format!("{host} resolves to {}, {why} address", addr.ip()));
                    return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An `AVATAR_ALLOWED_HOSTS` entry: `host`, `host:port`, `[v6]:port`, `v6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    pub(super) fn parse(entry: &str) -> AllowedHost {
        let entry = entry.trim().to_lowercase();
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            match rest.split_once(']') {
                Some((host, tail)) => (
                    host.to_string(),
                    tail.strip_prefix(':').and_then(|p| p.parse().ok()),
                ),
                None => (rest.to_string(), None),
            }
        } else if entry.matches(':').count() == 1 {
            let (host, port) = entry.split_once(':').expect("one colon");
            match port.parse() {
                Ok(port) => (host.to_string(), Some(port)),
                Err(_) => (entry.clone(), None),
            }
        } else {
            (entry.clone(), None)
        };
        AllowedHost {
            host: host.trim_end_matches('.').to_string(),
            port,
        }
    }

    pub(super) fn matches(&self, host: &Host<&str>, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        match host {
            Host::Domain(name) => name.trim_end_matches('.').eq_ignore_ascii_case(&self.host),
            Host::Ipv4(ip) => self.host.parse::<IpAddr>().ok() == Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.host.parse::<IpAddr>().ok() == Some(IpAddr::V6(*ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(ip: &str) -> Option<&'static str> {
        internal_reason(ip.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:db8::1",
            "2001::1",
            "fec0::1",
        ] {
            assert!(reason(ip).is_some(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_fetched() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(reason(ip), None, "{ip} should be allowed");
        }
    }

    #[test]
    fn allow_list_entries_match_host_and_port() {
        let any_port = AllowedHost::parse("CDN.local");
        assert!(any_port.matches(&Host::Domain("cdn.local"), Some(8080)));
        let one_port = AllowedHost::parse("127.0.0.1:8080");
        let lo = Host::Ipv4(Ipv4Addr::LOCALHOST);
        assert!(one_port.matches(&lo, Some(8080)));
        assert!(!one_port.matches(&lo, Some(8081)));
        let v6 = AllowedHost::parse("[::1]:9000");
        assert!(v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(9000)));
        assert!(!v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(80)));
        let bare_v6 = AllowedHost::parse("::1");
        assert!(bare_v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(80)));
    }
}
