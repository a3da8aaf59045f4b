//! Route matching: which route a (normalised) request belongs to.
//!
//! Precedence is simple and documented: routes are tried in file order (policy files in
//! name order, routes in the order written) and the first whose host, path and method
//! all match wins. Matchers are compiled once per config load; matching allocates nothing.

pub mod path;

use http::Method;

/// A host a route applies to: exact (`shop.example.com`) or a wildcard (`*.example.com`,
/// any subdomain at any depth, never the apex). Stored lower-case without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Parses a configured host. Ports are not part of a host pattern.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let is_ip = name.parse::<std::net::IpAddr>().is_ok()
            || (name.starts_with('[') && name.ends_with(']'));
        if name.is_empty() || !(is_ip || name.split('.').all(valid_label)) {
            return Err(format!(
                "{s:?} is not a host name (write `shop.example.com` or `*.example.com`, without port)"
            ));
        }
        if wild && is_ip {
            return Err(format!("{s:?}: a wildcard cannot apply to an IP address"));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// `host` must already be normalised by [`normalize_host`].
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (HostPattern::Suffix(_), HostPattern::Exact(h)) => self.matches(h),
            (HostPattern::Suffix(s), HostPattern::Suffix(t)) => t.ends_with(s.as_str()),
            _ => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// Normalises a request's host for matching: lower-case, no port, no trailing dot.
/// Returns `None` for a host that is not a plausible DNS name or IP literal.
pub fn normalize_host(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    // IPv6 literal: keep the brackets, drop the port.
    let host = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        if !(rest.is_empty() || (rest.starts_with(':') && rest[1..].parse::<u16>().is_ok())) {
            return None;
        }
        &s[..=end]
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() || port.is_empty() => h,
            Some(_) => return None,
            None => s,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        })
    {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

/// Which paths a route covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    /// The path, and the same path with a trailing slash (`/admin` and `/admin/`): most
    /// frameworks serve both the same, so a rule for one must cover the other.
    Exact(String),
    /// Matches on segment boundaries: `/api` covers `/api`, `/api/` and `/api/x`, not `/apix`;
    /// `/static/` covers `/static/x` but not `/static`.
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str, ci: bool) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => {
                eq(path, p, ci)
                    || (path.len() == p.len() + 1
                        && path.ends_with('/')
                        && !p.ends_with('/')
                        && eq(&path[..p.len()], p, ci))
            }
            PathMatch::Prefix(p) => {
                path.len() >= p.len()
                    && eq(&path[..p.len()], p, ci)
                    && (path.len() == p.len()
                        || p.ends_with('/')
                        || path.as_bytes()[p.len()] == b'/')
            }
        }
    }

    /// True when some path matches both.
    pub fn overlaps(&self, other: &PathMatch) -> bool {
        self.covers(other, true) || other.covers(self, true)
    }

    fn covers(&self, other: &PathMatch, ci: bool) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (_, PathMatch::Any) => false,
            (a, PathMatch::Exact(p)) => a.matches(p, ci),
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => {
                PathMatch::Prefix(a.clone()).matches(b, ci)
            }
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        }
    }
}

