//! Bearer routes: JWT access tokens from configured issuers, checked with an algorithm
//! allow-list, `iss`, `aud`, times and `typ`; keys only ever from the issuer's JWKS.
//! Tokens are minted by the in-process test IdP, including the forged ones.

mod common;

use common::identity::{session_yaml, with_test_idp, IdpGateway};
use common::test_idp::TokenHeader;
use common::Response;
use serde_json::{json, Value};

const AUD: &str = "https://api.shop.example";

const POLICY: &str = r#"routes:
  - name: admin-api
    match: { path_prefix: /api/admin }
    upstream: app
    auth: bearer
    bearer: { issuers: [idp], audience: "https://api.shop.example", require_at_jwt: true }
    require: { groups_all: [admins] }
  - name: api
    match: { path_prefix: /api }
    upstream: app
    auth: bearer
    bearer: { issuers: [idp], audience: "https://api.shop.example", require_at_jwt: true }
    headers: { X-User: "{sub}", X-Groups: "{groups}" }
  - name: either
    match: { path_prefix: /either }
    upstream: app
    auth: login_or_bearer
    bearer: { issuers: [idp], audience: "https://api.shop.example" }
    headers: { X-User: "{sub}" }
"#;

type Setup = IdpGateway;

async fn setup() -> Setup {
    with_test_idp(&session_yaml(None), "", POLICY).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(s: &Setup) -> Value {
    json!({
        "iss": s.idp.issuer(),
        "sub": "svc-1",
        "aud": AUD,
        "exp": now() + 300,
        "iat": now(),
        "groups": ["readers"],
    })
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    if x.is_null() {
        v.as_object_mut().unwrap().remove(k);
    } else {
        v[k] = x;
    }
    v
}

async fn call(s: &Setup, path: &str, token: &str) -> Response {
    s.gw.get(
        path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Accept", "application/json"),
        ],
    )
    .await
}

async fn refused(s: &Setup, token: &str, reason: &str) {
    let r = call(s, "/api/orders", token).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], reason, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\""), "{challenge}");
    assert!(challenge.contains("error=\""), "{challenge}");
    assert_eq!(s.echo.count(), 0, "nothing reaches the upstream");
}

fn at_jwt() -> TokenHeader {
    TokenHeader::rs256().typ("at+jwt")
}

