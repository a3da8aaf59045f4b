//! Reloading the configuration: by SIGHUP, by `POST /reload`, and by watching the files;
//! a bad file keeps the running configuration, and requests in flight finish on the
//! configuration they began with.

mod common;
use common::*;
use std::time::Duration;

const ROUTE_A: &str =
    "  - name: a\n    match: { path_prefix: /a }\n    upstream: app\n    auth: public\n";
const ROUTE_B_DENY: &str = "  - name: b\n    match: { path_prefix: /b }\n    auth: deny\n";

fn policy(routes: &[&str]) -> String {
    format!("routes:\n{}", routes.concat())
}

/// Replaces the one policy file of a gateway started with `("routes.yaml", ...)`.
fn rewrite_policy(gw: &Gateway, text: &str) {
    std::fs::write(gw.dir.path().join("policies").join("routes.yaml"), text).unwrap();
}

/// True while a process with this id exists.
fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "portcullis_config_reloads_total{{result=\"{result}\"}}"
    ))
    .await
    .unwrap_or_else(|| panic!("no reloads series for {result}"))
}

#[tokio::test]
async fn sighup_reloads_policies_and_the_process_keeps_running() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("routes.yaml", &policy(&[ROUTE_A]))],
    )
    .await;
    assert_eq!(gw.get("/a", &[]).await.status, 200);
    assert_eq!(gw.get("/b", &[]).await.status, 404);
    let successes_before = reloads(&gw, "success").await;

    rewrite_policy(&gw, &policy(&[ROUTE_A, ROUTE_B_DENY]));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let denied = eventually(Duration::from_secs(10), || async {
        let r = gw.get("/b", &[]).await;
        (r.status == 403).then_some(r)
    })
    .await;
    let r = denied.unwrap_or_else(|| panic!("/b never became 403 after SIGHUP:\n{}", gw.logs()));
    assert!(r.text().contains("route-denied"));

    let successes = reloads(&gw, "success").await;
    assert!(successes >= 1.0, "success reloads: {successes}");
    assert!(
        successes > successes_before,
        "success reloads did not move: {successes_before} -> {successes}"
    );
    assert_eq!(reloads(&gw, "error").await, 0.0);
    assert!(alive(gw.pid()), "the gateway died on SIGHUP");
    assert_eq!(gw.get("/a", &[]).await.status, 200);
    assert_eq!(gw.admin("GET", "/healthz", &[]).await.status, 200);
    let ready = gw.admin("GET", "/readyz", &[]).await.json();
    assert_eq!(ready["config_generation"], 2, "{ready}");
}

#[tokio::test]
async fn invalid_policy_is_refused_and_the_running_config_stays() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("routes.yaml", &policy(&[ROUTE_A]))],
    )
    .await;
    assert_eq!(gw.get("/a", &[]).await.status, 200);

    let bad = "routes:\n  - name: a\n    match: { path_prefix: /a }\n    upstream: app\n    auth: public\n    colour: red\n";
    rewrite_policy(&gw, bad);
    let r = gw.admin("POST", "/reload", &[]).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["result"], "error", "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list: {v}"))
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(!errors.is_empty(), "{v}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("routes.yaml") && e.contains("routes[0]") && e.contains("colour")),
        "no error names the file, the YAML path and the key: {errors:?}"
    );

    // Still the old configuration.
    assert_eq!(gw.get("/a", &[]).await.status, 200);
    assert_eq!(gw.get("/b", &[]).await.status, 404);
    let ready = gw.admin("GET", "/readyz", &[]).await.json();
    assert_eq!(ready["config_generation"], 1, "{ready}");
    assert_eq!(reloads(&gw, "error").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_the_config_it_began_with() {
    let echo = Echo::start().await;
    let open = "routes:\n  - name: slow\n    match: { path_prefix: /slow }\n    upstream: app\n    auth: public\n";
    let gw = Gateway::start(&upstream_app(echo.addr), &[("routes.yaml", open)]).await;

    let port = gw.port;
    let in_flight = tokio::spawn(async move {
        let req = format!(
            "GET /slow/1500 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        send(port, req.as_bytes()).await
    });
    // Once the upstream has it, the request has long taken its configuration snapshot.
    let arrived = eventually(Duration::from_secs(5), || async {
        (echo.count() >= 1).then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the slow request never reached the upstream"
    );

    let closed = "routes:\n  - name: slow\n    match: { path_prefix: /slow }\n    auth: deny\n";
    rewrite_policy(&gw, closed);
    let r = gw.admin("POST", "/reload", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config_generation"], 2);

    let r = gw.get("/slow/1500", &[]).await;
    assert_eq!(r.status, 403, "a new request is not on the new config");
    assert!(!in_flight.is_finished(), "the slow request ended too early");

    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request was cut off: {}",
        r.text()
    );
    assert_eq!(r.json()["target"], "/slow/1500");
    assert_eq!(echo.count(), 1, "the denied request reached the upstream");
}

#[tokio::test]
async fn watched_policy_file_change_goes_live_without_a_signal() {
    let echo = Echo::start().await;
    let extra = format!("{}watch_config: true\n", upstream_app(echo.addr));
    let gw = Gateway::start(&extra, &[("routes.yaml", &policy(&[ROUTE_A]))]).await;
    assert_eq!(gw.get("/b", &[]).await.status, 404);

    // Changed right after the gateway is ready, as a deploy script would: a change at any
    // moment after the files were loaded must be picked up.
    rewrite_policy(&gw, &policy(&[ROUTE_A, ROUTE_B_DENY]));
    let live = eventually(Duration::from_secs(10), || async {
        (gw.get("/b", &[]).await.status == 403).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "the changed policy file was not picked up within 10 s:\n{}",
        gw.logs()
    );
    assert_eq!(gw.get("/a", &[]).await.status, 200);
}

#[tokio::test]
async fn watched_new_policy_file_goes_live_without_a_signal() {
    let echo = Echo::start().await;
    let extra = format!("{}watch_config: true\n", upstream_app(echo.addr));
    let gw = Gateway::start(&extra, &[("routes.yaml", &policy(&[ROUTE_A]))]).await;
    assert_eq!(gw.get("/b", &[]).await.status, 404);

    std::fs::write(
        gw.dir.path().join("policies").join("00-b.yaml"),
        policy(&[ROUTE_B_DENY]),
    )
    .unwrap();
    let live = eventually(Duration::from_secs(10), || async {
        (gw.get("/b", &[]).await.status == 403).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "the new policy file was not picked up within 10 s:\n{}",
        gw.logs()
    );
    assert_eq!(gw.get("/a", &[]).await.status, 200);
}
