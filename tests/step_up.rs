//! Step-up authentication: a route's `step_up` sends a signed-in browser back to its
//! session's provider for a higher `acr` (and a fresh enough authentication); the answer
//! must be the same user at an accepted level and fresh, then the session takes the
//! higher level under a new id until the elevation lapses. APIs and bearer tokens get a
//! 401 with an RFC 9470 challenge instead.
//!
//! The flows go through the real binary with the in-process test IdP (whose answers the
//! tests set), the lapse of an elevation and `max_age` are driven in process on a fake
//! clock, and one test runs the whole thing against the real `oidc-provider`, whose
//! login form gives the higher level only with the one-time code.

mod common;

use common::browser::{Browser, Page};
use common::identity::{session_yaml, with_test_idp, IdpGateway};
use common::oidc_provider::OidcProvider;
use common::test_idp::TokenHeader;
use common::{series_value, Echo, Gateway};
use portcullis::auth::authorize;
use portcullis::clock::{Clock, FakeClock};
use portcullis::config;
use portcullis::metrics::Metrics;
use portcullis::policy::Decision;
use portcullis::runtime::Runtime;
use portcullis::session::{Elevation, Session, SessionId};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const PW: &str = "urn:pw";
const MFA: &str = "urn:mfa";
const AUD: &str = "https://api.shop.example";
const METRIC: &str = "portcullis_step_ups_total";

/// The test IdP's provider entry: two levels.
const PROVIDER: &str = "    acr_levels: { password: \"urn:pw\", mfa: \"urn:mfa\" }\n";

/// `/secure` steps up to mfa within 10 minutes; `/either` too, for sessions or bearer
/// tokens; `/quick` steps up to mfa for a second, whenever the login was; `/account`
/// needs only a login.
const POLICY: &str = r#"routes:
  - name: secure
    match: { path_prefix: /secure }
    upstream: app
    auth: login
    step_up: { acr: mfa, max_age: 10m }
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: either
    match: { path_prefix: /either }
    upstream: app
    auth: login_or_bearer
    bearer: { issuers: [idp], audience: "https://api.shop.example" }
    step_up: { acr: mfa, max_age: 10m }
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: quick
    match: { path_prefix: /quick }
    upstream: app
    auth: login
    step_up: { acr: mfa, elevation: 1s }
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gateway at the test IdP with the audit log in `audit.log`, and `extra` top-level
/// settings (login regulation).
async fn setup_with(extra: &str) -> IdpGateway {
    let session = format!(
        "{}audit: {{ file: audit.log }}\n{extra}",
        session_yaml(None)
    );
    with_test_idp(&session, PROVIDER, POLICY).await
}

async fn setup() -> IdpGateway {
    setup_with("").await
}

/// A browser signed in at the password level (through `/account`).
async fn signed_in(s: &IdpGateway) -> Browser {
    s.idp.set_claim("acr", json!(PW));
    let b = Browser::new();
    let page = b.follow(b.get(&s.gw.url("/account")).await, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account"));
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));
    b
}

/// The browser's session cookie value.
fn session_cookie(b: &Browser, gw: &Gateway) -> String {
    b.cookie_header(&gw.url("/"))
        .unwrap_or_default()
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis="))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no session cookie"))
        .to_string()
}

