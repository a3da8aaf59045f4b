//! The admin listener: health and readiness probes, Prometheus metrics, the admin token,
//! and the rule that a non-loopback admin listener needs one.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// A gateway whose admin listener requires `token` (read from a file given by absolute path).
async fn gateway_with_token(echo: &Echo, token_file: &Path) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\", token: {{ file: \"{}\" }} }}\n\
         threads: 1\n\
         policies: policies/\n\
         {}\n",
        token_file.display(),
        upstream_app(echo.addr)
    );
    Gateway::start_full(
        &yaml,
        port,
        admin_port,
        &[("a.yaml", &public_catch_all(""))],
    )
    .await
}

#[tokio::test]
async fn healthz_answers_200() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let r = gw.admin("GET", "/healthz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "ok");
}

#[tokio::test]
async fn readyz_reports_generation_and_upstream_health_as_json() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let r = gw.admin("GET", "/readyz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["config_generation"], 1, "{v}");
    assert_eq!(v["upstreams"]["app"]["targets"], 1, "{v}");
    assert_eq!(v["upstreams"]["app"]["healthy"], 1, "{v}");
}

#[tokio::test]
async fn readyz_shows_a_dead_upstream_as_unhealthy() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let extra = format!(
        "upstreams:\n  app:\n    targets: [\"{dead}\"]\n    connect_timeout: 1s\n    \
         health_check: {{ interval: 500ms, timeout: 200ms }}\n"
    );
    let gw = Gateway::start(&extra, &[("a.yaml", &public_catch_all(""))]).await;
    let healthy = eventually(Duration::from_secs(10), || async {
        let v = gw.admin("GET", "/readyz", &[]).await.json();
        (v["upstreams"]["app"]["healthy"] == 0).then_some(v)
    })
    .await;
    let v = healthy.expect("the dead target was never reported unhealthy");
    assert_eq!(v["upstreams"]["app"]["targets"], 1, "{v}");
}

#[tokio::test]
async fn metrics_count_one_proxied_request_exactly_once() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let requests = |text: &str| {
        series_value(
            text,
            "portcullis_requests_total",
            &[("route", "everything"), ("status_class", "2xx")],
        )
    };

    let before = gw.admin("GET", "/metrics", &[]).await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        before.headers
    );
    let before = requests(&before.text()).expect("requests series for the route");

    assert_eq!(gw.get("/hello", &[]).await.status, 200);

    // Metrics are recorded in the logging phase, just after the response is written.
    let after = eventually(Duration::from_secs(5), || async {
        let text = gw.admin("GET", "/metrics", &[]).await.text();
        requests(&text).filter(|v| *v != before).map(|v| (v, text))
    })
    .await;
    let (after, text) = after.expect("the request was never counted");
    assert_eq!(after, before + 1.0, "{text}");
    let count = series_value(
        &text,
        "portcullis_request_duration_seconds_count",
        &[("route", "everything")],
    )
    .expect("duration histogram for the route");
    assert!(count >= 1.0, "{text}");
    assert_eq!(
        metric_value(&text, r#"portcullis_config_reloads_total{result="error"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE portcullis_requests_total counter"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_admin_path_is_404() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let r = gw.admin("GET", "/nope", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(echo.count(), 0);
}

#[tokio::test]
async fn admin_token_guards_metrics_but_not_probes() {
    let echo = Echo::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let token = "s3cret-admin-token";
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let gw = gateway_with_token(&echo, &token_file).await;

    let r = gw.admin("GET", "/metrics", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        r.headers
    );
    assert!(!r.text().contains("portcullis_requests_total"));

    let r = gw
        .admin(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer wrong-token")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gw
        .admin("GET", "/metrics", &[("Authorization", token)])
        .await;
    assert_eq!(
        r.status, 401,
        "a token without the Bearer scheme was accepted"
    );

    let bearer = format!("Bearer {token}");
    let r = gw
        .admin("GET", "/metrics", &[("Authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("portcullis_requests_total"));

    assert_eq!(gw.admin("GET", "/healthz", &[]).await.status, 200);
    assert_eq!(gw.admin("GET", "/readyz", &[]).await.status, 200);
}

#[tokio::test]
async fn admin_token_guards_reload() {
    let echo = Echo::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "tok-123").unwrap();
    let gw = gateway_with_token(&echo, &token_file).await;

    let r = gw.admin("POST", "/reload", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gw
        .admin("POST", "/reload", &[("Authorization", "Bearer tok-123")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config_generation"], 2);
}

#[tokio::test]
async fn non_loopback_admin_without_token_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"0.0.0.0:{admin_port}\" }}\n\
         upstreams:\n  app:\n    targets: [\"127.0.0.1:{port}\"]\n"
    );
    write_config(dir.path(), &yaml, &[("a.yaml", &public_catch_all(""))]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("admin.token"), "stderr: {stderr}");

    // The same with a token is accepted.
    let token_file = dir.path().join("tok");
    std::fs::write(&token_file, "t").unwrap();
    let yaml = yaml.replace(
        &format!("\"0.0.0.0:{admin_port}\""),
        &format!(
            "\"0.0.0.0:{admin_port}\", token: {{ file: \"{}\" }}",
            token_file.display()
        ),
    );
    write_config(dir.path(), &yaml, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The admin listener keeps its start-up address until a restart, so a reload that drops
/// the token (even one that also moves the address to loopback) must be refused while
/// the running listener is on a non-loopback address.
#[tokio::test]
async fn a_reload_cannot_strip_the_token_off_a_network_facing_admin_listener() {
    let echo = Echo::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "tok-456").unwrap();
    let port = free_port();
    let admin_port = free_port();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"0.0.0.0:{admin_port}\", token: {{ file: \"{}\" }} }}\n\
         threads: 1\n{}",
        token_file.display(),
        upstream_app(echo.addr)
    );
    let gw = Gateway::start_full(
        &yaml,
        port,
        admin_port,
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let tokenless = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\" }}\n\
         threads: 1\n{}",
        upstream_app(echo.addr)
    );
    std::fs::write(gw.dir.path().join("gateway.yaml"), tokenless).unwrap();
    let r = gw
        .admin("POST", "/reload", &[("Authorization", "Bearer tok-456")])
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("admin.token"), "{}", r.text());
    assert_eq!(gw.admin("GET", "/metrics", &[]).await.status, 401);
}
