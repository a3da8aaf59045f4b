//! Header hygiene: which inbound headers are removed before a request reaches an
//! upstream, the forwarding headers Portcullis sets, and the request id.
//!
//! Strip, then inject. Every header that could claim an identity is removed on every
//! route, public ones included, whatever its letter case or `_`/`-` spelling and however
//! often it is repeated: many frameworks (CGI, PHP, Rails, Django behind WSGI) fold
//! `X_Forwarded_User` and `X-Forwarded-User` into the same variable, so both spellings are
//! the same claim. Header names Portcullis uses live here as constants.

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;
use std::collections::HashSet;
use std::net::IpAddr;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Prefixes that are always stripped: the headers Portcullis injects itself, and those of
/// peers whose headers an upstream might have been configured to trust before.
const STRIPPED_PREFIXES: &[&str] = &[
    "x-auth-",
    "x-portcullis-",
    "x-pomerium-",
    "oidc-claim-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "cf-access-",
];

/// Names stripped by default (canonical spelling: lower case, `-` for `_`). Identity claims
/// of common proxies and frameworks, path overrides that some frameworks honour
/// (`X-Original-URL`), and client-address claims that only trusted proxies may make.
pub const DEFAULT_STRIPPED: &[&str] = &[
    // identity, as set by oauth2-proxy, Authelia, mod_auth_openidc, Kong, Apache, ...
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-forwarded-uid",
    "x-remote-user",
    "x-remote-email",
    "x-remote-group",
    "x-remote-groups",
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-user",
    "x-user-id",
    "x-username",
    "x-email",
    "x-user-email",
    "x-groups",
    "x-webauth-user",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-authenticated-groups",
    "x-consumer-id",
    "x-consumer-username",
    "x-userinfo",
    "x-id-token",
    "x-access-token",
    "x-jwt-assertion",
    "oidc-access-token",
    "oidc-access-token-expires",
    "oidc-id-token",
    "oidc-id-token-payload",
    // path overrides honoured by IIS, Symfony and Zend: a way around path-based policy
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    // method overrides honoured by Symfony, Laravel, Rails, Express middleware: a POST
    // that the app treats as DELETE would get past a rule about DELETE
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // scheme, host and prefix claims that Rack, Werkzeug and Spring proxy helpers honour
    // in place of the X-Forwarded-Proto and -Host we rebuild
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-url-scheme",
    "front-end-https",
    "x-original-host",
    "x-host",
    // client-address claims; X-Forwarded-* are rebuilt below instead
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-forwarded-port",
    "x-forwarded-server",
];

/// The compiled strip rules.
#[derive(Debug, Clone)]
pub struct HeaderHygiene {
    exact: HashSet<Box<str>>,
}

impl HeaderHygiene {
    /// The defaults plus `extra` names from config (`strip_headers`).
    pub fn new(extra: &[String]) -> Self {
        let exact = DEFAULT_STRIPPED
            .iter()
            .map(|s| Box::<str>::from(*s))
            .chain(extra.iter().map(|s| canonical(s).into_boxed_str()))
            .collect();
        HeaderHygiene { exact }
    }

    /// True for a header name (as received, any case or spelling) that must not reach an
    /// upstream from a client.
    pub fn is_stripped(&self, name: &str) -> bool {
        // Header names from `http` are already lower case; only `_` needs rewriting, and
        // only then do we allocate.
        if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
            self.is_stripped_canonical(&canonical(name))
        } else {
            self.is_stripped_canonical(name)
        }
    }

    fn is_stripped_canonical(&self, c: &str) -> bool {
        self.exact.contains(c) || STRIPPED_PREFIXES.iter().any(|p| c.starts_with(p))
    }

    /// Removes every stripped header (all values) and the forwarding headers Portcullis
    /// rebuilds. Returns how many distinct names were removed.
    pub fn strip(&self, req: &mut RequestHeader) -> usize {
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in req.headers.keys() {
            let n = name.as_str();
            if self.is_stripped(n) || is_forwarding_spelling(n) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            req.remove_header(name);
        }
        doomed.len()
    }
}

