//! Idle and absolute session timeouts as the request path applies them, on an injected
//! clock: the runtime is built in process with a fake clock, a session is created in its
//! store, and the route decision is asked for as time moves on. No sleeping.

use http::HeaderMap;
use portcullis::auth::authorize;
use portcullis::clock::{Clock, FakeClock};
use portcullis::config;
use portcullis::metrics::Metrics;
use portcullis::policy::Decision;
use portcullis::runtime::Runtime;
use portcullis::session::Session;
use std::sync::Arc;
use std::time::Duration;

fn runtime(clock: &FakeClock) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\n\
         public_url: \"https://shop.example.com\"\n\
         session: { idle_timeout: 30m, absolute_timeout: 2h }\n\
         providers:\n  - { id: idp, issuer: \"https://id.example.com\", client_id: shop, client_secret: { file: secret } }\n\
         upstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        "routes:\n  - { name: account, match: { path_prefix: / }, upstream: app, auth: login }\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Runtime::build(cfg, None, &Arc::new(Metrics::new()), &clock, 1).unwrap()
}

fn alice() -> Session {
    Session {
        provider: "idp".into(),
        issuer: "https://id.example.com".into(),
        subject: "alice".into(),
        ..Session::default()
    }
}

async fn decide(rt: &Runtime, cookie: &str) -> Decision {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        format!("__Host-portcullis={cookie}").parse().unwrap(),
    );
    authorize(rt, &rt.routes[0], &h).await.0
}

#[tokio::test]
async fn an_idle_session_ends_and_an_active_one_lives_until_the_absolute_limit() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let idle = rt.sessions.create(alice()).await.unwrap().id;
    let busy = rt.sessions.create(alice()).await.unwrap().id;
    assert_eq!(decide(&rt, idle.as_cookie_value()).await, Decision::Allow);

    // The busy session is used every 10 minutes; the idle one is not.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10 * 60));
        assert_eq!(decide(&rt, busy.as_cookie_value()).await, Decision::Allow);
    }
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        decide(&rt, idle.as_cookie_value()).await,
        Decision::Login {
            reason: "expired-idle"
        }
    );
    // Ended means gone: the same id is now simply unknown.
    assert_eq!(
        decide(&rt, idle.as_cookie_value()).await,
        Decision::Login {
            reason: "session-unknown"
        }
    );
    // Busy or not, two hours after login it is over.
    for _ in 0..12 {
        clock.advance(Duration::from_secs(10 * 60));
        let d = decide(&rt, busy.as_cookie_value()).await;
        if d != Decision::Allow {
            assert_eq!(
                d,
                Decision::Login {
                    reason: "expired-absolute"
                }
            );
            return;
        }
    }
    panic!("the absolute timeout never applied");
}

#[tokio::test]
async fn unknown_or_malformed_ids_are_not_sessions() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let unknown = Decision::Login {
        reason: "session-unknown",
    };
    assert_eq!(
        decide(&rt, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
        unknown
    );
    assert_eq!(decide(&rt, "short").await, unknown);
    assert_eq!(decide(&rt, "../../etc/passwd").await, unknown);
    let none = authorize(&rt, &rt.routes[0], &HeaderMap::new()).await.0;
    assert_eq!(
        none,
        Decision::Login {
            reason: "user-unauthenticated"
        }
    );
}