fn eq(a: &str, b: &str, ci: bool) -> bool {
    if ci {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Everything a route matches on.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub hosts: Vec<HostPattern>,
    pub path: PathMatch,
    pub methods: Vec<Method>,
    case_insensitive: bool,
}

impl RouteMatcher {
    pub fn new(
        hosts: Vec<HostPattern>,
        path: PathMatch,
        methods: Vec<Method>,
        case_insensitive: bool,
    ) -> Self {
        RouteMatcher {
            hosts,
            path,
            methods,
            case_insensitive,
        }
    }

    /// `host` normalised by [`normalize_host`]; `path` is the match path of a normalised
    /// request target (path parameters removed).
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        (self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h))))
            && self.path.matches(path, self.case_insensitive)
            && (self.methods.is_empty()
                || self.methods.contains(method)
                // HEAD is GET without the body; every framework answers it with the GET
                // handler, so a rule about GET is a rule about HEAD.
                || (method == Method::HEAD && self.methods.contains(&Method::GET)))
    }

    /// True when every request `later` matches is already matched by `self`, so a route
    /// with `later` after one with `self` can never be reached.
    pub fn shadows(&self, later: &RouteMatcher) -> bool {
        let hosts = self.hosts.is_empty()
            || (!later.hosts.is_empty()
                && later
                    .hosts
                    .iter()
                    .all(|l| self.hosts.iter().any(|s| s.covers(l))));
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| self.methods.contains(m)));
        hosts && methods && self.path.covers(&later.path, self.case_insensitive)
    }

    /// One-line summary for `portcullis check`.
    pub fn describe(&self) -> String {
        let hosts = if self.hosts.is_empty() {
            "*".to_string()
        } else {
            self.hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let path = match &self.path {
            PathMatch::Any => "/**".to_string(),
            PathMatch::Exact(p) if p.ends_with('/') => p.clone(),
            PathMatch::Exact(p) => format!("{p}[/]"),
            PathMatch::Prefix(p) if p.ends_with('/') => format!("{p}**"),
            PathMatch::Prefix(p) => format!("{p}[/**]"),
        };
        let methods = if self.methods.is_empty() {
            "ANY".to_string()
        } else {
            self.methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("host={hosts} path={path} methods={methods}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: &[&str], path: PathMatch, methods: &[&str]) -> RouteMatcher {
        RouteMatcher::new(
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            path,
            methods
                .iter()
                .map(|x| Method::from_bytes(x.as_bytes()).unwrap())
                .collect(),
            false,
        )
    }

    #[test]
    fn host_normalisation_ignores_case_port_and_trailing_dot() {
        assert_eq!(
            normalize_host(b"Shop.Example.COM.:8443").unwrap(),
            "shop.example.com"
        );
        assert_eq!(normalize_host(b"[::1]:8080").unwrap(), "[::1]");
        assert!(normalize_host(b"evil.com/x").is_none());
        assert!(normalize_host(b"a:b:c").is_none());
        assert!(normalize_host(b"").is_none());
    }

    #[test]
    fn wildcard_hosts_match_subdomains_not_the_apex() {
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(HostPattern::parse("shop.example.com:443").is_err());
        assert!(HostPattern::parse("*.1.2.3.4").is_err());
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let api = PathMatch::Prefix("/api".into());
        assert!(api.matches("/api", false));
        assert!(api.matches("/api/", false));
        assert!(api.matches("/api/x", false));
        assert!(!api.matches("/apix", false));
        let st = PathMatch::Prefix("/static/".into());
        assert!(st.matches("/static/a.css", false));
        assert!(!st.matches("/static", false));
    }

    #[test]
    fn case_insensitive_paths_are_opt_in() {
        let admin = PathMatch::Prefix("/admin".into());
        assert!(!admin.matches("/ADMIN", false));
        assert!(admin.matches("/ADMIN/x", true));
    }

    #[test]
    fn matcher_requires_host_path_and_method() {
        let r = m(
            &["shop.example.com"],
            PathMatch::Prefix("/account".into()),
            &["GET"],
        );
        assert!(r.matches(Some("shop.example.com"), "/account/1", &Method::GET));
        assert!(!r.matches(Some("other.example.com"), "/account/1", &Method::GET));
        assert!(!r.matches(None, "/account/1", &Method::GET));
        assert!(!r.matches(Some("shop.example.com"), "/account/1", &Method::POST));
        assert!(r.matches(Some("shop.example.com"), "/account/1", &Method::HEAD));
    }

    #[test]
    fn exact_paths_cover_the_trailing_slash_form() {
        let admin = PathMatch::Exact("/admin".into());
        assert!(admin.matches("/admin", false));
        assert!(admin.matches("/admin/", false));
        assert!(!admin.matches("/admin/x", false));
        assert!(!admin.matches("/adminx", false));
        assert!(PathMatch::Exact("/ADMIN".into()).matches("/admin/", true));
    }

    #[test]
    fn shadowing_is_detected_only_when_total() {
        let all = m(&[], PathMatch::Any, &[]);
        let api = m(&[], PathMatch::Prefix("/api".into()), &[]);
        let api_get = m(&[], PathMatch::Prefix("/api/v1".into()), &["GET"]);
        let host_api = m(&["a.example.com"], PathMatch::Prefix("/api".into()), &[]);
        assert!(all.shadows(&api));
        assert!(api.shadows(&api_get));
        assert!(!api_get.shadows(&api));
        assert!(!host_api.shadows(&api));
        assert!(api.shadows(&host_api));
        let wild = m(&["*.example.com"], PathMatch::Any, &[]);
        assert!(wild.shadows(&host_api));
    }
}