/// `portcullis_step_ups_total{route, outcome, reason}`, 0 while never incremented.
async fn step_ups(gw: &Gateway, route: &str, outcome: &str, reason: &str) -> f64 {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    series_value(
        &text,
        METRIC,
        &[("route", route), ("outcome", outcome), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    series_value(&text, name, labels).unwrap_or(0.0)
}

/// Every series of the step-up metric, as printed.
async fn step_up_series(gw: &Gateway) -> Vec<String> {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{METRIC}{{")))
        .map(str::to_string)
        .collect()
}

/// The audit log's `step-up` events, once there are `n` of them.
async fn step_up_events(gw: &Gateway, n: usize) -> Vec<Value> {
    let path = gw.dir.path().join("audit.log");
    let read = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "step-up")
            .collect::<Vec<_>>()
    };
    let got = common::eventually(Duration::from_secs(5), || async {
        let events = read();
        (events.len() >= n).then_some(events)
    })
    .await;
    got.unwrap_or_else(|| panic!("expected {n} step-up audit events, have {:?}", read()))
}

/// The query parameters of `url`.
fn params(url: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Requests `path` as a navigation; it must be a step-up challenge: a 302 to our login
/// endpoint with `rd` and `step_up`. Returns the challenge.
async fn challenged(s: &IdpGateway, b: &Browser, path: &str, route: &str) -> Page {
    let before = s.echo.count();
    let page = b.get(&s.gw.url(path)).await;
    assert_eq!(page.status, 302, "{}\n{}", page.body, s.gw.logs());
    let to = page.location().unwrap();
    assert!(
        to.starts_with(&s.gw.url("/.portcullis/login?")),
        "not a step-up redirect: {to}"
    );
    let p = params(&to);
    assert_eq!(param(&p, "rd"), Some(path), "{to}");
    assert_eq!(param(&p, "step_up"), Some(route), "{to}");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(s.echo.count(), before, "nothing reached the upstream");
    page
}

/// From a step-up challenge: our login endpoint, then the IdP (whose answer the test
/// has set), then the callback's answer, not followed. Returns (the authorization
/// request's URL, the callback's answer).
async fn step_up_at_idp(s: &IdpGateway, b: &Browser, challenge: &Page) -> (String, Page) {
    let started = b.get(&challenge.location().unwrap()).await;
    assert_eq!(started.status, 302, "{}", started.body);
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(s.idp.issuer()), "{authorize}");
    let answered = b.get(&authorize).await;
    assert_eq!(answered.status, 302, "{}", answered.body);
    let callback = answered.location().unwrap();
    assert!(
        callback.starts_with(&s.gw.url("/.portcullis/callback")),
        "{callback}"
    );
    (authorize, b.get(&callback).await)
}

#[tokio::test]
async fn a_step_up_to_mfa_elevates_the_session_under_a_new_id() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let old = session_cookie(&b, &s.gw);
    // The base login asked for no particular level or freshness.
    let base = s
        .idp
        .requests()
        .into_iter()
        .find(|r| r.path == "/authorize")
        .expect("the base login's authorization request");
    assert_eq!(base.param("acr_values"), None);
    assert_eq!(base.param("max_age"), None);
    s.idp.reset_requests();

    let challenge = challenged(&s, &b, "/secure/transfer?amount=5", "secure").await;
    assert_eq!(
        step_ups(&s.gw, "secure", "challenged", "step-up-required").await,
        1.0
    );
    // The provider is asked for the route's level, within max_age, and answers it.
    s.idp.set_claim("acr", json!(MFA));
    s.idp.set_claim("amr", json!(["pwd", "otp"]));
    let (authorize, back) = step_up_at_idp(&s, &b, &challenge).await;
    let p = params(&authorize);
    assert_eq!(param(&p, "acr_values"), Some(MFA), "{authorize}");
    assert_eq!(param(&p, "max_age"), Some("600"), "{authorize}");
    assert_eq!(
        param(&p, "prompt"),
        None,
        "prompt_login is off: {authorize}"
    );
    let seen = s
        .idp
        .requests()
        .into_iter()
        .find(|r| r.path == "/authorize")
        .expect("the step-up reached the IdP");
    assert_eq!(seen.param("acr_values"), Some(MFA));
    assert_eq!(seen.param("max_age"), Some("600"));

    // Back where the user was going, with a new session id.
    assert_eq!(back.status, 302, "{}\n{}", back.body, s.gw.logs());
    assert_eq!(
        back.location().as_deref(),
        Some(s.gw.url("/secure/transfer?amount=5").as_str())
    );
    assert!(
        back.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=") && !c.starts_with("portcullis=;")),
        "{:?}",
        back.set_cookies()
    );
    let new = session_cookie(&b, &s.gw);
    assert_ne!(new, old, "a privilege change rotates the session id");
    let page = b.get(&back.location().unwrap()).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    let seen = s.echo.last();
    assert_eq!(seen.target, "/secure/transfer?amount=5");
    assert_eq!(seen.header("x-acr"), Some(MFA));
    assert_eq!(seen.header("x-user"), Some("user-123"));

    // The old id is gone: it is asked to log in (not to step up) everywhere.
    for path in ["/account", "/secure"] {
        let r =
            s.gw.get(path, &[("Cookie", &format!("portcullis={old}"))])
                .await;
        assert_eq!(r.status, 302, "old id on {path}: {}", r.text());
        let to = r.header("location").unwrap_or_default();
        assert!(to.contains("/.portcullis/login?"), "{to}");
        assert!(!to.contains("step_up="), "{to}");
    }
    // The new id works on every route, at the new level, without another challenge.
    let page = b.get(&s.gw.url("/account/profile")).await;
    assert_eq!(page.status, 200);
    assert_eq!(s.echo.last().header("x-acr"), Some(MFA));
    assert_eq!(b.get(&s.gw.url("/secure")).await.status, 200);
    let info = b.get(&s.gw.url("/.portcullis/userinfo")).await.json();
    assert_eq!(info["acr"], MFA);
    assert_eq!(info["amr"], json!(["pwd", "otp"]));

    assert_eq!(
        step_ups(&s.gw, "secure", "challenged", "step-up-required").await,
        1.0,
        "challenged once"
    );
    assert_eq!(step_ups(&s.gw, "secure", "completed", "ok").await, 1.0);
    assert!(
        !step_up_series(&s.gw)
            .await
            .iter()
            .any(|l| l.contains("outcome=\"failed\"")),
        "{:?}",
        step_up_series(&s.gw).await
    );
    // No new session: the same one, elevated.
    assert_eq!(
        metric(
            &s.gw,
            "portcullis_sessions_created_total",
            &[("population", "none")]
        )
        .await,
        1.0
    );
    let events = step_up_events(&s.gw, 1).await;
    assert_eq!(events[0]["outcome"], "completed");
    assert_eq!(events[0]["route"], "secure");
    assert_eq!(events[0]["acr"], MFA);
    let user = events[0]["user"].as_str().unwrap_or_default();
    assert!(!user.is_empty() && !user.contains("user-123"), "{user}");
}

#[tokio::test]
async fn a_step_up_answered_at_the_lower_level_is_refused_and_the_session_kept() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let old = session_cookie(&b, &s.gw);
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    // The IdP answers, but only at the password level.
    let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
    assert_eq!(back.status, 403, "{}", back.body);
    assert!(
        back.body.contains("step-up-acr-insufficient"),
        "{}",
        back.body
    );
    assert!(back.header("location").is_none());
    assert_eq!(session_cookie(&b, &s.gw), old, "the session id is kept");

    // The session is still the one it was, at its base level.
    let page = b.get(&s.gw.url("/account")).await;
    assert_eq!(page.status, 200);
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));
    let info = b.get(&s.gw.url("/.portcullis/userinfo")).await.json();
    assert_eq!(info["acr"], PW);
    challenged(&s, &b, "/secure", "secure").await;

    assert_eq!(
        step_ups(&s.gw, "secure", "failed", "step-up-acr-insufficient").await,
        1.0
    );
    assert_eq!(step_ups(&s.gw, "secure", "completed", "ok").await, 0.0);
    assert_eq!(
        step_ups(&s.gw, "secure", "challenged", "step-up-required").await,
        2.0
    );
    assert_eq!(
        metric(
            &s.gw,
            "portcullis_login_failures_total",
            &[
                ("journey", "step-up"),
                ("provider", "idp"),
                ("reason", "step-up-acr-insufficient")
            ]
        )
        .await,
        1.0
    );
    let events = step_up_events(&s.gw, 1).await;
    assert_eq!(events[0]["outcome"], "failed");
    assert_eq!(events[0]["reason"], "step-up-acr-insufficient");
    assert_eq!(events[0]["route"], "secure");
}

