//! The gateway's cookies: the session cookie and the short-lived login-binding cookie.
//! Parsing and formatting go through the `cookie` crate. Attributes: `__Host-` prefix,
//! `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`, no `Domain` (over https); the dev mode
//! for plain-http loopback drops only the prefix and `Secure`.

use crate::config::SessionSpec;
use cookie::{Cookie, SameSite};
use http::HeaderMap;
use pingora::http::RequestHeader;

/// The value of the first cookie called `name` in the request's `Cookie` headers.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for c in Cookie::split_parse(s).flatten() {
            if c.name() == name {
                // Borrowed from `s`, which lives as long as the header map.
                return c.value_raw();
            }
        }
    }
    None
}

/// A `Set-Cookie` value for one of our cookies, living `max_age_s` seconds.
pub fn set(spec: &SessionSpec, name: &str, value: &str, max_age_s: u64) -> String {
    Cookie::build((name, value))
        .path("/")
        .secure(spec.secure_cookies)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(
            max_age_s.min(i64::MAX as u64) as i64,
        ))
        .build()
        .to_string()
}

/// A `Set-Cookie` value that deletes one of our cookies.
pub fn clear(spec: &SessionSpec, name: &str) -> String {
    set(spec, name, "", 0)
}

/// Removes our cookies from the request sent upstream: the session id is a credential
/// for the gateway only, and an app that logs or leaks its request headers must not leak
/// it. Other cookies pass unchanged.
pub fn strip_ours(up: &mut RequestHeader, names: [&str; 3]) {
    let mentions = up.headers.get_all(http::header::COOKIE).iter().any(|v| {
        let b = v.as_bytes();
        names
            .iter()
            .any(|n| b.windows(n.len()).any(|w| w == n.as_bytes()))
    });
    if !mentions {
        return;
    }
    let mut kept: Vec<String> = Vec::new();
    for h in up.headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for c in Cookie::split_parse(s).flatten() {
            if !names.contains(&c.name()) {
                kept.push(c.stripped().to_string());
            }
        }
    }
    up.remove_header(&http::header::COOKIE);
    if !kept.is_empty() {
        let _ = up.insert_header(http::header::COOKIE, kept.join("; "));
    }
}

/// Removes `Set-Cookie` headers for our cookies from an upstream's response: only the
/// gateway issues its session, so an app (by mistake or compromised) cannot plant or
/// clear one.
pub fn strip_upstream_set_cookie(resp: &mut pingora::http::ResponseHeader, names: [&str; 3]) {
    let ours = |v: &http::HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| Cookie::parse(s).ok())
            .is_some_and(|c| names.contains(&c.name()))
    };
    if !resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(ours)
    {
        return;
    }
    let kept: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    resp.remove_header(&http::header::SET_COOKIE);
    for v in kept {
        let _ = resp.append_header(http::header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SessionSpec, StoreSpec};
    use std::time::Duration;

    fn spec(secure: bool) -> SessionSpec {
        SessionSpec {
            store: StoreSpec::Memory,
            cookie_name: if secure {
                "__Host-portcullis"
            } else {
                "portcullis"
            }
            .into(),
            login_cookie_name: "x".into(),
            device_cookie_name: "d".into(),
            secure_cookies: secure,
            idle_timeout: Duration::from_secs(60),
            absolute_timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(60),
            encryption_keys: Vec::new(),
        }
    }

    #[test]
    fn https_cookies_are_host_prefixed_secure_httponly_lax() {
        let s = spec(true);
        let c = set(&s, &s.cookie_name, "abc", 600);
        for part in [
            "__Host-portcullis=abc",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Max-Age=600",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"));
        let dev = set(&spec(false), "portcullis", "abc", 600);
        assert!(
            !dev.contains("Secure") && dev.contains("HttpOnly") && dev.contains("SameSite=Lax")
        );
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; __Host-portcullis=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(find(&h, "__Host-portcullis"), Some("xyz"));
        assert_eq!(find(&h, "portcullis"), None);
    }

    #[test]
    fn upstreams_cannot_set_our_cookies() {
        let mut r = pingora::http::ResponseHeader::build(200, None).unwrap();
        r.append_header("set-cookie", "a=1; Path=/").unwrap();
        r.append_header("set-cookie", "sid=planted; Path=/")
            .unwrap();
        r.append_header("set-cookie", "b=2").unwrap();
        strip_upstream_set_cookie(&mut r, ["sid", "sid-login", "sid-device"]);
        let all: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(all, vec!["a=1; Path=/", "b=2"]);
    }

    #[test]
    fn our_cookies_never_reach_the_upstream() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header("cookie", "a=1; sid=secret; b=2").unwrap();
        r.append_header("cookie", "sid-login=x; sid-device=y")
            .unwrap();
        strip_ours(&mut r, ["sid", "sid-login", "sid-device"]);
        let all: Vec<_> = r.headers.get_all("cookie").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "a=1; b=2");
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header("cookie", "sid=secret").unwrap();
        strip_ours(&mut r, ["sid", "sid-login", "sid-device"]);
        assert!(r.headers.get("cookie").is_none());
    }
}
