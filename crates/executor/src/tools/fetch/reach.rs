//! Which addresses a fetch may reach.
//!
//! A URL comes from a prompt, a file or a web page, so it may point at this machine or its
//! network: loopback services, the cloud metadata endpoint (169.254.169.254), the router. Unless
//! the policy allows private addresses, only public ones are reached. Host names are checked
//! where they are resolved (a resolver that hands reqwest only checked addresses, so a name
//! cannot resolve one way for the check and another for the connection), IP literals before the
//! request and at every redirect hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is an ordinary public address: not loopback, unspecified, private, link-local,
/// carrier-grade NAT, multicast, broadcast, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10, shared address space (carrier-grade NAT)
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, IETF protocol assignments
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking
        || (a == 198 && (18..20).contains(&b))
        // 240.0.0.0/4, reserved
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7, unique local
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local
        || (first & 0xffc0) == 0xfe80
        // 2001:db8::/32, documentation
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::/96 (NAT64) reach IPv4 hosts
        // whose address we would have to check as IPv4: refuse rather than guess.
        || ip.to_ipv4().is_some()
        || (first == 0x64 && ip.segments()[1] == 0xff9b))
}

/// Why a URL may not be fetched.
pub fn refusal(host: &str, ip: IpAddr) -> String {
    format!(
        "{host} is {ip}, a private, loopback or link-local address; the policy does not allow \
         fetching from those (allow_private_network)"
    )
}

/// Checks the host of a URL when it is an IP literal. Names are checked by [`PublicOnly`].
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    // The URL parser has already normalised literals (`2130706433` is `127.0.0.1`).
    let host = url.host_str().unwrap_or_default();
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(refusal(url.host_str().unwrap_or_default(), ip))
    }
}

/// A resolver that returns only public addresses, and fails when a name has none.
#[derive(Debug)]
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if public.is_empty() {
                let reason = match all.first() {
                    Some(addr) => refusal(&host, addr.ip()),
                    None => format!("{host} has no address"),
                };
                return Err(reason.into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "172.32.0.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn ip_literals_in_urls_are_checked() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:10.0.0.1]/",
            "http://2130706433/",
        ] {
            let err = check_url(&url.parse().unwrap()).unwrap_err();
            assert!(err.contains("allow_private_network"), "{err}");
        }
        check_url(&"http://1.1.1.1/".parse().unwrap()).unwrap();
        check_url(&"http://example.com/".parse().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused() {
        let err = PublicOnly
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("allow_private_network"), "{err}");
    }
}