#[tokio::test]
async fn a_step_up_with_an_old_authentication_is_refused() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let old = session_cookie(&b, &s.gw);
    // The right level, but the provider reused an authentication of an hour ago.
    s.idp.set_claim("acr", json!(MFA));
    s.idp.set_claim("auth_time", json!(now_s() - 3600));
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
    assert_eq!(back.status, 403, "{}", back.body);
    assert!(
        back.body.contains("step-up-authentication-too-old"),
        "{}",
        back.body
    );
    assert_eq!(session_cookie(&b, &s.gw), old);
    // Without any auth_time, freshness is not shown either.
    s.idp.set_claim("auth_time", Value::Null);
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
    assert_eq!(back.status, 403, "{}", back.body);
    assert!(
        back.body.contains("step-up-authentication-too-old"),
        "{}",
        back.body
    );
    assert_eq!(
        step_ups(&s.gw, "secure", "failed", "step-up-authentication-too-old").await,
        2.0
    );
    // Still at the base level.
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));

    // A fresh one passes.
    s.idp.set_claim("auth_time", json!(now_s() - 5));
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert_eq!(b.follow(back, 3).await.status, 200);
    assert_eq!(s.echo.last().header("x-acr"), Some(MFA));
}

#[tokio::test]
async fn the_answer_must_be_about_the_same_user_and_the_same_session() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let old = session_cookie(&b, &s.gw);
    s.idp.set_claim("acr", json!(MFA));

    // Someone else signs in at the provider for this session's step-up.
    s.idp.set_claim("sub", json!("mallory"));
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
    assert_eq!(back.status, 403, "{}", back.body);
    assert!(back.body.contains("step-up-user-mismatch"), "{}", back.body);
    assert_eq!(session_cookie(&b, &s.gw), old);
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    assert_eq!(s.echo.last().header("x-user"), Some("user-123"));
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));
    s.idp.set_claim("sub", json!("user-123"));

    // The step-up starts for one session; the callback comes with another session
    // (another browser's, say) and this login's binding cookie.
    let other_browser = signed_in(&s).await;
    let other = session_cookie(&other_browser, &s.gw);
    s.idp.set_claim("acr", json!(MFA));
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let started = b.get(&challenge.location().unwrap()).await;
    let answered = b.get(&started.location().unwrap()).await;
    let callback = answered.location().unwrap();
    let binding = b
        .cookie_header(&s.gw.url("/"))
        .unwrap_or_default()
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis-login=").map(str::to_string))
        .expect("a login binding cookie");
    let path = callback.strip_prefix(&s.gw.url("")).unwrap();
    let r =
        s.gw.get(
            path,
            &[(
                "Cookie",
                &format!("portcullis={other}; portcullis-login={binding}"),
            )],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("step-up-session-changed"), "{}", r.text());
    assert!(r.header("location").is_none());
    // Neither session was elevated.
    for browser in [&b, &other_browser] {
        let info = browser.get(&s.gw.url("/.portcullis/userinfo")).await.json();
        assert_eq!(info["acr"], PW);
    }
    assert_eq!(session_cookie(&b, &s.gw), old);

    for reason in ["step-up-user-mismatch", "step-up-session-changed"] {
        assert_eq!(
            step_ups(&s.gw, "secure", "failed", reason).await,
            1.0,
            "{reason}"
        );
    }
    assert_eq!(step_ups(&s.gw, "secure", "completed", "ok").await, 0.0);
}

