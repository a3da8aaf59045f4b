//! OpenID Connect Back-Channel Logout against the in-process test IdP: every token that
//! is not a valid logout token is refused with its reason and ends nothing; a valid one
//! ends exactly the sessions it names (by `sid`, or all of a user's by `sub`), once.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::browser::Browser;
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::redis::RedisServer;
use common::test_idp::{TokenHeader, OTHER_CLIENT, OTHER_ISSUER};
use common::Response;
use serde_json::{json, Value};
use std::time::Duration;

const ENDPOINT: &str = "/.portcullis/backchannel-logout";

async fn setup() -> IdpGateway {
    with_test_idp(&session_yaml(None), "", POLICY).await
}

/// A browser signed in at `/account` through the IdP; the `sid` the IdP gave it.
async fn signed_in(s: &IdpGateway) -> (Browser, String) {
    let b = Browser::new();
    let page = b.follow(b.get(&s.gw.url("/account")).await, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    let sid = s.idp.sids().pop().expect("the ID token had a sid");
    (b, sid)
}

/// True when the browser's session still reaches the upstream through a login route.
async fn still_signed_in(s: &IdpGateway, b: &Browser) -> bool {
    let before = s.echo.count();
    let r = b
        .get_with(
            &s.gw.url("/account/check"),
            &[("Accept", "application/json")],
        )
        .await;
    match r.status {
        200 => {
            assert_eq!(s.echo.count(), before + 1);
            assert_eq!(s.echo.last().target, "/account/check");
            true
        }
        401 => false,
        other => panic!("unexpected {other}: {}", r.body),
    }
}

/// What a provider sends: a form POST with `body`, as `content_type`.
async fn post(s: &IdpGateway, content_type: &str, body: &str) -> Response {
    let req = format!(
        "POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        s.gw.port,
        body.len()
    );
    s.gw.raw(req.as_bytes()).await
}

async fn post_token(s: &IdpGateway, token: &str) -> Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    post(s, "application/x-www-form-urlencoded", &body).await
}

fn mint(s: &IdpGateway, claims: Value) -> String {
    s.idp.mint(claims, TokenHeader::rs256().typ("logout+jwt"))
}

/// A valid logout token about this user (`user-123`) and `sid`.
fn claims_for(s: &IdpGateway, sid: &str) -> Value {
    s.idp.logout_token_claims(Some("user-123"), Some(sid))
}

fn assert_refused_with(r: &Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error_description"], reason, "{v}");
    assert_eq!(
        v["error"],
        if status < 500 {
            "invalid_request"
        } else {
            "temporarily_unavailable"
        }
    );
}

/// Posts `token` (made from a signed-in browser's `sid`) and expects 400 with `reason`;
/// the session must still work afterwards, and the refusal is counted.
async fn refused(make: impl FnOnce(&IdpGateway, &str) -> String, reason: &str) {
    let s = setup().await;
    let (b, sid) = signed_in(&s).await;
    let token = make(&s, &sid);
    let r = post_token(&s, &token).await;
    assert_refused_with(&r, 400, reason);
    assert!(
        still_signed_in(&s, &b).await,
        "a refused logout token ended the session"
    );
    let counted =
        s.gw.metric(&format!(
            "portcullis_backchannel_logouts_total{{provider=\"unknown\",result=\"{reason}\"}}"
        ))
        .await;
    assert_eq!(counted, Some(1.0), "refusal {reason} not counted");
}

/// Flips one bit in the middle of the signature.
fn tamper_signature(token: &str) -> String {
    let (message, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    refused(
        |s, sid| tamper_signature(&mint(s, claims_for(s, sid))),
        "token-signature-invalid",
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_by_a_key_the_provider_does_not_publish_is_refused() {
    // The attacker's key under the provider's kid.
    refused(
        |s, sid| {
            s.idp.mint(
                claims_for(s, sid),
                TokenHeader::rs256().typ("logout+jwt").attacker_key(),
            )
        },
        "token-signature-invalid",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_audience_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c["aud"] = json!(OTHER_CLIENT);
            mint(s, c)
        },
        "token-audience-mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_nonce_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c["nonce"] = json!("n-0S6_WzA2Mj");
            mint(s, c)
        },
        "logout-token-nonce-present",
    )
    .await;
}

#[tokio::test]
async fn missing_events_are_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c.as_object_mut().unwrap().remove("events");
            mint(s, c)
        },
        "logout-token-event-missing",
    )
    .await;
}

#[tokio::test]
async fn events_without_the_back_channel_logout_event_are_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c["events"] = json!({ "http://schemas.openid.net/event/something-else": {} });
            mint(s, c)
        },
        "logout-token-event-missing",
    )
    .await;
}

