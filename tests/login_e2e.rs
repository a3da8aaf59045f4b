//! End to end against a real, certified OpenID provider (`oidc-provider` from npm, run
//! by Node from `tests/oidc-provider`): a browser without a browser (cookie jar, follow
//! redirects, post the provider's login form) logs in through the gateway, and the
//! upstream receives the identity. Sessions in a real `redis-server`.

mod common;

use common::browser::{Browser, Page};
use common::identity::session_yaml;
use common::oidc_provider::OidcProvider;
use common::redis::RedisServer;
use common::{Echo, Gateway};

const SECRET: &str = "e2e-client-secret-0123456789abcdef";

const POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers:
      X-User: "{sub}"
      X-Email: "{email}"
      X-Email-Verified: "{email_verified}"
      X-Groups: "{groups}"
      X-Acr: "{acr}"
      X-Amr: "{amr}"
    assertion: true
  - name: staff
    match: { path_prefix: /staff }
    upstream: app
    auth: login
    require: { groups_any: [staff], email_verified: true }
    headers: { X-User: "{sub}" }
  - name: strong
    match: { path_prefix: /strong }
    upstream: app
    auth: login
    require: { acr: strong }
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

struct Setup {
    op: OidcProvider,
    gw: Gateway,
    echo: Echo,
    _redis: Option<RedisServer>,
}

async fn setup(redis: bool) -> Setup {
    let echo = Echo::start().await;
    let redis_server = if redis {
        Some(RedisServer::start().await)
    } else {
        None
    };
    let session = match &redis_server {
        Some(r) => session_yaml(Some((&r.url(), "e2e:"))),
        None => session_yaml(None),
    };
    let (op, gw) = common::oidc_provider::with_gateway(
        SECRET,
        &echo,
        &session,
        "    scopes: [openid, email, profile, groups]\n    userinfo: true\n    acr_levels: { basic: \"urn:portcullis:loa:1\", strong: \"urn:portcullis:loa:2\" }\n",
        POLICY,
    )
    .await;
    Setup {
        op,
        gw,
        echo,
        _redis: redis_server,
    }
}

/// Opens `path`, signs in at the provider, and follows the way back.
async fn sign_in(
    s: &Setup,
    b: &Browser,
    path: &str,
    user: &str,
    password: &str,
    otp: Option<&str>,
) -> Page {
    let start = b.get(&s.gw.url(path)).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let back = b
        .sign_in_at_provider(start, &s.op.issuer, user, password, otp)
        .await;
    let to = back.location().unwrap_or_else(|| {
        panic!(
            "the provider did not send us back: {} {}\n{}",
            back.status,
            back.body,
            s.op.logs()
        )
    });
    assert!(to.starts_with(&s.gw.url("/.portcullis/callback")), "{to}");
    b.follow(b.get(&to).await, 5).await
}

#[tokio::test]
async fn alice_logs_in_and_the_app_receives_her_identity() {
    let s = setup(true).await;
    let b = Browser::new();
    let page = sign_in(&s, &b, "/account/orders", "alice", "wonderland", None).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account/orders"));
    let seen = s.echo.last();
    assert_eq!(seen.target, "/account/orders");
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header("x-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-email-verified"), Some("true"));
    assert_eq!(seen.header("x-groups"), Some("staff,admins"));
    assert_eq!(seen.header("x-acr"), Some("urn:portcullis:loa:1"));
    assert_eq!(seen.header("x-amr"), Some("pwd"));
    assert!(seen.header("x-portcullis-assertion").is_some());
    // The session lives on: the next request needs no login.
    assert_eq!(b.get(&s.gw.url("/staff")).await.status, 200);
    assert_eq!(
        s.gw.metric("portcullis_login_completed_total{journey=\"login\",provider=\"op\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn bob_is_refused_where_the_route_requires_more() {
    let s = setup(false).await;
    let b = Browser::new();
    let page = sign_in(&s, &b, "/account", "bob", "builder", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(s.echo.last().header("x-groups"), Some("customers"));
    let staff = b
        .get_with(&s.gw.url("/staff"), &[("Accept", "application/json")])
        .await;
    assert_eq!(staff.status, 403);
    assert_eq!(staff.json()["error"], "group-missing");
}

#[tokio::test]
async fn a_route_needing_a_stronger_login_accepts_only_the_one_time_code_login() {
    let s = setup(false).await;
    let weak = Browser::new();
    let page = sign_in(&s, &weak, "/strong", "alice", "wonderland", None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("acr-insufficient"));
    let strong = Browser::new();
    let page = sign_in(
        &s,
        &strong,
        "/strong",
        "alice",
        "wonderland",
        Some("123456"),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(s.echo.last().header("x-acr"), Some("urn:portcullis:loa:2"));
}

#[tokio::test]
async fn a_wrong_password_never_reaches_the_gateway_callback() {
    let s = setup(false).await;
    let b = Browser::new();
    let start = b.get(&s.gw.url("/account")).await;
    let page = b
        .sign_in_at_provider(start, &s.op.issuer, "alice", "not-her-password", None)
        .await;
    assert_eq!(page.status, 200, "the provider shows its form again");
    assert_eq!(s.echo.count(), 0);
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 302);
}