#[tokio::test]
async fn failed_step_ups_count_against_the_account_and_hold_its_next_step_up() {
    // Two failures ban an account (no back-off before); addresses are far from theirs.
    let s = setup_with(
        "login:\n  regulation:\n    window: 1h\n    max_failures: 2\n    \
         max_failures_per_ip: 100\n    backoff_after: 2\n    backoff: 1s\n    ban: 1h\n",
    )
    .await;
    let b = signed_in(&s).await;
    for _ in 0..2 {
        let challenge = challenged(&s, &b, "/secure", "secure").await;
        let (_, back) = step_up_at_idp(&s, &b, &challenge).await;
        assert_eq!(back.status, 403, "{}", back.body);
        assert!(back.body.contains("step-up-acr-insufficient"));
    }
    let regulated = |action: &'static str, kind: &'static str| {
        let gw = &s.gw;
        async move {
            metric(
                gw,
                "portcullis_login_regulation_total",
                &[("action", action), ("kind", kind)],
            )
            .await
        }
    };
    assert_eq!(regulated("ban-started", "account").await, 1.0);
    assert_eq!(regulated("ban-started", "ip").await, 0.0);
    // The next step-up of that user is held at its start; the session itself lives on.
    let challenge = challenged(&s, &b, "/secure", "secure").await;
    let held = b.get(&challenge.location().unwrap()).await;
    assert_eq!(held.status, 429, "{}\n{}", held.body, s.gw.logs());
    assert!(held.body.contains("login-regulated"), "{}", held.body);
    assert!(held.header("retry-after").is_some());
    assert_eq!(regulated("ban", "account").await, 1.0);
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
}

