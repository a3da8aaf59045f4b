//! Header hygiene over real sockets: what a client sends in headers never lets it claim an
//! identity, a path or an address to the upstream; forwarding headers and the request id
//! are Portcullis's own.

mod common;
use common::*;

/// A public catch-all in front of a fresh `Echo`, with `extra` gateway settings.
async fn setup(extra: &str) -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &format!("{}{extra}", upstream_app(echo.addr)),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    (echo, gw)
}

/// `METHOD target HTTP/1.1` with `Host: 127.0.0.1:port` (unless a Host is given), the
/// header lines exactly as given (name spelling, order and duplicates kept), then
/// `Connection: close` unless a Connection header is given, and `body`.
fn request_bytes(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{}\r\n", gw.port));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// Lower case with `_` read as `-`: the name an upstream framework may fold a header into.
fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Asserts that none of `names` (in any spelling) is among the headers the upstream saw.
fn assert_none_seen(seen: &Seen, names: &[&str], context: &str) {
    let forbidden: Vec<String> = names.iter().map(|n| canonical(n)).collect();
    let leaked: Vec<&(String, String)> = seen
        .headers
        .iter()
        .filter(|(n, _)| forbidden.contains(&canonical(n)))
        .collect();
    assert!(
        leaked.is_empty(),
        "{context}: headers that must be stripped reached the upstream: {leaked:?}\nall headers seen: {:?}",
        seen.headers
    );
}

/// Every spoofed identity, path-override and client-address header, in several spellings,
/// one of them three times, plus a configured `strip_headers` name in two spellings.
const SPOOFED: &[(&str, &str)] = &[
    ("X-Forwarded-User", "spoof-admin"),
    ("x-forwarded-user", "spoof-admin"),
    ("X_FORWARDED_USER", "spoof-admin"),
    ("x_Forwarded-User", "spoof-admin"),
    ("X-FORWARDED-EMAIL", "spoof@example.com"),
    ("X-Forwarded-Groups", "spoof-admins"),
    ("Remote-User", "spoof-admin"),
    ("REMOTE_USER", "spoof-admin"),
    ("X-Remote-User", "spoof-admin"),
    ("X-Auth-Request-Email", "spoof@example.com"),
    ("X_Auth_User", "spoof-admin"),
    ("X-Portcullis-Assertion", "spoof.jwt.value"),
    ("x-portcullis-anything", "spoof"),
    ("X-Forwarded-User", "spoof-dup-1"),
    ("X-Forwarded-User", "spoof-dup-2"),
    ("X-Forwarded-User", "spoof-dup-3"),
    ("x_tenant_id", "spoof-tenant"),
    ("X-TENANT-ID", "spoof-tenant"),
    ("X-Original-URL", "/admin-spoof"),
    ("X-Rewrite-URL", "/admin-spoof"),
    ("X-Real-IP", "198.51.100.66"),
    ("True-Client-IP", "198.51.100.66"),
    ("X-Forwarded-Prefix", "/spoof-prefix"),
    ("X-Forwarded-Ssl", "spoof-on"),
    ("X-Forwarded-Scheme", "spoof-https"),
    ("X-Original-Host", "spoof.example"),
    ("X-Host", "spoof.example"),
    ("X-HTTP-Method-Override", "spoof-DELETE"),
];

/// What the upstream must not see of `SPOOFED`: no such name, and no spoofed value.
fn assert_no_spoof_reached(seen: &Seen, context: &str) {
    let names: Vec<&str> = SPOOFED.iter().map(|(n, _)| *n).collect();
    assert_none_seen(seen, &names, context);
    for (n, v) in &seen.headers {
        assert!(
            !v.contains("spoof") && !v.contains("198.51.100.66"),
            "{context}: a spoofed value reached the upstream as {n}: {v}"
        );
    }
    assert_eq!(
        seen.header("x-custom-thing"),
        Some("keep"),
        "{context}: an innocent header must still arrive; seen {:?}",
        seen.headers
    );
}

#[tokio::test]
async fn spoofed_identity_path_and_address_headers_never_reach_the_upstream() {
    let (echo, gw) = setup("strip_headers: [X-Tenant-Id]\n").await;
    let mut headers = SPOOFED.to_vec();
    headers.push(("X-Custom-Thing", "keep"));
    let r = gw
        .raw(&request_bytes(&gw, "GET", "/profile", &headers, ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echo.count(), 1);
    assert_no_spoof_reached(&echo.last(), "GET");
}

#[tokio::test]
async fn spoofed_headers_on_a_request_with_a_body_never_reach_the_upstream() {
    let (echo, gw) = setup("strip_headers: [X-Tenant-Id]\n").await;
    let body = "{\"order\":42}";
    let len = body.len().to_string();
    let mut headers = SPOOFED.to_vec();
    headers.push(("X-Custom-Thing", "keep"));
    headers.push(("Content-Type", "application/json"));
    headers.push(("Content-Length", &len));
    let r = gw
        .raw(&request_bytes(&gw, "POST", "/orders", &headers, body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echo.count(), 1);
    let seen = echo.last();
    assert_eq!(seen.method, "POST");
    assert_no_spoof_reached(&seen, "POST with body");
}

#[tokio::test]
async fn connection_nominated_headers_are_removed() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "GET",
            "/",
            &[
                ("Connection", "close, X-Foo"),
                ("X-Foo", "1"),
                ("X-Custom-Thing", "keep"),
            ],
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert_none_seen(&seen, &["x-foo", "connection"], "Connection: close, X-Foo");
    assert_eq!(seen.header("x-custom-thing"), Some("keep"));
}

#[tokio::test]
async fn nominating_forwarding_headers_in_connection_is_refused() {
    // Removing X-Forwarded-For/-Host because the client nominated them would let a client
    // erase what the gateway asserts; Pingora refuses such nominations with a 400.
    let (echo, gw) = setup("").await;
    for nomination in [
        "X-Forwarded-For",
        "x-forwarded-host",
        "close, X-Forwarded-For",
    ] {
        let r = gw
            .raw(&request_bytes(
                &gw,
                "GET",
                "/",
                &[("Connection", nomination)],
                "",
            ))
            .await;
        assert_eq!(
            r.status,
            400,
            "Connection: {nomination} must be refused: {}",
            r.text()
        );
    }
    assert_eq!(
        echo.count(),
        0,
        "refused requests reached the upstream: {:?}",
        echo.requests()
    );
}

#[tokio::test]
async fn nominating_x_request_id_never_removes_the_gateway_request_id() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "GET",
            "/",
            &[
                ("Connection", "close, X-Request-Id"),
                ("X-Request-Id", "abc-123"),
            ],
            "",
        ))
        .await;
    // Either outcome is acceptable: refused outright, or forwarded with the id intact.
    assert!(
        r.status == 400 || r.status == 200,
        "unexpected status {}: {}",
        r.status,
        r.text()
    );
    for seen in echo.requests() {
        assert!(
            seen.header("x-request-id").is_some(),
            "a request reached the upstream without x-request-id: {seen:?}"
        );
    }
    if r.status == 400 {
        assert_eq!(echo.count(), 0);
    } else {
        assert_eq!(echo.count(), 1);
        let rid = r
            .header("x-request-id")
            .expect("request id on the response");
        assert_eq!(echo.last().header("x-request-id"), Some(rid));
    }
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_upstream() {
    let (echo, gw) = setup("").await;
    let hop = [
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic c3Bvb2Y6c3Bvb2Y="),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
    ];
    let mut headers = hop.to_vec();
    headers.push(("X-Custom-Thing", "keep"));
    let r = gw.raw(&request_bytes(&gw, "GET", "/", &headers, "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    let names: Vec<&str> = hop.iter().map(|(n, _)| *n).collect();
    assert_none_seen(&seen, &names, "hop-by-hop");
    assert_eq!(seen.header("x-custom-thing"), Some("keep"));
}

#[tokio::test]
async fn upgrade_to_a_non_websocket_protocol_is_not_forwarded() {
    // A client asking to switch to some other protocol must not get an upgrade negotiated
    // with the upstream behind the gateway's back.
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "GET",
            "/",
            &[
                ("Connection", "Upgrade, close"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
            "",
        ))
        .await;
    // Pingora forwards it as a plain request with the upgrade negotiation removed.
    assert_eq!(r.status, 200, "a non-websocket upgrade: {}", r.text());
    assert_eq!(echo.count(), 1);
    assert_none_seen(
        &echo.last(),
        &["upgrade", "http2-settings", "connection"],
        "Upgrade: h2c with Connection: Upgrade",
    );
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "GET",
            "/",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("X_Forwarded_For", "203.0.113.10"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("Forwarded", "for=203.0.113.9;proto=https"),
            ],
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert_eq!(
        seen.headers_named("x-forwarded-for"),
        vec!["127.0.0.1"],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers_named("x-forwarded-proto"), vec!["http"]);
    let host = format!("127.0.0.1:{}", gw.port);
    assert_eq!(seen.headers_named("x-forwarded-host"), vec![host.as_str()]);
    assert!(
        seen.header("forwarded").is_none() && seen.header("x_forwarded_for").is_none(),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn forwarding_chain_from_a_trusted_proxy_is_extended() {
    // The chain a trusted proxy sent is kept and the gateway appends the TCP peer it saw
    // (the trusted proxy, here 127.0.0.1), not the client address it resolved from the chain.
    let (echo, gw) = setup("trusted_proxies: [127.0.0.1/32]\n").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "GET",
            "/",
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Forwarded-Proto", "https"),
            ],
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert_eq!(
        seen.headers_named("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"],
        "the hop appended to a trusted proxy's X-Forwarded-For must be the TCP peer \
         (127.0.0.1); all headers seen: {:?}",
        seen.headers
    );
    assert_eq!(seen.headers_named("x-forwarded-proto"), vec!["https"]);
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[tokio::test]
async fn request_id_is_generated_propagated_or_replaced_and_matches_upstream() {
    let (echo, gw) = setup("").await;
    let long = "a".repeat(200);
    // (incoming id, expected outcome: Some(id) to keep, None to replace with a fresh one)
    let cases: [(Option<&str>, Option<&str>); 4] = [
        (None, None),
        (Some("abc-123"), Some("abc-123")),
        (Some("<script>"), None),
        (Some(long.as_str()), None),
    ];
    for (i, (incoming, expected)) in cases.iter().enumerate() {
        let headers: Vec<(&str, &str)> = incoming.iter().map(|v| ("X-Request-Id", *v)).collect();
        let r = gw.raw(&request_bytes(&gw, "GET", "/", &headers, "")).await;
        assert_eq!(r.status, 200, "{incoming:?}: {}", r.text());
        assert_eq!(echo.count(), i + 1);
        let seen = echo.last();
        let on_response = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{incoming:?}: no x-request-id on the response"));
        let upstream = seen.headers_named("x-request-id");
        assert_eq!(
            upstream,
            vec![on_response],
            "{incoming:?}: response and upstream ids differ"
        );
        match expected {
            Some(id) => assert_eq!(on_response, *id, "{incoming:?} must be propagated"),
            None => {
                assert!(
                    is_generated_id(on_response),
                    "{incoming:?}: expected a fresh 32-hex id, got {on_response:?}"
                );
                assert_ne!(Some(on_response), *incoming);
            }
        }
    }
}

/// Underscore spellings of framing headers (`Content_Length`, `Transfer_Encoding`) are a
/// second, client-chosen value for upstreams that fold `_` into `-`: they never arrive.
#[tokio::test]
async fn underscore_spellings_of_framing_headers_never_reach_the_upstream() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(&request_bytes(
            &gw,
            "POST",
            "/",
            &[
                ("Content-Length", "5"),
                ("Content_Length", "999"),
                ("Transfer_Encoding", "chunked"),
                ("Host_", "x"),
            ],
            "hello",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.contains('_') || n == "host_"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.headers_named("content-length"), vec!["5"]);
}
