//! The misbehaving test IdP (`tests/common/test_idp.rs`) checked against itself with a plain
//! HTTP client and jsonwebtoken.
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::test_idp::{Misbehaviour, TestIdp, TestIdpConfig, TokenHeader};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start() -> TestIdp {
    TestIdp::start_with(TestIdpConfig {
        redirect_uris: vec![REDIRECT.into()],
        ..TestIdpConfig::default()
    })
    .await
}

/// Runs `/authorize` for `verifier` and returns the query of the redirect back.
async fn authorize(idp: &TestIdp, http: &reqwest::Client, verifier: &str) -> Vec<(String, String)> {
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let resp = http
        .get(idp.url("/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", &idp.client_id()),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email"),
            ("state", "st&ate=1"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    let url = url::Url::parse(location).unwrap();
    url.query_pairs().into_owned().collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Redeems `code` with client_secret_basic; returns (status, JSON body).
async fn redeem(idp: &TestIdp, http: &reqwest::Client, code: &str, verifier: &str) -> (u16, Value) {
    let resp = http
        .post(idp.url("/token"))
        .basic_auth(idp.client_id(), Some(idp.client_secret()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn jwks(idp: &TestIdp, http: &reqwest::Client) -> JwkSet {
    http.get(idp.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn kid_of(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).unwrap().kid
}

#[tokio::test]
async fn happy_path_then_code_replay() {
    let idp = start().await;
    let http = client();

    let disco: Value = http
        .get(idp.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disco["issuer"], idp.issuer());
    assert_eq!(disco["jwks_uri"], idp.url("/jwks"));
    assert_eq!(
        disco["authorization_response_iss_parameter_supported"],
        true
    );
    assert_eq!(disco["code_challenge_methods_supported"][0], "S256");

    let verifier = "a-verifier-that-is-long-enough-0123456789-abcdefghijk";
    let q = authorize(&idp, &http, verifier).await;
    assert_eq!(param(&q, "state"), Some("st&ate=1"));
    assert_eq!(param(&q, "iss"), Some(idp.issuer()));
    let code = param(&q, "code").unwrap();

    let (status, body) = redeem(&idp, &http, code, verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    let id_token = body["id_token"].as_str().unwrap();
    assert_eq!(kid_of(id_token).as_deref(), Some("rsa-1"));

    let set = jwks(&idp, &http).await;
    let jwk = set.find("rsa-1").unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[idp.client_id()]);
    validation.set_issuer(&[idp.issuer()]);
    let claims =
        jsonwebtoken::decode::<Value>(id_token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["sub"], "user-123");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["groups"], serde_json::json!(["staff", "admins"]));

    let userinfo: Value = http
        .get(idp.url("/userinfo"))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], claims["sub"]);
    assert_eq!(userinfo["email"], "alice@example.com");

    let (status, body) = redeem(&idp, &http, code, verifier).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(idp.hits("/token"), 2);
    assert_eq!(idp.hits("/jwks"), 1);
}

#[tokio::test]
async fn wrong_pkce_verifier_and_wrong_secret_are_refused() {
    let idp = start().await;
    let http = client();
    let verifier = "the-right-verifier-0123456789-0123456789-0123456789";
    let q = authorize(&idp, &http, verifier).await;
    let code = param(&q, "code").unwrap();
    let (status, body) = redeem(
        &idp,
        &http,
        code,
        "the-wrong-verifier-0123456789-0123456789-012",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");

    // client_secret_post with a wrong secret.
    let q = authorize(&idp, &http, verifier).await;
    let resp = http
        .post(idp.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", param(&q, "code").unwrap()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", &idp.client_id()),
            ("client_secret", "not-the-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn unknown_kid_is_published_only_after_rotation() {
    let idp = start().await;
    let http = client();
    idp.set(Misbehaviour::UnknownKid);
    let verifier = "rotation-verifier-0123456789-0123456789-0123456789";
    let q = authorize(&idp, &http, verifier).await;
    let (_, body) = redeem(&idp, &http, param(&q, "code").unwrap(), verifier).await;
    let token = body["id_token"].as_str().unwrap();
    assert_eq!(kid_of(token).as_deref(), Some("rsa-2"));
    assert!(jwks(&idp, &http).await.find("rsa-2").is_none());

    idp.rotate_keys();
    let set = jwks(&idp, &http).await;
    assert!(set.find("rsa-1").is_some());
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[idp.client_id()]);
    validation.set_issuer(&[idp.issuer()]);
    let key = DecodingKey::from_jwk(set.find("rsa-2").unwrap()).unwrap();
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
}

#[tokio::test]
async fn forged_tokens_look_as_intended() {
    let idp = start().await;
    let header_of = |token: &str| -> Value {
        let b64 = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap()
    };
    let claims = idp.id_token_claims(Some("n"));

    let none = idp.mint(claims.clone(), TokenHeader::none());
    assert_eq!(header_of(&none)["alg"], "none");
    assert!(none.ends_with('.'));

    // Key confusion: HS256 keyed with the published key's PEM verifies as such.
    let confused = idp.mint(claims.clone(), TokenHeader::hs256_rsa_public_key());
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[idp.client_id()]);
    let pem = idp.rsa_public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    jsonwebtoken::decode::<Value>(
        &confused,
        &DecodingKey::from_secret(pem.as_bytes()).unwrap(),
        &validation,
    )
    .unwrap();

    // Embedded attacker JWK: valid under that key, under no key of the JWKS.
    let embedded = idp.mint(claims, TokenHeader::rs256().attacker_jwk().typ("at+jwt"));
    let header = jsonwebtoken::decode_header(&embedded).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[idp.client_id()]);
    let attacker = DecodingKey::from_jwk(header.jwk.as_ref().unwrap()).unwrap();
    jsonwebtoken::decode::<Value>(&embedded, &attacker, &validation).unwrap();
    let set: JwkSet = serde_json::from_value(idp.jwks()).unwrap();
    for jwk in set.keys.iter().filter(|k| k.is_supported()) {
        let alg = if jwk.common.key_id.as_deref() == Some("ec-1") {
            Algorithm::ES256
        } else {
            Algorithm::RS256
        };
        let mut v = Validation::new(alg);
        v.set_audience(&[idp.client_id()]);
        let key = DecodingKey::from_jwk(jwk).unwrap();
        assert!(jsonwebtoken::decode::<Value>(&embedded, &key, &v).is_err());
    }
}