#[tokio::test]
async fn apis_and_bearer_tokens_get_a_challenge_instead_of_a_redirect() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let before = s.echo.count();
    let realm = format!("realm=\"http://127.0.0.1:{}\"", s.gw.port);

    // A script on the session.
    for headers in [
        vec![("Accept", "application/json")],
        vec![("X-Requested-With", "XMLHttpRequest")],
        vec![("Sec-Fetch-Mode", "cors")],
    ] {
        let r = b.get_with(&s.gw.url("/secure/data"), &headers).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert!(r.header("location").is_none());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Portcullis "), "{challenge}");
        assert!(challenge.contains(&realm), "{challenge}");
        assert!(
            challenge.contains("error=\"insufficient_user_authentication\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("error_description=\"step-up-required\""),
            "{challenge}"
        );
        assert!(challenge.contains("acr_values=\"urn:mfa\""), "{challenge}");
        assert!(challenge.ends_with("max_age=600"), "{challenge}");
    }
    let r = b
        .get_with(&s.gw.url("/secure/data"), &[("Accept", "application/json")])
        .await;
    assert_eq!(r.json()["error"], "step-up-required");
    assert_eq!(s.echo.count(), before, "nothing reached the upstream");
    assert_eq!(
        step_ups(&s.gw, "secure", "challenged", "step-up-required").await,
        4.0
    );

    // Bearer tokens: the Bearer scheme; a token at the level and fresh passes.
    let token = |claims: Value| {
        let mut c = json!({
            "iss": s.idp.issuer(),
            "sub": "svc-1",
            "aud": AUD,
            "iat": now_s(),
            "exp": now_s() + 300,
        });
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        s.idp.mint(c, TokenHeader::rs256().typ("at+jwt"))
    };
    let call = |t: String| {
        let gw = &s.gw;
        async move {
            gw.get(
                "/either/orders",
                &[
                    ("Authorization", &format!("Bearer {t}")),
                    ("Accept", "application/json"),
                ],
            )
            .await
        }
    };
    let r = call(token(json!({ "acr": PW, "auth_time": now_s() }))).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(&realm), "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(challenge.contains("acr_values=\"urn:mfa\""), "{challenge}");
    assert!(challenge.contains("max_age=600"), "{challenge}");
    assert_eq!(r.json()["error"], "step-up-required");
    // At the level but authenticated too long ago (or not saying when).
    for t in [
        token(json!({ "acr": MFA, "auth_time": now_s() - 3600 })),
        token(json!({ "acr": MFA })),
    ] {
        let r = call(t).await;
        assert_eq!(r.status, 401, "{}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.contains("error_description=\"authentication-too-old\""),
            "{challenge}"
        );
        assert_eq!(r.json()["error"], "authentication-too-old");
    }
    assert_eq!(s.echo.count(), before, "nothing reached the upstream");
    assert_eq!(
        step_ups(&s.gw, "either", "challenged", "step-up-required").await,
        1.0
    );
    assert_eq!(
        step_ups(&s.gw, "either", "challenged", "authentication-too-old").await,
        2.0
    );
    let r = call(token(json!({ "acr": MFA, "auth_time": now_s() - 60 }))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.echo.last().header("x-user"), Some("svc-1"));
    assert_eq!(s.echo.last().header("x-acr"), Some(MFA));

    // The same route navigated to on the session still steps up in the browser.
    challenged(&s, &b, "/either/orders", "either").await;
}

#[tokio::test]
async fn the_gateway_binary_lets_an_elevation_lapse() {
    let s = setup().await;
    let b = signed_in(&s).await;
    let challenge = challenged(&s, &b, "/quick", "quick").await;
    s.idp.set_claim("acr", json!(MFA));
    let (authorize, back) = step_up_at_idp(&s, &b, &challenge).await;
    let p = params(&authorize);
    assert_eq!(param(&p, "acr_values"), Some(MFA));
    assert_eq!(param(&p, "max_age"), None, "the route has no max_age");
    assert_eq!(back.status, 302, "{}", back.body);
    let page = b.get(&back.location().unwrap()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(s.echo.last().header("x-acr"), Some(MFA));
    // A second later the session is back at the password level, on every route.
    let lapsed = common::eventually(Duration::from_secs(10), || async {
        let info = b.get(&s.gw.url("/.portcullis/userinfo")).await.json();
        (info["acr"] == PW).then_some(info)
    })
    .await
    .expect("the elevation did not lapse");
    assert_eq!(lapsed["amr"], json!(["pwd"]));
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));
    challenged(&s, &b, "/quick", "quick").await;
    assert_eq!(
        step_ups(&s.gw, "quick", "challenged", "step-up-required").await,
        2.0
    );
}

