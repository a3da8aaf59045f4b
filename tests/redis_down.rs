//! With the session store (a real `redis-server`) gone, protected routes fail closed with
//! 503, a callback creates no session, public routes keep working, and `/readyz` and the
//! metrics say so. When Redis returns, logins work again.

mod common;

use common::browser::Browser;
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::redis::RedisServer;
use std::time::Duration;

#[tokio::test]
async fn a_store_outage_fails_closed_and_recovers() {
    let redis = RedisServer::start().await;
    let redis_port = redis.port;
    let IdpGateway {
        idp: _idp,
        gw,
        echo,
    } = with_test_idp(&session_yaml(Some((&redis.url(), "down:"))), "", POLICY).await;

    // Signed in while Redis is up.
    let alice = Browser::new();
    let page = alice.follow(alice.get(&gw.url("/account")).await, 10).await;
    assert_eq!(page.status, 200, "{}", page.body);
    // Another login half done: the provider has answered, the callback is not yet in.
    let late = Browser::new();
    let to_login = late.get(&gw.url("/account")).await;
    let to_idp = late.get(&to_login.location().unwrap()).await;
    let callback = late
        .get(&to_idp.location().unwrap())
        .await
        .location()
        .unwrap();
    let upstream_before = echo.count();

    drop(redis);

    let r = alice
        .get_with(&gw.url("/account"), &[("Accept", "application/json")])
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "session-store-unavailable");
    assert!(r.header("x-request-id").is_some());
    let cb = late.get(&callback).await;
    assert_eq!(cb.status, 503, "{}", cb.body);
    assert!(cb.body.contains("session-store-unavailable"));
    assert!(
        !cb.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=")),
        "no session cookie without a stored session"
    );
    let fresh = Browser::new();
    let start = fresh.follow(fresh.get(&gw.url("/account")).await, 2).await;
    assert_eq!(
        start.status, 503,
        "a login cannot start without somewhere to keep its state"
    );
    assert_eq!(
        echo.count(),
        upstream_before,
        "nothing protected was passed through"
    );

    let public = alice.get(&gw.url("/about")).await;
    assert_eq!(public.status, 200, "public routes do not need the store");

    let ready = gw.admin("GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200);
    let v = ready.json();
    assert_eq!(v["session_store"], "down");
    assert_eq!(v["status"], "degraded");
    assert_eq!(gw.metric("portcullis_session_store_up").await, Some(0.0));
    let errors = gw
        .metric("portcullis_session_store_errors_total{operation=\"get\"}")
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0);
    let refused = gw
        .metric("portcullis_auth_refusals_total{reason=\"session-store-unavailable\",route=\"account\"}")
        .await;
    assert_eq!(refused, Some(1.0));

    // Redis is back (empty: this one keeps nothing on disk), and so are logins.
    let _redis = RedisServer::start_on(redis_port).await;
    let back = common::eventually(Duration::from_secs(10), || async {
        let b = Browser::new();
        let page = b.follow(b.get(&gw.url("/account")).await, 10).await;
        (page.status == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "{}", gw.logs());
    assert_eq!(gw.metric("portcullis_session_store_up").await, Some(1.0));
}
