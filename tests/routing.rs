//! Route precedence: first match in file order (files in name order, routes as written),
//! on host, normalised path and method.

use http::Method;
use portcullis::config::{self, AuthMode};
use portcullis::metrics::Metrics;
use portcullis::runtime::Runtime;

fn runtime(policies: &[(&str, &str)]) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\n\
         public_url: \"https://shop.example.com\"\n\
         upstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    for (name, text) in policies {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let clock: std::sync::Arc<dyn portcullis::clock::Clock> =
        std::sync::Arc::new(portcullis::clock::SystemClock);
    Runtime::build(cfg, None, &std::sync::Arc::new(Metrics::new()), &clock, 1).unwrap()
}

fn route<'a>(rt: &'a Runtime, host: &str, path: &str, method: Method) -> Option<&'a str> {
    rt.route(Some(host), path, &method).map(|r| &*r.name)
}

#[test]
fn files_are_read_in_name_order_and_the_first_match_wins() {
    // Written out of order on purpose: 20-shop.yaml's catch-all must come after
    // 10-admin.yaml's deny rule.
    let rt = runtime(&[
        (
            "20-shop.yaml",
            "routes:\n  - name: shop\n    match: { path_prefix: / }\n    upstream: app\n    auth: public\n",
        ),
        (
            "10-admin.yaml",
            "routes:\n  - name: admin\n    match: { path_prefix: /admin }\n    auth: deny\n",
        ),
    ]);
    assert_eq!(
        route(&rt, "shop.example.com", "/admin/users", Method::GET),
        Some("admin")
    );
    assert_eq!(
        route(&rt, "shop.example.com", "/administrator", Method::GET),
        Some("shop")
    );
    assert_eq!(rt.routes[0].auth, AuthMode::Deny);
}

#[test]
fn within_a_file_routes_are_tried_as_written() {
    let rt = runtime(&[(
        "p.yaml",
        "routes:\n\
         \x20 - name: read-only\n    match: { path_prefix: /api, methods: [GET, HEAD] }\n    upstream: app\n    auth: public\n\
         \x20 - name: api-host\n    match: { host: \"*.example.com\", path_prefix: /api }\n    auth: deny\n\
         \x20 - name: rest\n    match: { path_prefix: / }\n    upstream: app\n    auth: public\n",
    )]);
    assert_eq!(
        route(&rt, "a.example.com", "/api/x", Method::GET),
        Some("read-only")
    );
    assert_eq!(
        route(&rt, "a.example.com", "/api/x", Method::POST),
        Some("api-host")
    );
    assert_eq!(
        route(&rt, "example.com", "/api/x", Method::POST),
        Some("rest")
    );
    assert_eq!(
        route(&rt, "A.Example.com", "/api/x", Method::POST),
        Some("rest"),
        "the router expects hosts already normalised by the proxy; upper case is not a match"
    );
}

#[test]
fn no_route_means_none() {
    let rt = runtime(&[(
        "p.yaml",
        "routes:\n  - name: only\n    match: { host: shop.example.com, path: /only }\n    upstream: app\n    auth: public\n",
    )]);
    assert_eq!(
        route(&rt, "shop.example.com", "/only", Method::GET),
        Some("only")
    );
    assert_eq!(
        route(&rt, "shop.example.com", "/only/", Method::GET),
        Some("only")
    );
    assert_eq!(route(&rt, "shop.example.com", "/only/x", Method::GET), None);
    assert_eq!(route(&rt, "other.example.com", "/only", Method::GET), None);
}

#[test]
fn an_unreachable_route_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\npublic_url: \"https://a.example\"\nupstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "routes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: app\n    auth: public\n  - name: admin\n    match: { path_prefix: /admin }\n    auth: deny\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap();
    assert_eq!(cfg.warnings.len(), 1);
    assert!(
        cfg.warnings[0].to_string().contains("can never match"),
        "{}",
        cfg.warnings[0]
    );
}
