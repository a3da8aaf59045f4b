//! Path safety over real sockets: no spelling of a denied path gets past a `deny` route to
//! the upstream, the upstream receives exactly the normalised target that was matched, and
//! hosts are matched after normalisation.

mod common;
use common::*;

/// A `deny` route on `/admin` first, then a public catch-all to `app`.
fn admin_denied_policy() -> String {
    public_catch_all("  - name: admin\n    match: { path_prefix: /admin }\n    auth: deny\n")
}

async fn setup(extra: &str) -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &format!("{}{extra}", upstream_app(echo.addr)),
        &[("a.yaml", &admin_denied_policy())],
    )
    .await;
    (echo, gw)
}

/// `GET target HTTP/1.1` with the gateway's Host, `Connection: close` and `extra` lines.
fn get_bytes(gw: &Gateway, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n{extra}\r\n",
        gw.port
    )
    .into_bytes()
}

/// Request targets that try to reach `/admin` past a prefix match. Each must be denied
/// (403, normalised into `/admin`) or refused (400, not safely normalisable).
const BYPASS_CORPUS: &[&str] = &[
    "/admin",
    "/admin/",
    "/admin/.",
    "//admin",
    "///admin/x",
    "/./admin",
    "/x/../admin",
    "/%2e%2e/admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2e/admin",
    "/public/..%2fadmin",
    "/public/..%2Fadmin",
    "/admin%00",
    "/admin/..;/",
    "/x/..;/admin",
    "/admin;jsessionid=1",
    "/;x/admin",
    "/adm%69n",
    "/%61dmin",
    "/admin%2fx",
    "/admin\\x",
    "/%5cadmin",
    "/public/%c0%ae%c0%ae/admin",
    "/admin#frag",
    "/admin%0a",
    "/admin?x=1",
    "/%252e%252e/admin",
    "/public/%252e%252e/admin",
];