#[tokio::test]
async fn a_valid_access_token_passes_with_its_identity() {
    let s = setup().await;
    let t = s.idp.mint(claims(&s), at_jwt());
    let r =
        s.gw.get(
            "/api/orders",
            &[
                ("Authorization", &format!("Bearer {t}")),
                ("X-User", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.echo.last();
    assert_eq!(seen.headers_named("x-user"), vec!["svc-1"]);
    assert_eq!(seen.header("x-groups"), Some("readers"));
    let es = s
        .idp
        .mint(claims(&s), TokenHeader::es256().typ("application/at+jwt"));
    assert_eq!(call(&s, "/api/orders", &es).await.status, 200);
}

#[tokio::test]
async fn no_token_gets_a_bare_bearer_challenge() {
    let s = setup().await;
    let r = s.gw.get("/api/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"http://127.0.0.1:{}\"", s.gw.port).as_str())
    );
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_refused() {
    let s = setup().await;
    refused(
        &s,
        &s.idp.mint(
            with(claims(&s), "aud", json!("https://other.api")),
            at_jwt(),
        ),
        "token-audience-mismatch",
    )
    .await;
    refused(
        &s,
        &s.idp.mint(with(claims(&s), "aud", Value::Null), at_jwt()),
        "token-audience-mismatch",
    )
    .await;
    refused(
        &s,
        &s.idp.mint(
            with(claims(&s), "iss", json!("https://evil.example")),
            at_jwt(),
        ),
        "token-issuer-mismatch",
    )
    .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let s = setup().await;
    refused(
        &s,
        &s.idp
            .mint(with(claims(&s), "exp", json!(now() - 600)), at_jwt()),
        "token-expired",
    )
    .await;
    refused(
        &s,
        &s.idp
            .mint(with(claims(&s), "nbf", json!(now() + 600)), at_jwt()),
        "token-not-yet-valid",
    )
    .await;
}

#[tokio::test]
async fn unsigned_and_symmetric_tokens_are_refused() {
    let s = setup().await;
    refused(
        &s,
        &s.idp.mint(claims(&s), TokenHeader::none().typ("at+jwt")),
        "token-alg-not-allowed",
    )
    .await;
    refused(
        &s,
        &s.idp
            .mint(claims(&s), TokenHeader::hs256_client_secret().typ("at+jwt")),
        "token-alg-not-allowed",
    )
    .await;
    refused(
        &s,
        &s.idp.mint(
            claims(&s),
            TokenHeader::hs256_rsa_public_key().typ("at+jwt"),
        ),
        "token-alg-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn keys_named_by_the_token_itself_are_never_used() {
    let s = setup().await;
    let jku = at_jwt().attacker_key().jku(s.idp.attacker_jwks_url());
    let x5u = at_jwt().attacker_key().x5u(s.idp.attacker_x5u_url());
    for header in [jku, x5u, at_jwt().attacker_jwk(), at_jwt().attacker_x5c()] {
        let t = s.idp.mint(claims(&s), header.clone());
        let r = call(&s, "/api/orders", &t).await;
        assert_eq!(r.status, 401, "{header:?}: {}", r.text());
        assert_eq!(r.json()["error"], "token-signature-invalid", "{header:?}");
    }
    for path in ["/attacker/jwks", "/attacker/cert.pem"] {
        assert_eq!(s.idp.hits(path), 0, "{path} must never be fetched");
    }
    assert_eq!(s.echo.count(), 0);
}

#[tokio::test]
async fn an_id_token_is_not_an_access_token() {
    let s = setup().await;
    // As issued to the gateway: audience is the client, with a nonce.
    let id_token = s
        .idp
        .mint(s.idp.id_token_claims(Some("n-1")), TokenHeader::rs256());
    let r = call(&s, "/either/x", &id_token).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // Even with the API's audience, a nonce marks an ID token.
    let c = with(claims(&s), "nonce", json!("n-1"));
    let r = call(&s, "/either/x", &s.idp.mint(c, TokenHeader::rs256())).await;
    assert_eq!(r.json()["error"], "token-is-id-token");
    assert_eq!(s.echo.count(), 0);
}

#[tokio::test]
async fn at_jwt_is_required_where_configured() {
    let s = setup().await;
    refused(
        &s,
        &s.idp.mint(claims(&s), TokenHeader::rs256()),
        "token-type-invalid",
    )
    .await;
    refused(
        &s,
        &s.idp.mint(claims(&s), TokenHeader::rs256().no_typ()),
        "token-type-invalid",
    )
    .await;
    // Not required on this route.
    let plain = s.idp.mint(claims(&s), TokenHeader::rs256());
    assert_eq!(call(&s, "/either/x", &plain).await.status, 200);
}

#[tokio::test]
async fn malformed_authorization_is_an_invalid_request() {
    let s = setup().await;
    for auth in [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer a.b",
        "Bearer not-a-jwt",
    ] {
        let r =
            s.gw.get(
                "/api/orders",
                &[("Authorization", auth), ("Accept", "application/json")],
            )
            .await;
        assert_eq!(r.status, 401, "{auth}: {}", r.text());
    }
    let t = s.idp.mint(claims(&s), at_jwt());
    let bearer = format!("Bearer {t}");
    let r =
        s.gw.get(
            "/api/orders",
            &[("Authorization", &bearer), ("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_request"));
}

#[tokio::test]
async fn requirements_apply_to_token_claims() {
    let s = setup().await;
    let r = call(&s, "/api/admin/users", &s.idp.mint(claims(&s), at_jwt())).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "group-missing");
    let admin = with(claims(&s), "groups", json!(["admins"]));
    assert_eq!(
        call(&s, "/api/admin/users", &s.idp.mint(admin, at_jwt()))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn login_or_bearer_sends_browsers_to_login_without_a_token() {
    let s = setup().await;
    let r = s.gw.get("/either/page", &[("Accept", "text/html")]).await;
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .contains("/.portcullis/login?rd=%2Feither%2Fpage"));
}
