//! Provider tokens in the request path, against the in-process test IdP: a route with
//! `forward_access_token` sends the provider's access token upstream (never the client's
//! own Authorization); a token about to expire is refreshed by exactly one of many
//! concurrent requests, with the memory store and with Redis (where tokens are kept only
//! sealed); a refresh the provider refuses ends the session; and a population with
//! `refresh_tokens` keeps its sessions alive with the provider on every route.

mod common;

use common::browser::Browser;
use common::identity::{session_yaml, with_test_idp, IdpGateway};
use common::redis::RedisServer;
use std::time::Duration;

/// `/tokens` forwards the access token; `/account` does not.
const POLICY: &str = r#"routes:
  - name: tokens
    match: { path_prefix: /tokens }
    upstream: app
    auth: login
    forward_access_token: true
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// The provider asks for a refresh token the way a real one would be asked.
const PROVIDER_EXTRA: &str = "    scopes: [openid, email, profile, offline_access]\n";

/// The gateway refreshes an access token 60 s before it expires, or half-way through
/// its life when it lives less than two minutes. A token issued with `expires_in: 0` is
/// therefore due at once: tests that want a refresh have the IdP issue such a token at
/// login (no clock to wait for), then longer-lived ones.
const EXPIRING_TTL: u64 = 0;
/// A short-lived token (under the 60 s margin), refreshed half-way through its life.
const SHORT_TTL: u64 = 30;

async fn setup(session: &str) -> IdpGateway {
    with_test_idp(session, PROVIDER_EXTRA, POLICY).await
}

