//! The gateway's own responses: 404 / 403 / 502 / 504 pages in HTML or JSON, always with
//! the request id and a reason code, never with internals; upstream errors passed through.

mod common;
use common::*;
use std::net::SocketAddr;

/// A policy whose only route is `/only` (public, to `app`).
fn only_route() -> String {
    "routes:\n  - name: only\n    match: { path_prefix: /only }\n    upstream: app\n    auth: public\n"
        .to_string()
}

/// A loopback address where nothing listens.
fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `upstreams:` with one upstream `app` at `addr` and the given read timeout.
fn upstream_with_read_timeout(addr: SocketAddr, read_timeout: &str) -> String {
    format!(
        "upstreams:\n  app:\n    targets: [\"{addr}\"]\n    read_timeout: {read_timeout}\n    connect_timeout: 1s\n"
    )
}

/// Our error pages must not show how the gateway is built or where the upstream is.
fn assert_no_internals(r: &Response, upstream: SocketAddr) {
    let body = r.text();
    let lower = body.to_ascii_lowercase();
    assert!(!body.contains("Peer:"), "page shows a peer: {body}");
    assert!(
        !body.contains(&upstream.to_string()),
        "page shows the upstream address {upstream}: {body}"
    );
    assert!(
        !body.contains(&format!(":{}", upstream.port())),
        "page shows the upstream port {}: {body}",
        upstream.port()
    );
    assert!(!lower.contains("pingora"), "page names pingora: {body}");
    for (name, value) in &r.headers {
        assert!(
            !value.contains(&upstream.to_string()),
            "header {name} shows the upstream address: {value}"
        );
    }
}

/// The security headers every page of our own carries.
fn assert_security_headers(r: &Response) {
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{:?}",
        r.headers
    );
}

fn json_accept() -> [(&'static str, &'static str); 1] {
    [("Accept", "application/json")]
}

#[tokio::test]
async fn unmatched_route_gets_404_html_page_with_request_id_and_reason() {
    let echo = Echo::start().await;
    let gw = Gateway::start(&upstream_app(echo.addr), &[("a.yaml", &only_route())]).await;

    let r = gw.get("/elsewhere", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/html"), "content-type {ctype:?}");
    let rid = r.header("x-request-id").expect("x-request-id on the 404");
    assert!(!rid.is_empty());
    let body = r.text();
    assert!(body.contains(rid), "request id {rid} not in page: {body}");
    assert!(body.contains("no-route"), "reason not in page: {body}");
    assert_eq!(echo.count(), 0, "an unrouted request reached the upstream");

    // The route itself still works.
    assert_eq!(gw.get("/only/x", &[]).await.status, 200);
}

#[tokio::test]
async fn unmatched_route_gets_404_json_when_client_accepts_json() {
    let echo = Echo::start().await;
    let gw = Gateway::start(&upstream_app(echo.addr), &[("a.yaml", &only_route())]).await;

    let r = gw.get("/elsewhere", &json_accept()).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype:?}"
    );
    let v = r.json();
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["error"], "no-route", "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {v}"
    );
    let rid = r.header("x-request-id").expect("x-request-id on the 404");
    assert_eq!(v["request_id"].as_str(), Some(rid), "{v}");
}

#[tokio::test]
async fn deny_route_gets_403_route_denied_without_reaching_upstream() {
    let echo = Echo::start().await;
    let policy = "  - name: secret\n    match: { path_prefix: /secret }\n    auth: deny\n";
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(policy))],
    )
    .await;

    let r = gw.get("/secret/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("route-denied"), "{}", r.text());
    assert_security_headers(&r);

    let r = gw.get("/secret", &json_accept()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "route-denied");
    assert_eq!(echo.count(), 0, "a denied request reached the upstream");
}

#[tokio::test]
async fn refused_upstream_gets_502_upstream_unreachable_and_is_counted() {
    let dead = dead_addr();
    let gw = Gateway::start(&upstream_app(dead), &[("a.yaml", &public_catch_all(""))]).await;

    let r = gw.get("/x", &json_accept()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "upstream-unreachable", "{v}");
    assert_eq!(
        v["request_id"].as_str(),
        r.header("x-request-id"),
        "request id in body and header differ"
    );
    assert_no_internals(&r, dead);

    let text = gw.admin("GET", "/metrics", &[]).await.text();
    let errors = series_value(
        &text,
        "portcullis_upstream_errors_total",
        &[("upstream", "app"), ("kind", "connect-refused")],
    )
    .unwrap_or(0.0);
    assert!(errors >= 1.0, "connect-refused errors counted: {errors}");
}

#[tokio::test]
async fn slow_upstream_gets_504_upstream_timeout() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_with_read_timeout(echo.addr, "1s"),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;

    let started = std::time::Instant::now();
    let r = gw.get("/slow/3000", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("upstream-timeout"), "{}", r.text());
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "the gateway waited for the slow upstream instead of timing out: {:?}",
        started.elapsed()
    );
    assert_security_headers(&r);
    assert_no_internals(&r, echo.addr);
}

#[tokio::test]
async fn upstream_500_is_passed_through_not_rewritten() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;

    let r = gw.get("/status/500", &[]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(
        v["target"], "/status/500",
        "not the upstream's own body: {v}"
    );
    assert!(
        !r.text().contains("internal-error"),
        "rewritten into our page: {}",
        r.text()
    );
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn error_pages_never_reveal_internals() {
    let dead = dead_addr();
    let gw = Gateway::start(&upstream_app(dead), &[("a.yaml", &public_catch_all(""))]).await;

    let html = gw.get("/x", &[]).await;
    assert_eq!(html.status, 502, "{}", html.text());
    assert!(html.text().contains("upstream-unreachable"));
    assert_no_internals(&html, dead);

    let json = gw.get("/x", &json_accept()).await;
    assert_eq!(json.status, 502, "{}", json.text());
    assert_no_internals(&json, dead);

    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_with_read_timeout(echo.addr, "1s"),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let timeout = gw.get("/slow/3000", &json_accept()).await;
    assert_eq!(timeout.status, 504, "{}", timeout.text());
    assert_no_internals(&timeout, echo.addr);
}

#[tokio::test]
async fn head_on_404_has_no_body() {
    let echo = Echo::start().await;
    let gw = Gateway::start(&upstream_app(echo.addr), &[("a.yaml", &only_route())]).await;

    let r = gw.request("HEAD", "/elsewhere", &[]).await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.is_empty(),
        "HEAD response has a body: {:?}",
        r.text()
    );
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn our_pages_carry_no_store_and_nosniff() {
    let dead = dead_addr();
    let policy = "routes:\n  - name: secret\n    match: { path_prefix: /secret }\n    auth: deny\n  - name: only\n    match: { path_prefix: /only }\n    upstream: app\n    auth: public\n";
    let gw = Gateway::start(&upstream_app(dead), &[("a.yaml", policy)]).await;

    for (path, status) in [("/nowhere", 404), ("/secret", 403), ("/only", 502)] {
        for accept in [None, Some("application/json")] {
            let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
            let r = gw.get(path, &headers).await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
            assert_security_headers(&r);
        }
    }
}
