//! Logins against a provider that misbehaves on purpose (the in-process test IdP). Each
//! case a real provider would not produce must end with an error page naming the
//! reason, no session cookie, no session in the store (a real `redis-server`), and no
//! request reaching the upstream.

mod common;

use common::browser::{Browser, Page};
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::redis::RedisServer;
use common::test_idp::{Misbehaviour, TestIdp};
use common::{Echo, Gateway};

struct Setup {
    idp: TestIdp,
    gw: Gateway,
    echo: Echo,
    redis: RedisServer,
}

async fn setup_with(extra: &str) -> Setup {
    let redis = RedisServer::start().await;
    let IdpGateway { idp, gw, echo } =
        with_test_idp(&session_yaml(Some((&redis.url(), "t:"))), extra, POLICY).await;
    Setup {
        idp,
        gw,
        echo,
        redis,
    }
}

async fn setup() -> Setup {
    setup_with("    userinfo: true\n").await
}

/// Keys in the store: sessions (`s:`) and login states (`l:`).
async fn stored(redis: &RedisServer, kind: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("t:{kind}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    keys.len()
}

/// A browser opens `/account`, is sent to log in, and the provider answers at once.
async fn log_in(s: &Setup, b: &Browser) -> Page {
    let first = b.get(&s.gw.url("/account")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    b.follow(first, 10).await
}

async fn assert_refused(s: &Setup, b: &Browser, page: &Page, reason: &str) {
    assert!(
        page.status == 400 || page.status == 502 || page.status == 503,
        "expected an error page for {reason}, got {} at {}:\n{}\n{}",
        page.status,
        page.url,
        page.body,
        s.gw.logs()
    );
    assert!(
        page.url.contains("/.portcullis/"),
        "the error is the gateway's: {}",
        page.url
    );
    assert!(
        page.body.contains(reason),
        "expected reason {reason} in:\n{}",
        page.body
    );
    assert!(page.header("x-request-id").is_some());
    let cookies = b.cookie_header(&s.gw.url("/")).unwrap_or_default();
    assert!(
        !cookies.split("; ").any(|c| c.starts_with("portcullis=")),
        "no session cookie may be set: {cookies}"
    );
    assert_eq!(stored(&s.redis, "s").await, 0, "no session may be stored");
    assert_eq!(s.echo.count(), 0, "nothing may reach the upstream");
    let metrics = s.gw.admin("GET", "/metrics", &[]).await.text();
    let counted = metrics.lines().any(|l| {
        l.starts_with("portcullis_login_failures_total{")
            && l.contains(&format!("reason=\"{reason}\""))
            && !l.ends_with(" 0")
    });
    assert!(counted, "failure not counted for {reason}");
    // And the route still sends this browser to log in.
    let again = b.get(&s.gw.url("/account")).await;
    assert_eq!(again.status, 302);
}

async fn refused_with(m: Misbehaviour, reason: &str) {
    let s = setup().await;
    s.idp.set(m);
    let b = Browser::new();
    let page = log_in(&s, &b).await;
    assert_refused(&s, &b, &page, reason).await;
}

#[tokio::test]
async fn a_well_behaved_provider_logs_the_user_in() {
    let s = setup().await;
    let b = Browser::new();
    let page = log_in(&s, &b).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account"));
    let seen = s.echo.last();
    assert_eq!(seen.header("x-user"), Some("user-123"));
    assert_eq!(seen.header("x-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-groups"), Some("staff,admins"));
    assert_eq!(stored(&s.redis, "s").await, 1);
    assert_eq!(stored(&s.redis, "l").await, 0, "login state is single-use");
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    refused_with(Misbehaviour::BadSignature, "token-signature-invalid").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    refused_with(Misbehaviour::AlgNone, "token-alg-not-allowed").await;
}

#[tokio::test]
async fn hs256_signed_with_the_client_secret_is_refused() {
    refused_with(Misbehaviour::Hs256WithClientSecret, "token-alg-not-allowed").await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    refused_with(Misbehaviour::Hs256WithRsaPublicKey, "token-alg-not-allowed").await;
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    refused_with(Misbehaviour::WrongIss, "token-issuer-mismatch").await;
}

#[tokio::test]
async fn a_missing_issuer_is_refused() {
    refused_with(Misbehaviour::MissingIss, "token-issuer-mismatch").await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    refused_with(Misbehaviour::WrongAud, "token-audience-mismatch").await;
}

#[tokio::test]
async fn several_audiences_without_azp_are_refused() {
    refused_with(Misbehaviour::MultipleAudNoAzp, "token-azp-mismatch").await;
}

#[tokio::test]
async fn several_audiences_with_our_azp_are_accepted() {
    let s = setup().await;
    s.idp.set(Misbehaviour::MultipleAudWithAzp);
    let b = Browser::new();
    let page = log_in(&s, &b).await;
    assert_eq!(page.status, 200, "{}", page.body);
}

#[tokio::test]
async fn a_missing_nonce_is_refused() {
    refused_with(Misbehaviour::MissingNonce, "nonce-mismatch").await;
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    refused_with(Misbehaviour::WrongNonce, "nonce-mismatch").await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    refused_with(Misbehaviour::Expired, "token-expired").await;
}

#[tokio::test]
async fn iat_far_in_the_future_is_refused() {
    refused_with(Misbehaviour::IatInFuture, "token-iat-invalid").await;
}

#[tokio::test]
async fn a_missing_kid_among_several_keys_is_refused() {
    refused_with(Misbehaviour::MissingKid, "token-key-ambiguous").await;
}

#[tokio::test]
async fn an_es256_token_is_accepted() {
    let s = setup().await;
    s.idp.set(Misbehaviour::EcSigned);
    let b = Browser::new();
    assert_eq!(log_in(&s, &b).await.status, 200);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_keys_once() {
    let s = setup().await;
    s.idp.set(Misbehaviour::UnknownKid);
    let before = s.idp.hits("/jwks");
    for _ in 0..4 {
        let b = Browser::new();
        let page = log_in(&s, &b).await;
        assert_refused(&s, &b, &page, "token-unknown-key").await;
    }
    assert_eq!(
        s.idp.hits("/jwks") - before,
        1,
        "unknown kids may trigger one fetch per interval, not one each"
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_accepted() {
    let s = setup().await;
    s.idp.rotate_keys();
    let before = s.idp.hits("/jwks");
    let b = Browser::new();
    let page = log_in(&s, &b).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(s.idp.hits("/jwks") - before, 1);
}

#[tokio::test]
async fn a_mix_up_of_the_authorization_response_issuer_is_refused() {
    refused_with(Misbehaviour::AuthzIssMismatch, "issuer-mismatch").await;
}

#[tokio::test]
async fn a_missing_authorization_response_issuer_is_refused_when_advertised() {
    refused_with(Misbehaviour::AuthzIssMissing, "issuer-mismatch").await;
}

#[tokio::test]
async fn a_userinfo_sub_mismatch_is_refused() {
    refused_with(Misbehaviour::UserinfoSubMismatch, "userinfo-sub-mismatch").await;
}

#[tokio::test]
async fn access_denied_at_the_provider_is_reported() {
    refused_with(Misbehaviour::AccessDenied, "access-denied").await;
}

#[tokio::test]
async fn a_discovery_issuer_mismatch_keeps_the_provider_unusable() {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let idp = TestIdp::start().await;
    idp.set(Misbehaviour::DiscoveryIssuerMismatch);
    let port = common::free_port();
    let admin_port = common::free_port();
    let extra = format!(
        "{}providers:\n  - id: idp\n    issuer: \"{}\"\n    client_id: \"{}\"\n    client_secret: {{ file: client-secret }}\n{}",
        session_yaml(Some((&redis.url(), "t:"))),
        idp.issuer(),
        idp.client_id(),
        common::upstream_app(echo.addr)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), idp.client_secret()).unwrap();
    let gw = Gateway::start_in(
        dir,
        &common::gateway_yaml(port, admin_port, &extra),
        port,
        admin_port,
        &[("routes.yaml", POLICY)],
    )
    .await;
    let seen = common::eventually(std::time::Duration::from_secs(10), || async {
        gw.metric("portcullis_provider_errors_total{kind=\"issuer-mismatch\",operation=\"discovery\",provider=\"idp\"}")
            .await
    })
    .await;
    assert!(seen.is_some(), "{}", gw.logs());
    let ready = gw.admin("GET", "/readyz", &[]).await.json();
    assert_eq!(ready["providers"]["idp"]["discovered"], false);
    let b = Browser::new();
    let page = b.follow(b.get(&gw.url("/account")).await, 5).await;
    assert_eq!(page.status, 503);
    assert!(page.body.contains("provider-unavailable"));
    assert_eq!(
        idp.hits("/authorize"),
        0,
        "no browser is sent to that provider"
    );
    assert_eq!(echo.count(), 0);
    assert_eq!(
        gw.metric("portcullis_provider_up{provider=\"idp\"}").await,
        Some(0.0)
    );
}

/// Starts a login and returns the authorization request's URL (not followed).
async fn start_login(s: &Setup, b: &Browser) -> url::Url {
    let to_login = b.get(&s.gw.url("/account")).await;
    let to_idp = b.get(&to_login.location().unwrap()).await;
    assert_eq!(to_idp.status, 302, "{}", to_idp.body);
    url::Url::parse(&to_idp.location().unwrap()).unwrap()
}

fn param(u: &url::Url, name: &str) -> String {
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The provider's redirect back to the gateway for an authorization request.
async fn callback_url(b: &Browser, authorize: &url::Url) -> url::Url {
    let cb = b.get(authorize.as_str()).await;
    assert_eq!(cb.status, 302, "{}", cb.body);
    url::Url::parse(&cb.location().unwrap()).unwrap()
}

fn with_param(u: &url::Url, name: &str, value: Option<&str>) -> String {
    let mut out = u.clone();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut q = out.query_pairs_mut();
    q.clear();
    for (k, v) in &pairs {
        q.append_pair(k, v);
    }
    if let Some(v) = value {
        q.append_pair(name, v);
    }
    drop(q);
    out.to_string()
}

#[tokio::test]
async fn the_authorization_request_uses_pkce_s256_and_256_bit_state_and_nonce() {
    let s = setup().await;
    let b = Browser::new();
    let auth = start_login(&s, &b).await;
    assert_eq!(param(&auth, "code_challenge_method"), "S256");
    assert_eq!(param(&auth, "code_challenge").len(), 43);
    assert!(
        param(&auth, "state").len() >= 43,
        "state has at least 256 bits"
    );
    assert!(param(&auth, "nonce").len() >= 43);
    assert_eq!(
        param(&auth, "redirect_uri"),
        s.gw.url("/.portcullis/callback")
    );
    assert_eq!(param(&auth, "response_type"), "code");
    assert_eq!(
        stored(&s.redis, "l").await,
        1,
        "login state is held server-side"
    );
}

#[tokio::test]
async fn a_callback_without_state_is_refused() {
    let s = setup().await;
    let b = Browser::new();
    let auth = start_login(&s, &b).await;
    let cb = callback_url(&b, &auth).await;
    let page = b.get(&with_param(&cb, "state", None)).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("state-missing"));
    assert_eq!(stored(&s.redis, "s").await, 0);
}

#[tokio::test]
async fn an_altered_state_is_refused() {
    let s = setup().await;
    let b = Browser::new();
    let auth = start_login(&s, &b).await;
    let cb = callback_url(&b, &auth).await;
    let mut state = param(&cb, "state");
    state.replace_range(0..1, if state.starts_with('A') { "B" } else { "A" });
    let page = b.get(&with_param(&cb, "state", Some(&state))).await;
    assert_refused(&s, &b, &page, "state-mismatch").await;
}

#[tokio::test]
async fn a_replayed_callback_creates_no_second_session() {
    let s = setup().await;
    let b = Browser::new();
    let auth = start_login(&s, &b).await;
    let cb = callback_url(&b, &auth).await;
    let first = b.get(cb.as_str()).await;
    assert_eq!(first.status, 302, "{}", first.body);
    assert_eq!(stored(&s.redis, "s").await, 1);
    let replay = Browser::new();
    let again = replay.get(cb.as_str()).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("state-mismatch"));
    assert_eq!(stored(&s.redis, "s").await, 1);
}

#[tokio::test]
async fn a_replayed_code_is_refused() {
    let s = setup().await;
    let b = Browser::new();
    let auth = start_login(&s, &b).await;
    let cb = callback_url(&b, &auth).await;
    assert_eq!(b.get(cb.as_str()).await.status, 302);
    // A new login in another browser, answered with the code already used.
    let b2 = Browser::new();
    let auth2 = start_login(&s, &b2).await;
    let cb2 = callback_url(&b2, &auth2).await;
    let stale = with_param(&cb2, "code", Some(&param(&cb, "code")));
    let page = b2.get(&stale).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("code-rejected"));
    assert_eq!(
        stored(&s.redis, "s").await,
        1,
        "only the first login's session"
    );
}

#[tokio::test]
async fn a_callback_in_another_browser_is_refused() {
    let s = setup().await;
    let victim = Browser::new();
    let auth = start_login(&s, &victim).await;
    let cb = callback_url(&victim, &auth).await;
    let attacker = Browser::new();
    let page = attacker.get(cb.as_str()).await;
    assert_refused(&s, &attacker, &page, "browser-mismatch").await;
}
