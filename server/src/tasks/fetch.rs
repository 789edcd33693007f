//! Fetching input images from user-given URLs without becoming a proxy into the server's
//! network: only public addresses are reached unless `tasks.image_fetch_allow` says
//! otherwise, checked on every resolved address and every redirect hop.
//!
//! The check sits in the DNS resolver reqwest connects through, so the address that was
//! checked is the address connected to (no second lookup an attacker's DNS could answer
//! differently). URLs naming an IP literal skip DNS and are checked before the request and
//! in the redirect policy.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::Settings;

/// The one message a user sees for any fetch failure: it must not tell an attacker whether
/// some internal host or port answered. Operators find the reason in the log.
pub(crate) const FETCH_FAILED: &str = "could not fetch the image at imageUrl";

/// Redirects followed, each checked like the first URL.
const MAX_REDIRECTS: usize = 3;

/// An entry of `tasks.image_fetch_allow`: a host name, or an address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// A host name, compared without case.
    Name(String),
    /// An address range `ip/prefix` (a bare address is a /32 or /128).
    Range(IpAddr, u8),
}

impl HostRule {
    /// Reads `"10.0.0.0/8"`, `"::1"`, `"127.0.0.1"` or `"images.internal"`; `None` if it is
    /// none of those.
    pub fn parse(entry: &str) -> Option<HostRule> {
        let entry = entry.trim();
        let (address, prefix) = match entry.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
            None => (entry, None),
        };
        if let Ok(ip) = address.trim_matches(['[', ']']).parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.unwrap_or(bits);
            return (prefix <= bits).then_some(HostRule::Range(ip, prefix));
        }
        let name_like = !entry.is_empty()
            && prefix.is_none()
            && entry.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        name_like.then(|| HostRule::Name(entry.to_ascii_lowercase()))
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        let HostRule::Range(base, prefix) = self else { return false };
        let prefix = u32::from(*prefix);
        match (canonical(*base), canonical(ip)) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) as IPv4, so
/// that it meets the IPv4 rules.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback, private, link-local
/// (cloud metadata lives at 169.254.169.254), shared (CGNAT), documentation, benchmarking,
/// multicast, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 2)
                || v6.segments()[..6] == [0; 6]) // IPv4-compatible, deprecated
        }
    }
}

/// Which hosts and addresses a fetch may reach.
#[derive(Debug, Default)]
struct Policy {
    allow: Vec<HostRule>,
}

impl Policy {
    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|rule| matches!(rule, HostRule::Name(n) if *n == host))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|rule| rule.covers_ip(ip))
    }

    /// Checks a URL's host where DNS will not: IP literals. Names are checked when resolved.
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(format!("{url} has no host")),
        };
        if self.allows_ip(ip) || self.allows_name(&ip.to_string()) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address (tasks.image_fetch_allow)"))
        }
    }
}

/// Resolves with the system resolver and keeps only the addresses the policy allows; reqwest
/// connects to exactly those.
#[derive(Debug)]
struct CheckedResolver {
    policy: Arc<Policy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?
                .collect();
            let named = policy.allows_name(&host);
            let allowed: Vec<SocketAddr> =
                found.iter().copied().filter(|a| named || policy.allows_ip(a.ip())).collect();
            if allowed.is_empty() {
                let message = format!(
                    "{host} resolves to no public address ({found:?}); see tasks.image_fetch_allow"
                );
                return Err(message.into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Fetches input images with a size and time limit, from public addresses only (or those
/// the operator allowed).
#[derive(Debug, Clone)]
pub(crate) struct ImageFetcher {
    client: reqwest::Client,
    policy: Arc<Policy>,
    limit: usize,
}

impl ImageFetcher {
    pub(crate) fn new(settings: &Settings) -> ImageFetcher {
        let policy = Arc::new(Policy {
            allow: settings
                .tasks
                .image_fetch_allow
                .iter()
                .filter_map(|e| HostRule::parse(e))
                .collect(),
        });
        let redirects = policy.clone();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.tasks.image_fetch_timeout_ms))
            // A proxy would resolve names itself, around the check.
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(why) => attempt.error(why),
                }
            }))
            .build()
            // Building fails only when the TLS backend cannot start: nothing could be fetched.
            .unwrap_or_else(|e| {
                tracing::error!("cannot build the image fetcher's HTTP client: {e}");
                reqwest::Client::new()
            });
        ImageFetcher { client, policy, limit: settings.tasks.image_fetch_bytes }
    }

    /// The image at `url`.
    ///
    /// # Errors
    /// [`FETCH_FAILED`] for anything network-side (the reason is logged), or a sentence
    /// about the size limit.
    pub(crate) async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let fail = |detail: String| {
            tracing::info!(url, "image fetch failed: {detail}");
            FETCH_FAILED.to_owned()
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        self.policy.check_url(&parsed).map_err(fail)?;
        let mut response = self.client.get(parsed).send().await.map_err(|e| fail(chain(&e)))?;
        if !response.status().is_success() {
            return Err(fail(format!("answered {}", response.status())));
        }
        let too_large = || {
            format!(
                "the image at imageUrl is larger than {} bytes (tasks.image_fetch_bytes)",
                self.limit
            )
        };
        if response.content_length().is_some_and(|n| n > self.limit as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(chain(&e)))? {
            if bytes.len() + chunk.len() > self.limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// An error with its sources, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_global_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::10.0.0.1",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn allow_rules_are_names_addresses_or_ranges() {
        assert_eq!(HostRule::parse("127.0.0.1"), Some(HostRule::Range(ip("127.0.0.1"), 32)));
        assert_eq!(HostRule::parse("10.0.0.0/8"), Some(HostRule::Range(ip("10.0.0.0"), 8)));
        assert_eq!(HostRule::parse("[::1]"), Some(HostRule::Range(ip("::1"), 128)));
        assert_eq!(
            HostRule::parse("Images.Internal"),
            Some(HostRule::Name("images.internal".into()))
        );
        for bad in ["", "10.0.0.0/33", "host/8", "a b", "http://x"] {
            assert_eq!(HostRule::parse(bad), None, "{bad}");
        }
        let policy = Policy { allow: vec![HostRule::parse("10.0.0.0/8").unwrap()] };
        assert!(policy.allows_ip(ip("10.9.8.7")) && policy.allows_ip(ip("::ffff:10.0.0.1")));
        assert!(!policy.allows_ip(ip("11.0.0.1")) || is_public(ip("11.0.0.1")));
        assert!(!policy.allows_ip(ip("127.0.0.1")));
        let all = Policy { allow: vec![HostRule::parse("0.0.0.0/0").unwrap()] };
        assert!(all.allows_ip(ip("127.0.0.1")));
    }

    #[test]
    fn literal_addresses_are_checked_before_any_request() {
        let policy = Policy::default();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(policy.check_url(&url("http://169.254.169.254/latest/meta-data/")).is_err());
        assert!(policy.check_url(&url("http://[::1]:8080/x.png")).is_err());
        assert!(
            policy.check_url(&url("http://0x7f000001/x.png")).is_err(),
            "hex form is 127.0.0.1"
        );
        assert!(policy.check_url(&url("http://example.com/x.png")).is_ok(), "names: at resolve");
    }
}