#[tokio::test]
async fn the_login_endpoint_checks_the_step_up_it_is_asked_for() {
    let s = setup().await;
    // Not a route with a step-up.
    for name in ["account", "nope"] {
        let r = Browser::new()
            .get(&s.gw.url(&format!("/.portcullis/login?rd=/&step_up={name}")))
            .await;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert!(r.body.contains("step-up-invalid"), "{}", r.body);
    }
    // Without a session it is an ordinary login: no level asked, a new session made.
    s.idp.set_claim("acr", json!(PW));
    let b = Browser::new();
    let started = b
        .get(&s.gw.url("/.portcullis/login?rd=/account&step_up=secure"))
        .await;
    assert_eq!(started.status, 302, "{}", started.body);
    let p = started.location_params();
    assert_eq!(param(&p, "acr_values"), None);
    assert_eq!(param(&p, "max_age"), None);
    let page = b.follow(started, 10).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.url, s.gw.url("/account"));
    assert_eq!(step_ups(&s.gw, "secure", "completed", "ok").await, 0.0);
    // Then the step-up itself.
    challenged(&s, &b, "/secure", "secure").await;
}

// ---------------------------------------------------------------------------
// In process: elevation and max_age on a fake clock.
// ---------------------------------------------------------------------------

fn runtime(clock: &FakeClock) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\n\
         public_url: \"https://shop.example.com\"\n\
         session: { idle_timeout: 1h, absolute_timeout: 12h }\n\
         providers:\n\
         \x20 - id: idp\n\
         \x20   issuer: \"https://id.example.com\"\n\
         \x20   client_id: shop\n\
         \x20   client_secret: { file: secret }\n\
         \x20   acr_levels: { password: \"urn:pw\", mfa: \"urn:mfa\" }\n\
         upstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        "routes:\n\
         \x20 - { name: secure, match: { path_prefix: /secure }, upstream: app, auth: login, step_up: { acr: mfa, max_age: 10m, elevation: 15m } }\n\
         \x20 - { name: account, match: { path_prefix: / }, upstream: app, auth: login }\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Runtime::build(cfg, None, &Arc::new(Metrics::new()), &clock, 1).unwrap()
}

async fn decide(rt: &Runtime, route: &str, id: &SessionId) -> Decision {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        format!("__Host-portcullis={}", id.as_cookie_value())
            .parse()
            .unwrap(),
    );
    let route = rt.routes.iter().find(|r| &*r.name == route).unwrap();
    authorize(rt, route, &h).await.0
}

fn alice(acr: &str, auth_time: u64) -> Session {
    Session {
        provider: "idp".into(),
        issuer: "https://id.example.com".into(),
        subject: "alice".into(),
        acr: Some(acr.into()),
        amr: vec!["pwd".into()],
        auth_time: Some(auth_time),
        ..Session::default()
    }
}

