mod common;

// The test OpenID provider (`tests/oidc-provider/server.mjs`) and the test browser on
// their own, without the gateway: discovery, a full code + PKCE login, tokens and
// their claims, wrong passwords, step-up, refresh tokens and logout.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::browser::{Browser, Page};
use common::oidc_provider::{OidcClientSpec, OidcProvider};
use common::Echo;
use sha2::{Digest, Sha256};
use std::time::Duration;

const CLIENT_ID: &str = "harness";
const CLIENT_SECRET: &str = "harness-secret";
/// Nothing listens here: the tests only read the provider's redirects to it.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
const POST_LOGOUT_URI: &str = "http://127.0.0.1:9/logged-out";
const LOA1: &str = "urn:portcullis:loa:1";
const LOA2: &str = "urn:portcullis:loa:2";

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// One authorization request's secrets, as a relying party keeps them.
struct AuthRequest {
    url: String,
    state: String,
    nonce: String,
    verifier: String,
}

fn auth_request(provider: &OidcProvider, scope: &str, extra: &[(&str, &str)]) -> AuthRequest {
    let state = random_token();
    let nonce = random_token();
    let verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(&format!("{}/auth", provider.issuer)).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(extra);
    AuthRequest {
        url: url.into(),
        state,
        nonce,
        verifier,
    }
}

fn client() -> OidcClientSpec {
    OidcClientSpec::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
}

fn param(page: &Page, name: &str) -> Option<String> {
    page.location_params()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Asserts `page` sends the browser to the client's redirect_uri with a code, the
/// request's state and the issuer; returns the code.
fn callback_code(page: &Page, req: &AuthRequest, provider: &OidcProvider) -> String {
    assert_eq!(
        page.status,
        303,
        "expected the redirect to the client: {page:?}\n{}",
        provider.logs()
    );
    let location = page.location().unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT_URI}?")),
        "{location}"
    );
    assert_eq!(
        param(page, "state").as_deref(),
        Some(req.state.as_str()),
        "{location}"
    );
    assert_eq!(
        param(page, "iss").as_deref(),
        Some(provider.issuer.as_str()),
        "{location}"
    );
    param(page, "code").unwrap_or_else(|| panic!("no code in {location}"))
}

/// Redeems `code` with client_secret_basic and the PKCE verifier; returns the token
/// response.
async fn redeem(provider: &OidcProvider, code: &str, verifier: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/token", provider.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "token endpoint: {body}\n{}", provider.logs());
    body
}

/// The ID token's payload, signature not checked.
fn id_token_claims(tokens: &serde_json::Value) -> serde_json::Value {
    let jwt = tokens["id_token"].as_str().expect("an id_token");
    let payload = jwt.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Signs in at the provider from a fresh authorization request and redeems the code.
async fn log_in(
    provider: &OidcProvider,
    browser: &Browser,
    scope: &str,
    login: &str,
    password: &str,
    otp: Option<&str>,
) -> (AuthRequest, serde_json::Value) {
    let req = auth_request(provider, scope, &[]);
    let start = browser.get(&req.url).await;
    let done = browser
        .sign_in_at_provider(start, &provider.issuer, login, password, otp)
        .await;
    let code = callback_code(&done, &req, provider);
    let tokens = redeem(provider, &code, &req.verifier).await;
    (req, tokens)
}

#[tokio::test]
async fn discovery_and_code_flow_with_pkce_yield_an_id_token_with_all_claims() {
    let provider = OidcProvider::start(vec![client()]).await;
    let browser = Browser::new();

    let discovery = browser.get(&provider.discovery_url()).await;
    assert_eq!(discovery.status, 200);
    let discovery = discovery.json();
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        true
    );
    let methods = discovery["code_challenge_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.iter().any(|m| m == "S256"), "{methods:?}");

    let (req, tokens) = log_in(
        &provider,
        &browser,
        "openid email profile groups",
        "alice",
        "wonderland",
        None,
    )
    .await;
    assert!(tokens["access_token"].is_string(), "{tokens}");
    let claims = id_token_claims(&tokens);
    assert_eq!(claims["iss"], provider.issuer.as_str());
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], serde_json::json!(["staff", "admins"]));
    assert_eq!(claims["acr"], LOA1);
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert!(claims["auth_time"].is_u64(), "{claims}");
    assert_eq!(claims["nonce"], req.nonce.as_str());
}

#[tokio::test]
async fn wrong_password_shows_the_form_again_and_never_redirects_to_the_client() {
    let provider = OidcProvider::start(vec![client()]).await;
    let browser = Browser::new();
    let req = auth_request(&provider, "openid", &[]);

    let authorize = browser.get(&req.url).await;
    assert_eq!(authorize.status, 303, "{authorize:?}");
    let form_page = browser.follow(authorize, 5).await;
    assert_eq!(form_page.status, 200);
    let form = form_page.form("data-portcullis-login").expect("login form");

    let refused = browser
        .post_form(&form.action, &[("login", "alice"), ("password", "nope")])
        .await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(refused.location(), None);
    assert!(
        refused.body.contains("data-portcullis-error"),
        "{}",
        refused.body
    );
    assert!(refused.form("data-portcullis-login").is_some());

    // The same through the helper: it stops on the form shown again.
    let again = browser
        .sign_in_at_provider(
            browser.get(&req.url).await,
            &provider.issuer,
            "bob",
            "wonderland",
            None,
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.url.starts_with(&provider.issuer), "{}", again.url);
    assert_eq!(again.location(), None);
    assert!(again.form("data-portcullis-login").is_some());
}