#[tokio::test]
async fn no_spelling_of_a_denied_path_reaches_the_upstream() {
    let (echo, gw) = setup("").await;
    let mut targets: Vec<String> = BYPASS_CORPUS.iter().map(|t| t.to_string()).collect();
    // Absolute-form: the path in the target is what counts, not a Host header.
    targets.push(format!("http://127.0.0.1:{}/admin", gw.port));
    targets.push(format!("http://127.0.0.1:{}//admin/../admin/x", gw.port));
    let mut failures = Vec::new();
    for target in &targets {
        match try_send(gw.port, &get_bytes(&gw, target, "")).await {
            Ok(r) if r.status == 403 || r.status == 400 => {}
            Ok(r) => failures.push(format!("{target:?} -> {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("{target:?} -> no response: {e}")),
        }
    }
    // `/%2e%2e/admin` climbs above the root: refused, never clamped to `/admin`.
    let r = gw.raw(&get_bytes(&gw, "/%2e%2e/admin", "")).await;
    if r.status != 400 {
        failures.push(format!("\"/%2e%2e/admin\" -> {}, expected 400", r.status));
    }
    assert!(
        failures.is_empty(),
        "targets that were neither denied nor refused:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        echo.count(),
        0,
        "requests for the denied prefix reached the upstream: {:#?}",
        echo.requests()
    );
}

#[tokio::test]
async fn paths_are_case_sensitive_by_default() {
    // Documented: `/ADMIN` is a different path from `/admin` unless configured otherwise.
    let (echo, gw) = setup("").await;
    let r = gw.raw(&get_bytes(&gw, "/ADMIN", "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echo.last().target, "/ADMIN");
}

#[tokio::test]
async fn case_insensitive_paths_deny_upper_case_spellings() {
    let (echo, gw) = setup("case_insensitive_paths: true\n").await;
    for target in ["/ADMIN", "/Admin/x", "/%41DMIN", "//aDmIn;x=1"] {
        let r = gw.raw(&get_bytes(&gw, target, "")).await;
        assert_eq!(r.status, 403, "{target:?}: {}", r.text());
    }
    assert_eq!(echo.count(), 0, "{:#?}", echo.requests());
    // The catch-all still works.
    let r = gw.raw(&get_bytes(&gw, "/public", "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn the_upstream_receives_exactly_the_normalised_target() {
    let (echo, gw) = setup("").await;
    let cases = [
        ("/public/./a//b/../c?q=%2F", "/public/a/c?q=%2F"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/p;v=1/x", "/p;v=1/x"),
        ("/adm%69nistrators", "/administrators"),
        ("/a%3bb", "/a%3Bb"),
    ];
    for (sent, forwarded) in cases {
        let r = gw.raw(&get_bytes(&gw, sent, "")).await;
        assert_eq!(r.status, 200, "{sent:?}: {}", r.text());
        assert_eq!(echo.last().target, forwarded, "{sent:?}");
    }
}

#[tokio::test]
async fn refusals_carry_a_request_id_and_a_reason_code() {
    let (echo, gw) = setup("").await;
    let cases = [
        ("/public/..%2fadmin", "encoded-slash"),
        ("/%2e%2e/admin", "path-above-root"),
        ("/admin/..;/", "ambiguous-dot-segment"),
        ("/admin%00", "nul-byte"),
        ("/admin%0a", "encoded-control"),
        ("/%5cadmin", "encoded-backslash"),
        ("/public/%c0%ae%c0%ae/admin", "invalid-utf8"),
        ("/a%zz", "bad-percent-encoding"),
    ];
    for (target, reason) in cases {
        let r = gw
            .raw(&get_bytes(&gw, target, "Accept: application/json\r\n"))
            .await;
        assert_eq!(r.status, 400, "{target:?}: {}", r.text());
        let rid = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{target:?}: 400 without x-request-id"));
        let body = r.json();
        assert_eq!(body["error"], reason, "{target:?}: {body}");
        assert_eq!(body["status"], 400, "{target:?}: {body}");
        assert_eq!(body["request_id"], rid, "{target:?}: {body}");
    }
    assert_eq!(echo.count(), 0, "{:#?}", echo.requests());
}

#[tokio::test]
async fn a_fragment_is_dropped_and_never_forwarded() {
    // Pingora removes `#...` from the request target before Portcullis sees it (so
    // `fragment-in-target` is never answered over the wire); what matters is that the path
    // matched and the path forwarded are the same one, and nothing after `#` reaches the
    // upstream.
    let (echo, gw) = setup("").await;
    let r = gw.raw(&get_bytes(&gw, "/admin#frag", "")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(echo.count(), 0);
    for (sent, forwarded) in [
        ("/public#/../admin", "/public"),
        ("/public?q=1#x", "/public?q=1"),
    ] {
        let r = gw.raw(&get_bytes(&gw, sent, "")).await;
        assert_eq!(r.status, 200, "{sent:?}: {}", r.text());
        assert_eq!(echo.last().target, forwarded, "{sent:?}");
    }
}

/// Two upstreams: `shop` for `shop.example.com`, `wild` for `*.example.com`; no other route.
async fn host_setup() -> (Echo, Echo, Gateway) {
    let shop = Echo::start().await;
    let wild = Echo::start().await;
    let extra = format!(
        "upstreams:\n  shop:\n    targets: [\"{}\"]\n  wild:\n    targets: [\"{}\"]\n",
        shop.addr, wild.addr
    );
    let policy = "routes:\n\
                  \x20 - name: shop\n    match: { host: shop.example.com }\n    upstream: shop\n    auth: public\n\
                  \x20 - name: wild\n    match: { host: \"*.example.com\" }\n    upstream: wild\n    auth: public\n";
    let gw = Gateway::start(&extra, &[("a.yaml", policy)]).await;
    (shop, wild, gw)
}

fn with_host(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn host_is_matched_case_insensitively_without_port_or_trailing_dot() {
    let (shop, wild, gw) = host_setup().await;
    let r = gw.raw(&with_host("/x", "SHOP.Example.com.:8080")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shop.count(), 1);
    assert_eq!(wild.count(), 0);
}

#[tokio::test]
async fn absolute_form_authority_selects_the_host_route() {
    let (shop, wild, gw) = host_setup().await;
    // Pingora requires a Host header equal to the authority when both are present.
    let r = gw
        .raw(&with_host(
            "http://SHOP.example.com:8080/x?y=1",
            "SHOP.example.com:8080",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shop.count(), 1);
    assert_eq!(wild.count(), 0);
    let seen = shop.last();
    assert_eq!(seen.target, "/x?y=1", "forwarded in origin form");
    // Without a Host header the authority alone routes.
    let r = gw
        .raw(b"GET http://shop.example.com/z HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shop.count(), 2);
    assert_eq!(shop.last().target, "/z");
    assert_eq!(wild.count(), 0);
}

#[tokio::test]
async fn absolute_form_authority_disagreeing_with_host_is_refused() {
    // A target naming one host and a Host header naming another is a classic routing /
    // cache-poisoning confusion: refused (by Pingora) before any route is chosen.
    let (shop, wild, gw) = host_setup().await;
    let r = gw
        .raw(&with_host("http://shop.example.com/x", "a.b.example.com"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(shop.count() + wild.count(), 0);
}

#[tokio::test]
async fn wildcard_host_matches_subdomains_but_not_the_apex() {
    let (shop, wild, gw) = host_setup().await;
    let r = gw.raw(&with_host("/", "a.b.example.com")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wild.count(), 1);
    let r = gw.raw(&with_host("/", "example.com")).await;
    assert_eq!(r.status, 404, "the apex is not covered: {}", r.text());
    let r = gw.raw(&with_host("/", "notexample.com")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(wild.count(), 1);
    assert_eq!(shop.count(), 0);
}

#[tokio::test]
async fn duplicate_host_headers_are_refused() {
    // Pingora refuses these while parsing, before Portcullis runs: a bare 400 without body
    // or request id. Status and upstream silence are what matter.
    let (echo, gw) = setup("").await;
    let port = gw.port;
    for hosts in [
        format!("Host: 127.0.0.1:{port}\r\nHost: 127.0.0.1:{port}\r\n"),
        format!("Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n"),
        format!("Host: evil.example\r\nhost: 127.0.0.1:{port}\r\n"),
    ] {
        let r = gw
            .raw(format!("GET /public HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n").as_bytes())
            .await;
        assert_eq!(r.status, 400, "{hosts:?}: {}", r.text());
    }
    assert_eq!(echo.count(), 0, "{:#?}", echo.requests());
}

#[tokio::test]
async fn missing_host_on_http_1_1_is_refused() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(b"GET /public HTTP/1.1\r\nConnection: close\r\nAccept: application/json\r\n\r\n")
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(echo.count(), 0, "{:#?}", echo.requests());
    // Answered by Portcullis itself, so it carries the reason and the request id.
    assert_eq!(r.json()["error"], "missing-host", "{}", r.text());
    assert!(r.header("x-request-id").is_some());
}

/// Exact, method-limited deny rules: `/items` for DELETE and GET, then a public catch-all.
async fn method_setup() -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[(
            "a.yaml",
            &public_catch_all(
                "  - name: items\n    match: { path: /items, methods: [DELETE, GET] }\n    auth: deny\n",
            ),
        )],
    )
    .await;
    (echo, gw)
}

#[tokio::test]
async fn method_rules_cannot_be_dodged_by_case_head_or_override_headers() {
    let (echo, gw) = method_setup().await;
    // Frameworks upper-case methods before routing; the gateway refuses lower case.
    let r = gw.raw(b"get /items HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: application/json\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad-method");
    // HEAD is answered by GET handlers, so a GET rule covers it.
    assert_eq!(gw.request("HEAD", "/items", &[]).await.status, 403);
    // The trailing-slash form of an exact path is the same resource to most frameworks.
    assert_eq!(gw.get("/items/", &[]).await.status, 403);
    assert_eq!(
        echo.count(),
        0,
        "nothing may reach the upstream: {:?}",
        echo.requests()
    );
    // A POST passes (no rule for it), but a method override header never reaches the
    // app, so it cannot be turned into the DELETE the rule forbids.
    let r = gw
        .request(
            "POST",
            "/items",
            &[
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Method-Override", "DELETE"),
                ("X_HTTP_Method", "DELETE"),
                ("Content-Length", "0"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = echo.last();
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.replace('_', "-").contains("method")),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn http_1_0_without_host_is_refused() {
    let (echo, gw) = setup("").await;
    let r = gw
        .raw(b"GET /admin HTTP/1.0\r\nAccept: application/json\r\n\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing-host");
    let r = gw.raw(b"GET /public HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(echo.count(), 0);
}