#[tokio::test]
async fn an_elevation_lapses_back_to_the_base_level() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let now = clock.now_ms();
    let base_time = now / 1000 - 1800;
    let until = now + 15 * 60 * 1000;
    let mut s = alice(MFA, now / 1000);
    s.amr = vec!["pwd".into(), "otp".into()];
    s.elevation = Some(Elevation {
        base_acr: Some(PW.into()),
        base_amr: vec!["pwd".into()],
        base_auth_time: Some(base_time),
        until_ms: until,
    });
    let id = rt.sessions.create(s).await.unwrap().id;

    let live = rt.sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(live.acr.as_deref(), Some(MFA));
    assert!(live.elevation.is_some());
    assert_eq!(decide(&rt, "secure", &id).await, Decision::Allow);

    // Within max_age and the elevation.
    clock.advance(Duration::from_secs(9 * 60));
    assert_eq!(decide(&rt, "secure", &id).await, Decision::Allow);
    // Past max_age: still elevated, but the authentication is too old for the route.
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        decide(&rt, "secure", &id).await,
        Decision::StepUp {
            reason: "authentication-too-old"
        }
    );
    clock.advance(Duration::from_millis(until - clock.now_ms() - 1));
    let live = rt.sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(
        live.acr.as_deref(),
        Some(MFA),
        "a millisecond before the lapse"
    );
    assert!(live.elevation.is_some());

    // At until_ms the session is back at its base level, and stays there.
    clock.advance(Duration::from_millis(1));
    let live = rt.sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(live.acr.as_deref(), Some(PW));
    assert_eq!(live.amr, ["pwd"]);
    assert_eq!(live.auth_time, Some(base_time));
    assert_eq!(live.elevation, None);
    let stored = rt.sessions.peek(&id).await.unwrap().unwrap();
    assert_eq!(stored.acr.as_deref(), Some(PW), "the lapse is stored");
    assert_eq!(stored.elevation, None);
    assert_eq!(
        decide(&rt, "secure", &id).await,
        Decision::StepUp {
            reason: "step-up-required"
        }
    );
    assert_eq!(decide(&rt, "account", &id).await, Decision::Allow);
    clock.advance(Duration::from_secs(60));
    let live = rt.sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(live.acr.as_deref(), Some(PW));
}

#[tokio::test]
async fn max_age_asks_again_once_the_authentication_is_older() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let now_s = clock.now_ms() / 1000;
    let strong = rt.sessions.create(alice(MFA, now_s)).await.unwrap().id;
    let weak = rt.sessions.create(alice(PW, now_s)).await.unwrap().id;
    let mut no_time = alice(MFA, 0);
    no_time.auth_time = None;
    let no_time = rt.sessions.create(no_time).await.unwrap().id;
    assert_eq!(decide(&rt, "secure", &strong).await, Decision::Allow);
    assert_eq!(
        decide(&rt, "secure", &weak).await,
        Decision::StepUp {
            reason: "step-up-required"
        }
    );
    assert_eq!(
        decide(&rt, "secure", &no_time).await,
        Decision::StepUp {
            reason: "authentication-too-old"
        }
    );
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        decide(&rt, "secure", &strong).await,
        Decision::Allow,
        "at max_age"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        decide(&rt, "secure", &strong).await,
        Decision::StepUp {
            reason: "authentication-too-old"
        }
    );
    // Routes without a step-up do not care.
    for id in [&strong, &weak, &no_time] {
        assert_eq!(decide(&rt, "account", id).await, Decision::Allow);
    }
}

// ---------------------------------------------------------------------------
// End to end: the real oidc-provider, where the one-time code gives loa:2.
// ---------------------------------------------------------------------------

const LOA1: &str = "urn:portcullis:loa:1";
const LOA2: &str = "urn:portcullis:loa:2";
const SECRET: &str = "step-up-client-secret-0123456789abcdef";

const E2E_POLICY: &str = r#"routes:
  - name: vault
    match: { path_prefix: /vault }
    upstream: app
    auth: login
    step_up: { acr: loa2, max_age: 10m, prompt_login: true }
    headers: { X-User: "{sub}", X-Acr: "{acr}", X-Amr: "{amr}" }
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// Counts the provider's log lines `login ok for alice (<acr>)`.
fn provider_logins(op: &OidcProvider, acr: &str) -> usize {
    op.logs()
        .lines()
        .filter(|l| l.contains(&format!("login ok for alice ({acr})")))
        .count()
}