#[tokio::test]
async fn otp_123456_yields_acr_loa2_and_amr_pwd_otp() {
    let provider = OidcProvider::start(vec![client()]).await;
    let browser = Browser::new();
    let (_, tokens) = log_in(
        &provider,
        &browser,
        "openid email",
        "bob",
        "builder",
        Some("123456"),
    )
    .await;
    let claims = id_token_claims(&tokens);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["email"], "bob@partner.example");
    assert_eq!(claims["email_verified"], false);
    assert_eq!(claims["acr"], LOA2);
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
}

#[tokio::test]
async fn acr_values_loa2_prompts_login_again_over_a_loa1_session() {
    let provider = OidcProvider::start(vec![client()]).await;
    let browser = Browser::new();
    log_in(&provider, &browser, "openid", "alice", "wonderland", None).await;

    // Same session, nothing more asked: single sign-on, straight back to the client.
    let sso = auth_request(&provider, "openid", &[]);
    let page = browser.get(&sso.url).await;
    callback_code(&page, &sso, &provider);

    // Asking for loa:2 shows the login form again; with the OTP the token says loa:2.
    let step_up = auth_request(&provider, "openid", &[("acr_values", LOA2)]);
    let page = browser.get(&step_up.url).await;
    let form_page = browser.follow(page, 5).await;
    assert!(
        form_page.form("data-portcullis-login").is_some(),
        "{form_page:?}"
    );
    let done = browser
        .sign_in_at_provider(
            form_page,
            &provider.issuer,
            "alice",
            "wonderland",
            Some("123456"),
        )
        .await;
    let code = callback_code(&done, &step_up, &provider);
    let claims = id_token_claims(&redeem(&provider, &code, &step_up.verifier).await);
    assert_eq!(claims["acr"], LOA2);

    // Essential acr through the claims parameter, now satisfied by the session: no prompt.
    let claims_param =
        serde_json::json!({"id_token": {"acr": {"essential": true, "values": [LOA2]}}});
    let essential = auth_request(
        &provider,
        "openid",
        &[("claims", &claims_param.to_string())],
    );
    let page = browser.get(&essential.url).await;
    callback_code(&page, &essential, &provider);
}

#[tokio::test]
async fn offline_access_yields_a_refresh_token_that_refreshes() {
    let provider = OidcProvider::start(vec![client()]).await;
    let browser = Browser::new();
    let (_, tokens) = log_in(
        &provider,
        &browser,
        "openid email offline_access",
        "alice",
        "wonderland",
        None,
    )
    .await;
    let refresh = tokens["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token: {tokens}"));

    let resp = reqwest::Client::new()
        .post(format!("{}/token", provider.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let refreshed: serde_json::Value = resp.json().await.unwrap();
    assert!(refreshed["access_token"].is_string(), "{refreshed}");
    assert_eq!(id_token_claims(&refreshed)["sub"], "alice");

    // Without offline_access there is none.
    let (_, tokens) = log_in(&provider, &browser, "openid", "alice", "wonderland", None).await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
}

#[tokio::test]
async fn rp_initiated_logout_posts_a_backchannel_logout_token_to_a_loopback_client() {
    let receiver = Echo::start().await;
    let mut spec = client();
    spec.post_logout_redirect_uris = vec![POST_LOGOUT_URI.to_string()];
    spec.backchannel_logout_uri = Some(format!("http://{}/backchannel-logout", receiver.addr));
    let provider = OidcProvider::start(vec![spec]).await;
    let browser = Browser::new();
    let (_, tokens) = log_in(&provider, &browser, "openid", "alice", "wonderland", None).await;
    let id_token = tokens["id_token"].as_str().unwrap();

    let mut end = reqwest::Url::parse(&format!("{}/session/end", provider.issuer)).unwrap();
    end.query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", POST_LOGOUT_URI)
        .append_pair("state", "bye");
    let confirm_page = browser.get(end.as_str()).await;
    assert_eq!(confirm_page.status, 200, "{confirm_page:?}");

    let done = browser.confirm_logout_at_provider(&confirm_page).await;
    assert_eq!(done.status, 303, "{done:?}\n{}", provider.logs());
    assert_eq!(
        done.location().as_deref(),
        Some(format!("{POST_LOGOUT_URI}?state=bye").as_str())
    );
    // The provider awaits the back-channel call before answering the confirmation.
    let calls: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.target == "/backchannel-logout")
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}\n{}", provider.logs());
    assert_eq!(calls[0].method, "POST");
    // Its stderr (read by another thread) says the client answered.
    let logged = common::eventually(Duration::from_secs(5), || async {
        provider
            .logs()
            .contains("backchannel.success")
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", provider.logs());

    // The provider session is gone: the next authorization asks for a login again.
    let req = auth_request(&provider, "openid", &[]);
    let page = browser.follow(browser.get(&req.url).await, 5).await;
    assert!(page.form("data-portcullis-login").is_some(), "{page:?}");
}