/// Signs a new browser in at `path`; returns it once the upstream answered.
async fn signed_in(s: &IdpGateway, path: &str) -> Browser {
    let b = Browser::new();
    let page = b.follow(b.get(&s.gw.url(path)).await, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    b
}

/// Signs a new browser in and lands on the public home page, so that no route that
/// needs the tokens has been asked for yet.
async fn signed_in_at_home(s: &IdpGateway) -> Browser {
    let b = Browser::new();
    let start = b
        .get(&s.gw.url("/.portcullis/login?rd=%2F&provider=idp"))
        .await;
    let page = b.follow(start, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/"));
    assert!(b
        .cookie_header(&s.gw.url("/"))
        .is_some_and(|c| c.contains("portcullis=")));
    b
}

/// The session section with Redis at `url` and a sealing key in a file; the key's
/// directory must outlive the gateway.
fn redis_session(url: &str, prefix: &str, key_dir: &tempfile::TempDir) -> String {
    let key: [u8; 32] = rand::random();
    let path = key_dir.path().join("sealing-key");
    std::fs::write(&path, hex(&key)).unwrap();
    format!(
        "{}  encryption_keys: [ {{ file: \"{}\" }} ]\n",
        session_yaml(Some((url, prefix))),
        path.display()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Authorization headers the upstream saw on its last request.
fn upstream_authorization(s: &IdpGateway) -> Vec<String> {
    s.echo
        .last()
        .headers_named("authorization")
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Bearer {token}")]
}

#[tokio::test]
async fn the_upstream_gets_the_providers_access_token_never_the_clients() {
    let s = setup(&session_yaml(None)).await;
    let b = signed_in(&s, "/tokens/orders").await;
    let issued = s.idp.access_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(upstream_authorization(&s), bearer(&issued[0]));

    // The client's own Authorization (any scheme, any spelling, twice) is replaced.
    for headers in [
        vec![("Authorization", "Bearer client-made-token")],
        vec![("authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")],
        vec![
            ("Authorization", "Bearer one"),
            ("Authorization", "Bearer two"),
        ],
    ] {
        let r = b.get_with(&s.gw.url("/tokens/orders"), &headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
        assert_eq!(
            upstream_authorization(&s),
            bearer(&issued[0]),
            "{headers:?}"
        );
    }
    // A route that does not forward it never sees the provider's token.
    let r = b.get(&s.gw.url("/account")).await;
    assert_eq!(r.status, 200);
    assert!(
        !upstream_authorization(&s)
            .iter()
            .any(|a| a.contains(&issued[0])),
        "the access token leaked to a route that does not forward it"
    );
    assert_eq!(
        s.idp.token_calls("refresh_token"),
        0,
        "a fresh token is not refreshed"
    );
}

/// Fires `n` requests at once with the browser's cookie (`path/0` .. `path/n-1`, as an
/// API client would); returns their statuses.
async fn burst(s: &IdpGateway, b: &Browser, path: &str, n: usize) -> Vec<u16> {
    let cookie = b.cookie_header(&s.gw.url("/")).expect("a session cookie");
    let port = s.gw.port;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = format!(
                "GET {path}/{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/json\r\nCookie: {cookie}\r\n\r\n"
            );
            tokio::spawn(async move { common::send(port, req.as_bytes()).await.status })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Twenty requests with a token about to expire: one refresh at the provider, all twenty
/// served with the new token.
async fn one_refresh_for_a_burst(s: &IdpGateway) {
    s.idp.access_token_ttl(EXPIRING_TTL);
    let b = signed_in_at_home(s).await;
    s.idp.access_token_ttl(3600);
    assert_eq!(s.idp.token_calls("refresh_token"), 0);
    // The token endpoint is slow, so the twenty really overlap the refresh.
    s.idp.token_delay(Duration::from_millis(800));
    let seen_before = s.echo.count();

    let statuses = burst(s, &b, "/tokens/burst", 20).await;
    assert!(
        statuses.iter().all(|&st| st == 200),
        "{statuses:?}\n{}",
        s.gw.logs()
    );
    assert_eq!(
        s.idp.token_calls("refresh_token"),
        1,
        "one refresh for the whole burst"
    );
    let tokens = s.idp.access_tokens();
    assert_eq!(tokens.len(), 2);
    let fresh = &tokens[1];
    let seen = &s.echo.requests()[seen_before..];
    assert_eq!(seen.len(), 20);
    for r in seen {
        assert_eq!(
            r.headers_named("authorization"),
            vec![format!("Bearer {fresh}").as_str()],
            "{} went up with a stale token",
            r.target
        );
    }
    assert_eq!(
        s.gw.metric("portcullis_token_refreshes_total{provider=\"idp\",result=\"success\"}")
            .await,
        Some(1.0)
    );
    // The rotated refresh token was sent once, and was the one issued at login.
    let presented: Vec<String> = s
        .idp
        .requests()
        .iter()
        .filter(|r| r.param("grant_type") == Some("refresh_token"))
        .map(|r| r.param("refresh_token").unwrap_or_default().to_string())
        .collect();
    assert_eq!(presented, vec![s.idp.issued()[0].refresh_token.clone()]);
}

#[tokio::test]
async fn twenty_concurrent_requests_refresh_once_with_the_memory_store() {
    let s = setup(&session_yaml(None)).await;
    one_refresh_for_a_burst(&s).await;
}

/// Every key and value (strings, and members of sorted sets) in the Redis at `url`.
async fn redis_dump(url: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => {
                let v: Vec<u8> = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
                String::from_utf8_lossy(&v).into_owned()
            }
            "zset" => {
                let v: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                v.join(" ")
            }
            other => panic!("unexpected key type {other} for {k}"),
        };
        out.push((k, value));
    }
    out
}

#[tokio::test]
async fn twenty_concurrent_requests_refresh_once_with_redis_and_tokens_are_sealed_at_rest() {
    let redis = RedisServer::start().await;
    let key_dir = tempfile::tempdir().unwrap();
    let s = setup(&redis_session(&redis.url(), "rt:", &key_dir)).await;
    one_refresh_for_a_burst(&s).await;

    let dump = redis_dump(&redis.url()).await;
    let sessions: Vec<&(String, String)> = dump
        .iter()
        .filter(|(k, _)| k.starts_with("rt:s:"))
        .collect();
    assert_eq!(sessions.len(), 1, "{dump:?}");
    let record: serde_json::Value = serde_json::from_str(&sessions[0].1).unwrap();
    let tokens = &record["tokens"];
    for kind in ["access_token", "refresh_token", "id_token"] {
        assert!(
            tokens[kind].is_string(),
            "{kind} is kept (sealed): {record}"
        );
    }
    for issued in s.idp.issued() {
        // Whole tokens, and each part of the ID token (its payload names the user).
        let mut secrets = vec![issued.access_token, issued.refresh_token];
        secrets.extend(issued.id_token.split('.').map(str::to_string));
        secrets.push(issued.id_token);
        for secret in secrets.iter().filter(|t| t.len() >= 16) {
            for (k, v) in &dump {
                assert!(
                    !v.contains(secret.as_str()) && !k.contains(secret.as_str()),
                    "a token is in clear in Redis under {k}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let s = setup(&session_yaml(None)).await;
    s.idp.access_token_ttl(EXPIRING_TTL);
    let nav = signed_in_at_home(&s).await;
    let api = signed_in_at_home(&s).await;
    s.idp.reject_refresh(true);
    let seen = s.echo.count();

    // A navigation goes back to log in.
    let r = nav.get(&s.gw.url("/tokens/a")).await;
    assert_eq!(r.status, 302, "{}\n{}", r.body, s.gw.logs());
    let to = r.location().unwrap();
    assert!(to.starts_with(&s.gw.url("/.portcullis/login?")), "{to}");
    // An API request is told it is not signed in.
    let r = api
        .get_with(&s.gw.url("/tokens/b"), &[("Accept", "application/json")])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(s.echo.count(), seen, "nothing reached the upstream");
    assert_eq!(s.idp.token_calls("refresh_token"), 2);
    assert_eq!(
        s.gw.metric("portcullis_sessions_ended_total{reason=\"refresh-failed\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        s.gw.metric("portcullis_token_refreshes_total{provider=\"idp\",result=\"rejected\"}")
            .await,
        Some(2.0)
    );

    // The sessions are gone: even with the provider willing again, nothing is
    // refreshed, and the routes that do not need the token refuse them too.
    s.idp.reject_refresh(false);
    for b in [&nav, &api] {
        let r = b
            .get_with(&s.gw.url("/account"), &[("Accept", "application/json")])
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(s.idp.token_calls("refresh_token"), 2);
    assert_eq!(s.echo.count(), seen);
}

#[tokio::test]
async fn a_population_with_refresh_tokens_refreshes_on_routes_that_do_not_forward() {
    let session = format!(
        "{}populations:\n  everyone:\n    providers: [idp]\n    refresh_tokens: true\n",
        session_yaml(None)
    );
    let s = setup(&session).await;
    s.idp.access_token_ttl(EXPIRING_TTL);
    let b = signed_in_at_home(&s).await;
    assert_eq!(s.idp.token_calls("refresh_token"), 0);

    // `/account` does not forward the token, but the session is kept alive with the
    // provider: the token about to expire is refreshed.
    s.idp.access_token_ttl(3600);
    let r = b.get(&s.gw.url("/account/profile")).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, s.gw.logs());
    assert_eq!(s.idp.token_calls("refresh_token"), 1);
    assert!(
        s.echo.last().headers_named("authorization").is_empty(),
        "the route does not forward the token"
    );
    // Fresh for an hour now: no more refreshes.
    for _ in 0..3 {
        assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    }
    assert_eq!(s.idp.token_calls("refresh_token"), 1);
    assert_eq!(
        s.gw.metric("portcullis_token_refreshes_total{provider=\"idp\",result=\"success\"}")
            .await,
        Some(1.0)
    );

    // The session lives as long as the provider agrees: once it refuses, it ends, on
    // this route too.
    let other = signed_in_at_home(&s).await;
    s.idp.access_token_ttl(EXPIRING_TTL);
    let third = signed_in_at_home(&s).await;
    s.idp.reject_refresh(true);
    let r = third
        .get_with(&s.gw.url("/account"), &[("Accept", "application/json")])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        s.gw.metric("portcullis_sessions_ended_total{reason=\"refresh-failed\"}")
            .await,
        Some(1.0)
    );
    // A session whose token is still fresh is not affected.
    assert_eq!(other.get(&s.gw.url("/account")).await.status, 200);
}

#[tokio::test]
async fn without_refresh_tokens_a_route_that_does_not_forward_never_refreshes() {
    let s = setup(&session_yaml(None)).await;
    s.idp.access_token_ttl(EXPIRING_TTL);
    let b = signed_in(&s, "/account").await;
    for _ in 0..3 {
        assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    }
    assert_eq!(s.idp.token_calls("refresh_token"), 0);
}

#[tokio::test]
async fn a_token_shorter_lived_than_the_refresh_margin_is_not_refreshed_on_every_request() {
    // A provider whose access tokens last 30 s: each is within the 60 s margin from the
    // moment it is issued. Refreshing it on every request would call the provider, and
    // rotate the refresh token, once per request; it is refreshed half-way instead.
    let s = setup(&session_yaml(None)).await;
    s.idp.access_token_ttl(SHORT_TTL);
    let b = signed_in_at_home(&s).await;
    for i in 0..5 {
        let r = b.get(&s.gw.url(&format!("/tokens/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(
        s.idp.token_calls("refresh_token") <= 1,
        "five requests within seconds of one another need one refresh at most, made {}",
        s.idp.token_calls("refresh_token")
    );
}