/// Lower case with `_` read as `-`.
fn canonical(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// `X_Forwarded_For`, `Content_Length` and friends: a client's underscore spelling of a
/// header that Portcullis sets or that frames the request is removed, so an upstream that
/// folds `_` into `-` cannot see a second, client-chosen value.
fn is_forwarding_spelling(name: &str) -> bool {
    name.contains('_')
        && matches!(
            canonical(name).as_str(),
            X_FORWARDED_FOR
                | X_FORWARDED_PROTO
                | X_FORWARDED_HOST
                | X_REQUEST_ID
                | "forwarded"
                | "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "upgrade"
                | "te"
                | "trailer"
                | "keep-alive"
        )
}

/// Which peers may tell us the client address and scheme.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the TCP peer, unless the peer is a trusted proxy, in which case
    /// `X-Forwarded-For` is walked from the right past trusted hops. The first untrusted or
    /// unparsable entry ends the walk (an attacker controls everything to its left).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> IpAddr {
        let mut client = canonical_ip(peer);
        if !self.contains(client) {
            return client;
        }
        for value in xff.rev() {
            let Ok(s) = value.to_str() else {
                return client;
            };
            for entry in s.rsplit(',') {
                match parse_xff_entry(entry.trim()) {
                    Some(ip) => {
                        client = ip;
                        if !self.contains(ip) {
                            return client;
                        }
                    }
                    None => return client,
                }
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    // `1.2.3.4:5678` and `[::1]:5678` appear in the wild.
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical_ip(a.ip()))
}

/// Header names as values, so the request path never parses a constant name again.
pub mod names {
    use http::HeaderName;
    pub static X_REQUEST_ID: HeaderName = HeaderName::from_static(super::X_REQUEST_ID);
    pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static(super::X_FORWARDED_FOR);
    pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(super::X_FORWARDED_PROTO);
    pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(super::X_FORWARDED_HOST);
    pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` on the upstream request. A trusted peer's
/// chain is extended; anyone else's is replaced. `host` is the request's host as the
/// client sent it (the `Host` header or the absolute-form authority).
pub fn set_forwarding(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    tls: bool,
    host: Option<HeaderValue>,
) -> pingora::Result<()> {
    let peer_s = peer.map(|p| canonical_ip(p).to_string());
    let xff = if peer_trusted {
        let mut chain = String::new();
        for v in req.headers.get_all(&names::X_FORWARDED_FOR) {
            if let Ok(s) = v.to_str() {
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(s);
            }
        }
        match peer_s {
            Some(p) if chain.is_empty() => p,
            Some(p) => {
                chain.push_str(", ");
                chain.push_str(&p);
                chain
            }
            None => chain,
        }
    } else {
        peer_s.unwrap_or_default()
    };
    let scheme = if tls { "https" } else { "http" };
    let proto = match req.headers.get(&names::X_FORWARDED_PROTO) {
        Some(v) if peer_trusted && v.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        Some(v) if peer_trusted && v.as_bytes().eq_ignore_ascii_case(b"http") => "http",
        _ => scheme,
    };
    let fwd_host = match req.headers.get(&names::X_FORWARDED_HOST) {
        Some(v) if peer_trusted && v.to_str().is_ok() => Some(v.clone()),
        _ => host,
    };
    req.remove_header(&names::X_FORWARDED_FOR);
    req.remove_header(&names::X_FORWARDED_PROTO);
    req.remove_header(&names::X_FORWARDED_HOST);
    req.remove_header(&names::FORWARDED);
    if !xff.is_empty() {
        req.insert_header(names::X_FORWARDED_FOR.clone(), xff)?;
    }
    req.insert_header(names::X_FORWARDED_PROTO.clone(), proto)?;
    if let Some(h) = fwd_host {
        req.insert_header(names::X_FORWARDED_HOST.clone(), h)?;
    }
    Ok(())
}

/// Headers a route's identity templates may not set: framing, routing, forwarding and
/// credentials belong to the protocol and the gateway, not to identity.
pub fn is_reserved_injection(lower: &str) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "cookie",
        "authorization",
        "proxy-authorization",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
        "x-portcullis-assertion",
    ];
    let c = canonical(lower);
    RESERVED.contains(&c.as_str()) || c.starts_with("proxy-")
}

/// Takes the client's `X-Request-Id` when it is a plausible id (1 to 128 characters of
/// letters, digits and `-_.:+=/`), otherwise makes a new random one. Validation keeps
/// ids safe to print in logs and pages.
pub fn request_id(incoming: Option<&HeaderValue>) -> String {
    if let Some(v) = incoming {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:+=/".contains(c))
        {
            // Checked ASCII above, so this cannot fail.
            if let Ok(s) = std::str::from_utf8(b) {
                return s.to_string();
            }
        }
    }
    new_request_id()
}

/// 128 random bits as 32 hex characters.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn req_with(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(Method::GET, b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn strips_identity_headers_in_every_spelling_and_duplicate() {
        let h = HeaderHygiene::new(&["X-Tenant".to_string()]);
        let mut r = req_with(&[
            ("X-Forwarded-User", "a"),
            ("x-forwarded-user", "b"),
            ("X_FORWARDED_USER", "c"),
            ("x_Forwarded-user", "d"),
            ("Remote-User", "e"),
            ("REMOTE_USER", "f"),
            ("X-Auth-Anything", "g"),
            ("x_auth_request_email", "h"),
            ("X-Portcullis-Assertion", "i"),
            ("x_tenant", "j"),
            ("X-Original-URL", "/admin"),
            ("X-Real-IP", "1.2.3.4"),
            ("x_forwarded_for", "9.9.9.9"),
            ("Transfer_Encoding", "chunked"),
            ("content_length", "5"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_Forwarded_Prefix", "/admin"),
            ("Accept", "text/html"),
            ("X-Custom", "keep"),
        ]);
        h.strip(&mut r);
        let mut left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-custom"]);
    }

    #[test]
    fn configured_names_are_canonicalised() {
        let h = HeaderHygiene::new(&["X_Employee_ID".to_string()]);
        assert!(h.is_stripped("x-employee-id"));
        assert!(h.is_stripped("x_employee_id"));
        assert!(!h.is_stripped("x-employee"));
    }

    #[test]
    fn client_ip_ignores_xff_from_untrusted_peers() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let xff = [HeaderValue::from_static("6.6.6.6")];
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(t.client_ip(peer, xff.iter()), peer);
    }

    #[test]
    fn client_ip_walks_trusted_hops_from_the_right() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let xff = [
            HeaderValue::from_static("6.6.6.6, 198.51.100.9"),
            HeaderValue::from_static("10.1.1.1"),
        ];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            t.client_ip(peer, xff.iter()),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        let junk = [HeaderValue::from_static("garbage, 10.1.1.1")];
        assert_eq!(
            t.client_ip(peer, junk.iter()),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(t.contains(mapped));
    }

    #[test]
    fn forwarding_headers_are_replaced_for_untrusted_peers() {
        let mut r = req_with(&[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
        ]);
        set_forwarding(
            &mut r,
            Some("203.0.113.7".parse().unwrap()),
            false,
            false,
            Some(HeaderValue::from_static("shop.example.com")),
        )
        .unwrap();
        assert_eq!(r.headers[X_FORWARDED_FOR], "203.0.113.7");
        assert_eq!(r.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(r.headers[X_FORWARDED_HOST], "shop.example.com");
        assert!(r.headers.get("forwarded").is_none());
    }

    #[test]
    fn forwarding_chain_is_extended_for_trusted_peers() {
        let mut r = req_with(&[
            ("X-Forwarded-For", "198.51.100.9"),
            ("X-Forwarded-Proto", "https"),
        ]);
        set_forwarding(
            &mut r,
            Some("10.0.0.2".parse().unwrap()),
            true,
            false,
            Some(HeaderValue::from_static("h")),
        )
        .unwrap();
        assert_eq!(r.headers[X_FORWARDED_FOR], "198.51.100.9, 10.0.0.2");
        assert_eq!(r.headers[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn request_ids_are_validated() {
        assert_eq!(
            request_id(Some(&HeaderValue::from_static("abc-123"))),
            "abc-123"
        );
        let bad = request_id(Some(&HeaderValue::from_static("<script>")));
        assert_eq!(bad.len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
