//! The gateway starts from YAML on free ports and proxies a public route end to end.

mod common;
use common::*;

#[tokio::test]
async fn public_route_reaches_the_upstream_with_forwarding_headers() {
    let echo = Echo::start().await;
    let gw = Gateway::start(
        &upstream_app(echo.addr),
        &[("a.yaml", &public_catch_all(""))],
    )
    .await;
    let r = gw.get("/hello?x=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = echo.last();
    assert_eq!(seen.target, "/hello?x=1");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let rid = r
        .header("x-request-id")
        .expect("request id on the response");
    assert_eq!(seen.header("x-request-id"), Some(rid));
}