#[tokio::test]
async fn a_back_channel_event_that_is_not_an_object_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c["events"] = json!({ "http://schemas.openid.net/event/backchannel-logout": "yes" });
            mint(s, c)
        },
        "logout-token-event-missing",
    )
    .await;
}

#[tokio::test]
async fn neither_sub_nor_sid_is_refused() {
    refused(
        |s, _| mint(s, s.idp.logout_token_claims(None, None)),
        "logout-token-subject-missing",
    )
    .await;
}

#[tokio::test]
async fn a_missing_jti_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c.as_object_mut().unwrap().remove("jti");
            mint(s, c)
        },
        "logout-token-jti-missing",
    )
    .await;
}

#[tokio::test]
async fn an_old_iat_is_refused() {
    refused(
        |s, sid| {
            // Still unexpired, but issued long ago: only `iat` is wrong.
            let mut c = claims_for(s, sid);
            let iat = c["iat"].as_i64().unwrap();
            c["iat"] = json!(iat - 3600);
            mint(s, c)
        },
        "token-iat-invalid",
    )
    .await;
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            let iat = c["iat"].as_i64().unwrap();
            c["iat"] = json!(iat - 200);
            c["exp"] = json!(iat - 100);
            mint(s, c)
        },
        "token-expired",
    )
    .await;
}

#[tokio::test]
async fn an_id_token_is_not_a_logout_token() {
    // What the provider issued at login: a nonce, no events, typ JWT.
    refused(
        |s, sid| {
            let mut c = s.idp.id_token_claims(Some("n-0S6_WzA2Mj"));
            c["sid"] = json!(sid);
            s.idp.mint(c, TokenHeader::rs256())
        },
        "logout-token-nonce-present",
    )
    .await;
}

