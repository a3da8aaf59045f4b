//! Shutting down behind a load balancer: on `SIGTERM` with `shutdown.drain`, `/readyz`
//! answers 503 `draining` while requests are still served, then the gateway stops.

mod common;

use common::{eventually, public_catch_all, upstream_app, Echo, Gateway};
use std::time::Duration;

fn signal(gw: &Gateway, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

async fn ready_status(gw: &Gateway) -> Option<(u16, String)> {
    let r = common::try_send(
        gw.admin_port,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    Some((r.status, r.text()))
}

#[tokio::test]
async fn sigterm_drains_out_of_rotation_then_stops() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(
        &format!("{}shutdown: {{ drain: 3s }}\n", upstream_app(echo.addr)),
        &[("p.yaml", &public_catch_all(""))],
    )
    .await;
    assert_eq!(ready_status(&gw).await.unwrap().0, 200);
    signal(&gw, "-TERM");
    let draining = eventually(Duration::from_secs(5), || async {
        ready_status(&gw).await.filter(|(s, _)| *s == 503)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz never said draining:\n{}", gw.logs()));
    assert!(draining.1.contains("\"draining\""), "{}", draining.1);
    // Still serving while out of rotation.
    assert_eq!(gw.get("/", &[]).await.status, 200, "{}", gw.logs());
    assert!(gw.exited().is_none(), "still running during the drain");
    let status = eventually(Duration::from_secs(20), || {
        let s = gw.exited();
        async move { s }
    })
    .await
    .unwrap_or_else(|| panic!("did not stop after the drain:\n{}", gw.logs()));
    assert!(status.success(), "{status:?}");
    assert!(gw.logs().contains("draining for 3s"), "{}", gw.logs());
}

#[tokio::test]
async fn without_a_drain_sigterm_stops_without_answering_draining() {
    let echo = Echo::start().await;
    let mut gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("p.yaml", &public_catch_all(""))],
    )
    .await;
    signal(&gw, "-TERM");
    let status = eventually(Duration::from_secs(20), || {
        let s = gw.exited();
        async move { s }
    })
    .await
    .unwrap_or_else(|| panic!("did not stop:\n{}", gw.logs()));
    assert!(status.success(), "{status:?}");
    assert!(!gw.logs().contains("draining"), "{}", gw.logs());
}

#[test]
fn a_drain_longer_than_five_minutes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &common::gateway_yaml(
            18080,
            19090,
            "shutdown: { drain: 10m }\nupstreams:\n  app: { targets: [\"127.0.0.1:9\"] }\n",
        ),
        &[("p.yaml", &public_catch_all(""))],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shutdown.drain: at most 5m"), "{err}");
}