#[tokio::test]
async fn with_oidc_provider_the_one_time_code_steps_the_session_up() {
    let echo = Echo::start().await;
    let (op, gw) = common::oidc_provider::with_gateway(
        SECRET,
        &echo,
        &session_yaml(None),
        "    scopes: [openid, email, profile, groups]\n    acr_levels: { loa1: \"urn:portcullis:loa:1\", loa2: \"urn:portcullis:loa:2\" }\n",
        E2E_POLICY,
    )
    .await;

    /// Signs in with the password alone (loa:1) through /account.
    async fn base_login(gw: &Gateway, op: &OidcProvider, b: &Browser) {
        let start = b.get(&gw.url("/account")).await;
        assert_eq!(start.status, 302, "{}", start.body);
        let back = b
            .sign_in_at_provider(start, &op.issuer, "alice", "wonderland", None)
            .await;
        let to = back.location().unwrap_or_else(|| {
            panic!(
                "not sent back: {} {}\n{}",
                back.status,
                back.body,
                op.logs()
            )
        });
        let page = b.follow(b.get(&to).await, 5).await;
        assert_eq!(page.status, 200, "{}\n{}", page.body, gw.logs());
        assert_eq!(page.url, gw.url("/account"));
    }
    /// From a navigation to /vault: the step-up challenge and the provider's login,
    /// with `otp`; returns the gateway's answer at the callback, not followed.
    async fn step_up(gw: &Gateway, op: &OidcProvider, b: &Browser, otp: Option<&str>) -> Page {
        let challenge = b.get(&gw.url("/vault/keys")).await;
        assert_eq!(challenge.status, 302, "{}", challenge.body);
        let to = challenge.location().unwrap();
        assert!(to.contains("step_up=vault"), "{to}");
        let started = b.get(&to).await;
        assert_eq!(started.status, 302, "{}", started.body);
        let authorize = started.location().unwrap();
        assert!(authorize.starts_with(&op.issuer), "{authorize}");
        let p = params(&authorize);
        assert_eq!(param(&p, "acr_values"), Some(LOA2), "{authorize}");
        assert_eq!(param(&p, "max_age"), Some("600"), "{authorize}");
        assert_eq!(param(&p, "prompt"), Some("login"), "{authorize}");
        let back = b
            .sign_in_at_provider(started, &op.issuer, "alice", "wonderland", otp)
            .await;
        let to = back.location().unwrap_or_else(|| {
            panic!(
                "not sent back: {} {}\n{}",
                back.status,
                back.body,
                op.logs()
            )
        });
        assert!(to.starts_with(&gw.url("/.portcullis/callback")), "{to}");
        b.get(&to).await
    }

    // Alice without the code, then with it at the step-up.
    let b = Browser::new();
    base_login(&gw, &op, &b).await;
    assert_eq!(echo.last().header("x-acr"), Some(LOA1));
    assert_eq!(provider_logins(&op, LOA1), 1);
    let old = session_cookie(&b, &gw);
    let back = step_up(&gw, &op, &b, Some("123456")).await;
    assert_eq!(
        provider_logins(&op, LOA2),
        1,
        "the provider asked again:\n{}",
        op.logs()
    );
    assert_eq!(back.status, 302, "{}\n{}", back.body, gw.logs());
    assert_eq!(
        back.location().as_deref(),
        Some(gw.url("/vault/keys").as_str())
    );
    let page = b.get(&back.location().unwrap()).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, gw.logs());
    let seen = echo.last();
    assert_eq!(seen.target, "/vault/keys");
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header("x-acr"), Some(LOA2));
    assert_eq!(seen.header("x-amr"), Some("pwd,otp"));
    let new = session_cookie(&b, &gw);
    assert_ne!(new, old, "the session id rotated");
    let r = gw
        .get("/account", &[("Cookie", &format!("portcullis={old}"))])
        .await;
    assert_eq!(r.status, 302, "the old id no longer works");
    assert_eq!(b.get(&gw.url("/account")).await.status, 200);
    assert_eq!(echo.last().header("x-acr"), Some(LOA2));
    assert_eq!(step_ups(&gw, "vault", "completed", "ok").await, 1.0);

    // Another browser: alice again without the code at the step-up.
    let c = Browser::new();
    base_login(&gw, &op, &c).await;
    let kept = session_cookie(&c, &gw);
    let before = echo.count();
    let back = step_up(&gw, &op, &c, None).await;
    assert_eq!(
        provider_logins(&op, LOA1),
        3,
        "the provider asked again:\n{}",
        op.logs()
    );
    assert_eq!(back.status, 403, "{}\n{}", back.body, gw.logs());
    assert!(
        back.body.contains("step-up-acr-insufficient"),
        "{}",
        back.body
    );
    assert_eq!(echo.count(), before, "nothing reached the upstream");
    assert_eq!(session_cookie(&c, &gw), kept);
    assert_eq!(c.get(&gw.url("/account")).await.status, 200);
    assert_eq!(echo.last().header("x-acr"), Some(LOA1));
    assert_eq!(
        step_ups(&gw, "vault", "failed", "step-up-acr-insufficient").await,
        1.0
    );
}