#[tokio::test]
async fn a_token_typed_as_an_access_token_is_refused() {
    refused(
        |s, sid| {
            s.idp
                .mint(claims_for(s, sid), TokenHeader::rs256().typ("at+jwt"))
        },
        "token-type-invalid",
    )
    .await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    refused(
        |s, sid| {
            s.idp
                .mint(claims_for(s, sid), TokenHeader::none().typ("logout+jwt"))
        },
        "token-alg-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn hs256_with_the_client_secret_is_refused() {
    refused(
        |s, sid| {
            s.idp.mint(
                claims_for(s, sid),
                TokenHeader::hs256_client_secret().typ("logout+jwt"),
            )
        },
        "token-alg-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_issuer_is_refused() {
    refused(
        |s, sid| {
            let mut c = claims_for(s, sid);
            c["iss"] = json!(OTHER_ISSUER);
            mint(s, c)
        },
        "token-issuer-mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_missing_or_doubled_logout_token_is_refused() {
    let s = setup().await;
    let (b, sid) = signed_in(&s).await;
    let r = post(&s, "application/x-www-form-urlencoded", "other=1").await;
    assert_refused_with(&r, 400, "logout-token-missing");
    let t = mint(&s, claims_for(&s, &sid));
    let body = format!("logout_token={t}&logout_token={t}");
    let r = post(&s, "application/x-www-form-urlencoded", &body).await;
    assert_refused_with(&r, 400, "logout-token-missing");
    assert!(still_signed_in(&s, &b).await);
}

#[tokio::test]
async fn a_replayed_jti_is_refused() {
    let s = setup().await;
    let (b, _) = signed_in(&s).await;
    // A valid token about a session that is not ours: accepted once, ends nothing here.
    let token = mint(
        &s,
        s.idp
            .logout_token_claims(Some("someone-else"), Some("another-sid")),
    );
    let first = post_token(&s, &token).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let again = post_token(&s, &token).await;
    assert_refused_with(&again, 400, "logout-token-replayed");
    // Same jti, freshly signed: still the same logout event.
    let mut c = s
        .idp
        .logout_token_claims(Some("user-123"), Some(&s.idp.sids()[0]));
    c["jti"] = jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
        .unwrap()
        .claims["jti"]
        .clone();
    let reused = post_token(&s, &mint(&s, c)).await;
    assert_refused_with(&reused, 400, "logout-token-replayed");
    assert!(still_signed_in(&s, &b).await);
    assert_eq!(
        s.gw
            .metric(
                "portcullis_backchannel_logouts_total{provider=\"idp\",result=\"logout-token-replayed\"}"
            )
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_refused_with_415() {
    let s = setup().await;
    let (b, sid) = signed_in(&s).await;
    let token = mint(&s, claims_for(&s, &sid));
    let r = post(
        &s,
        "application/json",
        &json!({ "logout_token": token }).to_string(),
    )
    .await;
    assert_refused_with(&r, 415, "form-expected");
    let r = post(&s, "text/plain", &format!("logout_token={token}")).await;
    assert_eq!(r.status, 415);
    assert!(still_signed_in(&s, &b).await);
}

#[tokio::test]
async fn get_is_not_allowed() {
    let s = setup().await;
    let (b, sid) = signed_in(&s).await;
    let token = mint(&s, claims_for(&s, &sid));
    let r =
        s.gw.get(
            &format!("{ENDPOINT}?logout_token={token}"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r.text().contains("method-not-allowed"));
    assert!(still_signed_in(&s, &b).await, "a GET must never log out");
}

#[tokio::test]
async fn a_sid_ends_exactly_the_sessions_of_that_provider_session() {
    let s = setup().await;
    let (one, sid1) = signed_in(&s).await;
    let (two, sid2) = signed_in(&s).await;
    assert_ne!(sid1, sid2, "two logins, two provider sessions");
    let before =
        s.gw.metric("portcullis_backchannel_logouts_total{provider=\"idp\",result=\"success\"}")
            .await
            .unwrap_or(0.0);

    let r = post_token(&s, &mint(&s, claims_for(&s, &sid1))).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.gw.logs());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(!still_signed_in(&s, &one).await, "the named session ended");
    assert!(
        still_signed_in(&s, &two).await,
        "the other sid's session lives"
    );
    assert_eq!(
        s.gw.metric("portcullis_backchannel_logouts_total{provider=\"idp\",result=\"success\"}")
            .await,
        Some(before + 1.0)
    );
    assert_eq!(
        s.gw.metric("portcullis_sessions_ended_total{reason=\"back-channel\"}")
            .await,
        Some(1.0)
    );
    // A navigation of the ended session is sent to log in again.
    let nav = one.get(&s.gw.url("/account")).await;
    assert_eq!(nav.status, 302);

    // `sid` alone (no sub) is enough.
    let r = post_token(&s, &mint(&s, s.idp.logout_token_claims(None, Some(&sid2)))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!still_signed_in(&s, &two).await);
}

#[tokio::test]
async fn a_sid_with_another_users_sub_ends_nothing() {
    let s = setup().await;
    let (b, sid) = signed_in(&s).await;
    let r = post_token(
        &s,
        &mint(&s, s.idp.logout_token_claims(Some("bob-9"), Some(&sid))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(still_signed_in(&s, &b).await);
}

#[tokio::test]
async fn a_sub_ends_all_of_that_users_sessions_and_no_one_elses() {
    let s = setup().await;
    let (a1, _) = signed_in(&s).await;
    let (a2, _) = signed_in(&s).await;
    s.idp.set_claim("sub", json!("bob-9"));
    let (bob, _) = signed_in(&s).await;

    let r = post_token(
        &s,
        &mint(&s, s.idp.logout_token_claims(Some("user-123"), None)),
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.gw.logs());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(!still_signed_in(&s, &a1).await);
    assert!(!still_signed_in(&s, &a2).await);
    assert!(still_signed_in(&s, &bob).await, "another user is untouched");
    assert_eq!(
        s.gw.metric("portcullis_sessions_ended_total{reason=\"back-channel\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        s.gw.metric("portcullis_backchannel_logouts_total{provider=\"idp\",result=\"success\"}")
            .await,
        Some(1.0)
    );
}

/// Keys of the Redis at `url` matching `pattern`.
async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// `kill -<signal> <pid>` for the redis-server this test started (found by its port).
fn signal_redis(url: &str, pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid} ({url})");
}

#[tokio::test]
async fn a_store_outage_answers_503_and_the_providers_retry_succeeds() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let s = with_test_idp(&session_yaml(Some((&url, "bc:"))), "", POLICY).await;
    let (b, sid) = signed_in(&s).await;
    assert_eq!(redis_keys(&url, "bc:s:*").await.len(), 1);
    let pid: u32 = {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let token = mint(&s, claims_for(&s, &sid));

    // The store stops answering (SIGSTOP: connections hang, nothing is lost).
    signal_redis(&url, pid, "STOP");
    let r = post_token(&s, &token).await;
    signal_redis(&url, pid, "CONT");
    assert_refused_with(&r, 503, "session-store-unavailable");

    // The provider retries the same token: it is not a replay, and it ends the session.
    let retried = common::eventually(Duration::from_secs(10), || async {
        let r = post_token(&s, &token).await;
        (r.status != 503).then_some(r)
    })
    .await
    .expect("the store came back");
    assert_eq!(retried.status, 200, "{}\n{}", retried.text(), s.gw.logs());
    assert!(!still_signed_in(&s, &b).await);
    assert!(redis_keys(&url, "bc:s:*").await.is_empty());
    drop(redis);
}
