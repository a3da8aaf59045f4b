//! The identity lifecycle end to end against two real OpenID providers (`oidc-provider`
//! from npm, run by Node from `tests/oidc-provider`) behind one gateway: the provider
//! chooser and home-realm discovery, users namespaced by provider, RP-initiated logout,
//! back-channel logout sent by the provider, and the refresh of a forwarded access token
//! (refused by the provider, or with the provider gone). Logout and refresh run with
//! sessions in memory and in a real `redis-server` (tokens sealed with a configured key).
//!
//! Every test starts its own pair of providers: `customers` (no domains, "Shop account")
//! and `partners` (domain partner.example, "Partner SSO"). Both know the same users
//! (alice, bob), so the same `sub` arrives from two issuers.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::browser::{Browser, Page};
use common::oidc_provider::{fingerprint, OidcClientSpec, OidcProvider};
use common::redis::RedisServer;
use common::{free_port, series_value, upstream_app, Echo, Gateway};
use std::time::Duration;

const CUSTOMERS_SECRET: &str = "customers-client-secret-0123456789";
const PARTNERS_SECRET: &str = "partners-client-secret-0123456789ab";
const ADMIN_TOKEN: &str = "lifecycle-admin-token-0123456789abcdef";

/// `/account` accepts both providers (so its login goes through the chooser);
/// `/tokens` only `customers`, and receives the session's access token.
const POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers:
      X-User: "{user}"
      X-Provider: "{provider}"
      X-Sub: "{sub}"
  - name: tokens
    match: { path_prefix: /tokens }
    upstream: app
    auth: login
    providers: [customers]
    forward_access_token: true
    headers: { X-User: "{user}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// Two providers, a gateway in front of an echo upstream, and the gateway's addresses
/// registered at both providers (redirect, post-logout redirect, back-channel logout).
struct Lifecycle {
    customers: OidcProvider,
    partners: OidcProvider,
    gw: Gateway,
    echo: Echo,
    _redis: Option<RedisServer>,
}

/// Where the gateway keeps sessions.
#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    /// A real `redis-server`, tokens sealed with a configured key.
    Redis,
}

/// The client a provider knows the gateway as; the gateway's port is chosen first.
fn client(id: &str, secret: &str, port: u16) -> serde_json::Value {
    let base = format!("http://127.0.0.1:{port}");
    OidcClientSpec {
        client_id: id.to_string(),
        client_secret: secret.to_string(),
        redirect_uris: vec![format!("{base}/.portcullis/callback")],
        post_logout_redirect_uris: vec![format!("{base}/")],
        backchannel_logout_uri: Some(format!("{base}/.portcullis/backchannel-logout")),
    }
    .to_json()
}

impl Lifecycle {
    /// Waits for `line` in the customers provider's log (read from its output as it
    /// comes, so a line may lag the response that caused it).
    async fn wait_provider_log(&self, line: &str) {
        let seen = common::eventually(Duration::from_secs(10), || async {
            self.customers.logs().contains(line).then_some(())
        })
        .await;
        assert!(
            seen.is_some(),
            "{line:?} not in the provider's log:\n{}\n{}",
            self.customers.logs(),
            self.gw.logs()
        );
    }

    /// Starts both providers (at once) and the gateway, sessions in memory.
    /// `customers_access_ttl` sets the lifetime (seconds) of access tokens issued by
    /// `customers`.
    async fn start(customers_access_ttl: Option<u64>) -> Lifecycle {
        Self::start_with(customers_access_ttl, Store::Memory).await
    }

    async fn start_with(customers_access_ttl: Option<u64>, store: Store) -> Lifecycle {
        let echo = Echo::start().await;
        let port = free_port();
        let admin_port = free_port();
        let mut customers_config = serde_json::json!({
            "clients": [client("gw-customers", CUSTOMERS_SECRET, port)],
        });
        if let Some(ttl) = customers_access_ttl {
            customers_config["accessTokenTtl"] = ttl.into();
        }
        let partners_config = serde_json::json!({
            "clients": [client("gw-partners", PARTNERS_SECRET, port)],
        });
        let (customers, partners) = tokio::join!(
            OidcProvider::start_with_config(customers_config),
            OidcProvider::start_with_config(partners_config),
        );

        let dir = tempfile::tempdir().unwrap();
        let redis = match store {
            Store::Memory => None,
            Store::Redis => Some(RedisServer::start().await),
        };
        let session = match &redis {
            None => "session:\n  store: { type: memory }\n".to_string(),
            Some(r) => {
                let key: String = rand::random::<[u8; 32]>()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                std::fs::write(dir.path().join("sealing-key"), key).unwrap();
                format!(
                    "session:\n  store: {{ type: redis, url: \"{}\", key_prefix: \"lifecycle:\" }}\n  encryption_keys: [ {{ file: sealing-key }} ]\n",
                    r.url()
                )
            }
        };
        std::fs::write(dir.path().join("customers-secret"), CUSTOMERS_SECRET).unwrap();
        std::fs::write(dir.path().join("partners-secret"), PARTNERS_SECRET).unwrap();
        let admin_token = dir.path().join("admin-token");
        std::fs::write(&admin_token, ADMIN_TOKEN).unwrap();
        let yaml = format!(
            "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
             public_url: \"http://127.0.0.1:{port}\"\n\
             admin: {{ address: \"127.0.0.1:{admin_port}\", token: {{ file: \"{token}\" }} }}\n\
             threads: 1\n\
             policies: policies/\n\
             {session}\
             providers:\n\
             \x20 - id: customers\n\
             \x20   issuer: \"{customers}\"\n\
             \x20   client_id: gw-customers\n\
             \x20   client_secret: {{ file: customers-secret }}\n\
             \x20   display_name: \"Shop account\"\n\
             \x20   scopes: [openid, email, profile, offline_access]\n\
             \x20 - id: partners\n\
             \x20   issuer: \"{partners}\"\n\
             \x20   client_id: gw-partners\n\
             \x20   client_secret: {{ file: partners-secret }}\n\
             \x20   display_name: \"Partner SSO\"\n\
             \x20   domains: [partner.example]\n\
             \x20   scopes: [openid, email, profile]\n\
             logout:\n  redirect: /\n\
             {up}",
            token = admin_token.display(),
            customers = customers.issuer,
            partners = partners.issuer,
            up = upstream_app(echo.addr),
        );
        let gw = Gateway::start_in(dir, &yaml, port, admin_port, &[("routes.yaml", POLICY)]).await;
        common::identity::wait_discovered(&gw).await;
        Lifecycle {
            customers,
            partners,
            gw,
            echo,
            _redis: redis,
        }
    }

    /// Signs in at `op` from `start` (a page that leads there) and follows the way back
    /// through the gateway's callback; returns where the browser lands.
    async fn sign_in_from(
        &self,
        b: &Browser,
        start: Page,
        op: &OidcProvider,
        login: &str,
        password: &str,
    ) -> Page {
        let back = b
            .sign_in_at_provider(start, &op.issuer, login, password, None)
            .await;
        let to = back.location().unwrap_or_else(|| {
            panic!(
                "the provider did not send us back: {} {}\n{}",
                back.status,
                back.body,
                op.logs()
            )
        });
        assert!(
            to.starts_with(&self.gw.url("/.portcullis/callback?")),
            "{to}"
        );
        let landed = b.follow(b.get(&to).await, 5).await;
        assert_eq!(
            landed.status,
            200,
            "{} {}\n{}",
            landed.url,
            landed.body,
            self.gw.logs()
        );
        landed
    }

    /// Signs in at the provider `id` (`customers` or `partners`) by naming it outright,
    /// returning to `rd`.
    async fn sign_in(&self, b: &Browser, id: &str, rd: &str, login: &str, password: &str) {
        let op = self.provider(id);
        let start = b
            .get(
                &self
                    .gw
                    .url(&format!("/.portcullis/login?provider={id}&rd={rd}")),
            )
            .await;
        assert_eq!(start.status, 302, "{}", start.body);
        let landed = self.sign_in_from(b, start, op, login, password).await;
        assert_eq!(landed.url, self.gw.url(rd));
    }

    fn provider(&self, id: &str) -> &OidcProvider {
        match id {
            "customers" => &self.customers,
            "partners" => &self.partners,
            other => panic!("no provider {other}"),
        }
    }

    /// One metric series from the admin listener (which needs the admin token).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let r = self.admin("GET", "/metrics").await;
        assert_eq!(r.status, 200, "{}", r.text());
        series_value(&r.text(), name, labels)
    }

    /// `portcullis_token_refreshes_total` at `customers` with this result.
    async fn refreshes(&self, result: &str) -> Option<f64> {
        self.metric(
            "portcullis_token_refreshes_total",
            &[("provider", "customers"), ("result", result)],
        )
        .await
    }

    async fn admin(&self, method: &str, path: &str) -> common::Response {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.gw
            .admin(method, path, &[("Authorization", auth.as_str())])
            .await
    }

    /// The gateway sends this browser to log in again for `/account`.
    async fn assert_signed_out(&self, b: &Browser, why: &str) {
        let page = b.get(&self.gw.url("/account")).await;
        assert_eq!(page.status, 302, "{why}: {} {}", page.url, page.body);
        let to = page.location().unwrap();
        assert!(
            to.starts_with(&self.gw.url("/.portcullis/login?")),
            "{why}: {to}"
        );
    }

    /// The gateway lets this browser into `/account` as `user`.
    async fn assert_signed_in_as(&self, b: &Browser, user: &str) {
        let page = b.get(&self.gw.url("/account")).await;
        assert_eq!(page.status, 200, "{user}: {}", page.body);
        assert_eq!(self.echo.last().header("x-user"), Some(user));
    }
}

fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .origin()
        .ascii_serialization()
}

/// The payload of a JWT, signature not checked.
fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The gateway's chooser page for `/account/profile`, reached as a browser reaches it.
async fn chooser(s: &Lifecycle, b: &Browser) -> Page {
    let start = b.get(&s.gw.url("/account/profile")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    b.get(&start.location().unwrap()).await
}

#[tokio::test]
async fn a_route_with_two_providers_offers_a_chooser_whose_button_signs_in_there() {
    let s = Lifecycle::start(None).await;
    let b = Browser::new();

    let start = b.get(&s.gw.url("/account/profile")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let to = start.location().unwrap();
    assert!(to.starts_with(&s.gw.url("/.portcullis/login?")), "{to}");
    let params = start.location_params();
    assert_eq!(param(&params, "rd").as_deref(), Some("/account/profile"));
    assert_eq!(param(&params, "route").as_deref(), Some("account"));
    assert_eq!(param(&params, "provider"), None, "{to}");

    let page = b.get(&to).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    let buttons = page.buttons("by-provider");
    let expected =
        |id: &str, label: &str| ("provider".to_string(), id.to_string(), label.to_string());
    assert_eq!(
        buttons,
        vec![
            expected("customers", "Shop account"),
            expected("partners", "Partner SSO")
        ],
        "{}",
        page.body
    );
    let by_provider = page.form("by-provider").expect("the providers' form");
    assert!(
        by_provider
            .fields
            .contains(&("rd".to_string(), "/account/profile".to_string())),
        "{:?}",
        by_provider.fields
    );
    let by_email = page.form("by-email").expect("the email form");
    assert!(
        by_email.fields.iter().any(|(k, _)| k == "email"),
        "{:?}",
        by_email.fields
    );
    assert!(
        by_email
            .fields
            .contains(&("rd".to_string(), "/account/profile".to_string())),
        "{:?}",
        by_email.fields
    );

    // A provider the route does not accept cannot be named.
    let refused = b
        .get(
            &s.gw
                .url("/.portcullis/login?route=tokens&provider=partners&rd=/tokens"),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("provider-unknown"),
        "{}",
        refused.body
    );

    // Pressing "Partner SSO".
    let go = b
        .get(&by_provider.get_url(&[("provider", "partners")]))
        .await;
    assert_eq!(go.status, 302, "{}", go.body);
    assert_eq!(origin(&go.location().unwrap()), s.partners.issuer);
    let landed = s
        .sign_in_from(&b, go, &s.partners, "alice", "wonderland")
        .await;
    assert_eq!(landed.url, s.gw.url("/account/profile"));
    let seen = s.echo.last();
    assert_eq!(seen.target, "/account/profile");
    assert_eq!(seen.header("x-user"), Some("partners:alice"));
    assert_eq!(seen.header("x-provider"), Some("partners"));
    assert_eq!(seen.header("x-sub"), Some("alice"));
    let completed = "portcullis_login_completed_total";
    assert_eq!(
        s.metric(completed, &[("journey", "login"), ("provider", "partners")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        s.metric(
            completed,
            &[("journey", "login"), ("provider", "customers")]
        )
        .await,
        None
    );
}

#[tokio::test]
async fn an_email_at_a_partner_domain_goes_to_that_provider_with_a_login_hint_and_others_to_the_general_one(
) {
    let s = Lifecycle::start(None).await;

    // someone@partner.example: straight to `partners`, the address as login_hint.
    let b = Browser::new();
    let page = chooser(&s, &b).await;
    let by_email = page.form("by-email").expect("the email form");
    // Typing an address and pressing Continue.
    let email_url = |email: &str| {
        let mut form = by_email.clone();
        form.fields.retain(|(k, _)| k != "email");
        form.get_url(&[("email", email)])
    };
    let go = b.get(&email_url("someone@partner.example")).await;
    assert_eq!(go.status, 302, "{}", go.body);
    let auth = go.location().unwrap();
    assert!(
        auth.starts_with(&format!("{}/auth?", s.partners.issuer)),
        "{auth}"
    );
    let params = go.location_params();
    assert_eq!(
        param(&params, "login_hint").as_deref(),
        Some("someone@partner.example"),
        "{auth}"
    );
    assert_eq!(param(&params, "client_id").as_deref(), Some("gw-partners"));
    // The provider got it: its login form is prefilled with the hint.
    let form_page = b.follow(b.get(&auth).await, 5).await;
    let login = form_page
        .form("data-portcullis-login")
        .unwrap_or_else(|| panic!("no login form: {form_page:?}"));
    assert!(
        login
            .fields
            .contains(&("login".to_string(), "someone@partner.example".to_string())),
        "{:?}",
        login.fields
    );

    // The domain is matched without regard to case.
    let b = Browser::new();
    chooser(&s, &b).await;
    let go = b.get(&email_url("Bob@Partner.Example")).await;
    assert_eq!(go.status, 302, "{}", go.body);
    assert_eq!(origin(&go.location().unwrap()), s.partners.issuer);
    // ...and that login completes at `partners`.
    s.sign_in_from(&b, go, &s.partners, "bob", "builder").await;
    assert_eq!(s.echo.last().header("x-user"), Some("partners:bob"));

    // Not an address: the chooser again, saying so.
    let b = Browser::new();
    let again = b.get(&email_url("someone-at-partner.example")).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.contains("role=\"alert\""), "{}", again.body);
    assert_eq!(again.buttons("by-provider").len(), 2, "{}", again.body);

    // An address at a domain nobody claims: the one provider without domains.
    let b = Browser::new();
    chooser(&s, &b).await;
    let go = b.get(&email_url("carol@example.org")).await;
    assert_eq!(go.status, 302, "{}", go.body);
    let auth = go.location().unwrap();
    assert!(
        auth.starts_with(&format!("{}/auth?", s.customers.issuer)),
        "{auth}"
    );
    let params = go.location_params();
    assert_eq!(param(&params, "client_id").as_deref(), Some("gw-customers"));
    assert_eq!(
        param(&params, "login_hint").as_deref(),
        Some("carol@example.org")
    );
}

#[tokio::test]
async fn the_same_sub_from_two_providers_is_two_users_with_separate_sessions() {
    let s = Lifecycle::start(None).await;
    let at_customers = Browser::new();
    let at_partners = Browser::new();
    s.sign_in(
        &at_customers,
        "customers",
        "/account",
        "alice",
        "wonderland",
    )
    .await;
    assert_eq!(s.echo.last().header("x-user"), Some("customers:alice"));
    s.sign_in(&at_partners, "partners", "/account", "alice", "wonderland")
        .await;
    assert_eq!(s.echo.last().header("x-user"), Some("partners:alice"));

    let userinfo = at_partners
        .get_with(
            &s.gw.url("/.portcullis/userinfo"),
            &[("Accept", "application/json")],
        )
        .await
        .json();
    assert_eq!(userinfo["user"], "partners:alice");
    assert_eq!(userinfo["sub"], "alice");

    // Each lists only its own session.
    let customers_list = own_sessions(&s, &at_customers).await;
    let partners_list = own_sessions(&s, &at_partners).await;
    assert_eq!(
        customers_list["sessions"].as_array().unwrap().len(),
        1,
        "{customers_list}"
    );
    assert_eq!(
        partners_list["sessions"].as_array().unwrap().len(),
        1,
        "{partners_list}"
    );
    let customers_session = customers_list["sessions"][0]["id"].as_str().unwrap();
    let partners_csrf = partners_list["csrf"].as_str().unwrap();

    // partners:alice cannot end customers:alice's session by its id...
    let refused = at_partners
        .post_form(
            &s.gw.url("/.portcullis/sessions"),
            &[
                ("csrf", partners_csrf),
                ("action", "end"),
                ("session", customers_session),
            ],
        )
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    assert!(refused.body.contains("session-unknown"), "{}", refused.body);
    // ...nor as one of "all other sessions".
    let others = at_partners
        .post_form(
            &s.gw.url("/.portcullis/sessions"),
            &[("csrf", partners_csrf), ("action", "end-others")],
        )
        .await;
    assert_eq!(others.status, 303, "{}", others.body);
    s.assert_signed_in_as(&at_customers, "customers:alice")
        .await;
    s.assert_signed_in_as(&at_partners, "partners:alice").await;

    // The admin API names users by provider too.
    let r = s
        .admin("GET", "/sessions?provider=customers&sub=alice")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"], "customers:alice");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["sessions"][0]["provider"], "customers");
    let r = s
        .admin("DELETE", "/sessions?provider=partners&sub=alice")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ended"], 1);
    s.assert_signed_out(&at_partners, "partners:alice was ended")
        .await;
    s.assert_signed_in_as(&at_customers, "customers:alice")
        .await;
}

/// GET /.portcullis/sessions as JSON.
async fn own_sessions(s: &Lifecycle, b: &Browser) -> serde_json::Value {
    let page = b
        .get_with(
            &s.gw.url("/.portcullis/sessions"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.json()
}

#[tokio::test]
async fn logout_needs_the_csrf_token_then_ends_the_session_here_and_at_the_provider() {
    rp_initiated_logout(Lifecycle::start(None).await).await;
}

#[tokio::test]
async fn rp_initiated_logout_works_with_sessions_in_redis() {
    rp_initiated_logout(Lifecycle::start_with(None, Store::Redis).await).await;
}

/// RP-initiated logout: CSRF, the gateway session, the provider session, the other provider untouched.
async fn rp_initiated_logout(s: Lifecycle) {
    let b = Browser::new();
    s.sign_in(&b, "customers", "/account", "alice", "wonderland")
        .await;
    let partner = Browser::new();
    s.sign_in(&partner, "partners", "/account", "alice", "wonderland")
        .await;

    let confirm = b.get(&s.gw.url("/.portcullis/logout")).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let form = confirm
        .form("method=\"post\"")
        .unwrap_or_else(|| panic!("no logout form: {}", confirm.body));
    assert_eq!(form.action, s.gw.url("/.portcullis/logout"));
    let csrf = form
        .fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.clone())
        .expect("a csrf field");
    assert!(!csrf.is_empty());

    // Without the token (a forged cross-site form): refused, still signed in.
    let forged = b.post_form(&form.action, &[]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("csrf-invalid"), "{}", forged.body);
    let wrong = b
        .post_form(&form.action, &[("csrf", "not-the-token")])
        .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    s.assert_signed_in_as(&b, "customers:alice").await;

    let out = b.post_form(&form.action, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    let to = out.location().unwrap();
    let discovery = b.get(&s.customers.discovery_url()).await.json();
    let end_session = discovery["end_session_endpoint"].as_str().unwrap();
    assert!(to.starts_with(&format!("{end_session}?")), "{to}");
    let params = out.location_params();
    assert_eq!(param(&params, "client_id").as_deref(), Some("gw-customers"));
    assert_eq!(
        param(&params, "post_logout_redirect_uri"),
        Some(s.gw.url("/"))
    );
    let hint = param(&params, "id_token_hint").expect("an id_token_hint");
    let hint = jwt_claims(&hint);
    assert_eq!(hint["iss"], s.customers.issuer.as_str());
    assert_eq!(hint["sub"], "alice");
    assert_eq!(hint["aud"], "gw-customers");
    // The gateway session is gone at once, before the provider is even asked.
    s.assert_signed_out(&b, "after POST /.portcullis/logout")
        .await;

    // At the provider: confirm, and land where the gateway asked.
    let provider_page = b.get(&to).await;
    assert_eq!(
        provider_page.status,
        200,
        "{}\n{}",
        provider_page.body,
        s.customers.logs()
    );
    let done = b.confirm_logout_at_provider(&provider_page).await;
    assert_eq!(done.status, 303, "{done:?}\n{}", s.customers.logs());
    assert_eq!(done.location(), Some(s.gw.url("/")));
    let home = b.get(&s.gw.url("/")).await;
    assert_eq!(home.status, 200);

    // The provider session ended too: logging in again shows the provider's form.
    let again = b
        .get(
            &s.gw
                .url("/.portcullis/login?provider=customers&rd=/account"),
        )
        .await;
    assert_eq!(again.status, 302, "{}", again.body);
    let page = b.follow(again, 5).await;
    assert!(
        page.form("data-portcullis-login").is_some(),
        "expected the provider's login form, got {} {}",
        page.url,
        page.status
    );
    assert_eq!(
        s.metric("portcullis_sessions_ended_total", &[("reason", "logout")])
            .await,
        Some(1.0)
    );
    // The provider told the gateway too (back-channel, for a session already ended
    // here): a valid logout token, answered 200.
    s.wait_provider_log("backchannel.success gw-customers")
        .await;
    assert_eq!(
        s.metric(
            "portcullis_backchannel_logouts_total",
            &[("provider", "customers"), ("result", "success")]
        )
        .await,
        Some(1.0),
        "{}",
        s.gw.logs()
    );

    // The same alice at `partners` was not signed out; her logout (asked for as JSON)
    // leads to her own provider.
    s.assert_signed_in_as(&partner, "partners:alice").await;
    let csrf = partner
        .get(&s.gw.url("/.portcullis/logout"))
        .await
        .form("method=\"post\"")
        .and_then(|f| f.fields.into_iter().find(|(k, _)| k == "csrf"))
        .map(|(_, v)| v)
        .expect("a csrf field");
    let out = partner
        .post_form_with(
            &s.gw.url("/.portcullis/logout"),
            &[("csrf", &csrf)],
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let v = out.json();
    assert_eq!(v["result"], "signed-out");
    let to = v["location"].as_str().unwrap();
    let end_session = b.get(&s.partners.discovery_url()).await.json()["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(to.starts_with(&format!("{end_session}?")), "{to}");
    assert!(to.contains("client_id=gw-partners"), "{to}");
    s.assert_signed_out(&partner, "after the JSON logout").await;
}

#[tokio::test]
async fn a_logout_at_the_provider_ends_the_gateway_session_through_the_back_channel() {
    back_channel_logout(Lifecycle::start(None).await).await;
}

#[tokio::test]
async fn a_back_channel_logout_ends_a_session_kept_in_redis() {
    back_channel_logout(Lifecycle::start_with(None, Store::Redis).await).await;
}

/// Logout at the provider, delivered to the gateway by back-channel.
async fn back_channel_logout(s: Lifecycle) {
    let alice = Browser::new();
    let bob = Browser::new();
    s.sign_in(&alice, "customers", "/account", "alice", "wonderland")
        .await;
    s.sign_in(&bob, "customers", "/account", "bob", "builder")
        .await;
    s.assert_signed_in_as(&alice, "customers:alice").await;

    // Alice signs out at the provider itself, not through the gateway.
    let page = alice
        .get(&format!("{}/session/end", s.customers.issuer))
        .await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.customers.logs());
    let done = alice.confirm_logout_at_provider(&page).await;
    assert_eq!(done.status, 303, "{done:?}\n{}", s.customers.logs());
    // The provider posts the logout token before it answers the confirmation.
    s.wait_provider_log("backchannel.success gw-customers")
        .await;

    s.assert_signed_out(&alice, "after the back-channel logout")
        .await;
    assert_eq!(
        s.metric(
            "portcullis_backchannel_logouts_total",
            &[("provider", "customers"), ("result", "success")]
        )
        .await,
        Some(1.0),
        "{}",
        s.gw.logs()
    );
    assert_eq!(
        s.metric(
            "portcullis_sessions_ended_total",
            &[("reason", "back-channel")]
        )
        .await,
        Some(1.0)
    );
    // Only the session the token named: bob's, at the same provider, lives on.
    s.assert_signed_in_as(&bob, "customers:bob").await;
}

// Refresh. The gateway refreshes an access token 60 s before it expires, or half-way
// through its life when it lives less than 2 minutes. The binary runs on the real clock
// and the provider dates its tokens by it too, so these tests give `customers` access
// tokens of a few seconds and poll (a condition, bounded) for the refresh instead of
// moving a clock.

/// Access tokens from `customers` live this long (seconds) in the refresh tests: due
/// for refresh after 1 s.
const SHORT_TTL: u64 = 2;
/// Bound for waiting on a refresh (or its failure) that is due within seconds.
const REFRESH_LIMIT: Duration = Duration::from_secs(20);
/// Pause between polling requests.
const POLL: Duration = Duration::from_millis(100);

#[tokio::test]
async fn a_forwarded_access_token_about_to_expire_is_refreshed_before_the_request() {
    refresh_before_expiry(Lifecycle::start(Some(SHORT_TTL)).await).await;
}

#[tokio::test]
async fn a_forwarded_access_token_kept_sealed_in_redis_is_refreshed_before_the_request() {
    refresh_before_expiry(Lifecycle::start_with(Some(SHORT_TTL), Store::Redis).await).await;
}

/// Login, then requests to the forwarding route until the upstream has received two
/// tokens from refresh grants; then logout with the refreshed ID token as hint.
async fn refresh_before_expiry(s: Lifecycle) {
    let b = Browser::new();
    let start = b.get(&s.gw.url("/tokens")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    assert_eq!(
        param(&start.location_params(), "provider").as_deref(),
        Some("customers"),
        "a route with one provider logs in there"
    );
    let auth = b.get(&start.location().unwrap()).await;
    assert_eq!(auth.status, 302, "{}", auth.body);
    let auth_url = auth.location().unwrap();
    assert!(
        auth_url.starts_with(&format!("{}/auth?", s.customers.issuer)),
        "{auth_url}"
    );
    let scope = param(&auth.location_params(), "scope").unwrap_or_default();
    assert!(scope.split(' ').any(|x| x == "offline_access"), "{scope}");
    let landed = s
        .sign_in_from(&b, auth, &s.customers, "alice", "wonderland")
        .await;
    assert_eq!(landed.url, s.gw.url("/tokens"));
    let issued = s.customers.issued_access_tokens();
    let at_login: Vec<&String> = issued
        .iter()
        .filter(|(gty, _)| gty == "authorization_code")
        .map(|(_, fp)| fp)
        .collect();
    assert_eq!(at_login.len(), 1, "{issued:?}");
    assert_eq!(s.echo.last().header("x-user"), Some("customers:alice"));
    assert!(bearer(&s.echo.last()).is_some(), "{:?}", s.echo.last());

    // Two refreshed tokens in a row reach the upstream; the client's own Authorization
    // never passes.
    let mut refreshed: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + REFRESH_LIMIT;
    while refreshed.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no two refreshed tokens within {REFRESH_LIMIT:?}: {refreshed:?}\n{}\n{}",
            s.customers.logs(),
            s.gw.logs()
        );
        tokio::time::sleep(POLL).await;
        let page = b
            .get_with(
                &s.gw.url("/tokens/x"),
                &[("Authorization", "Bearer forged")],
            )
            .await;
        assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
        let seen = s.echo.last();
        assert_eq!(seen.headers_named("authorization").len(), 1, "{seen:?}");
        let token = bearer(&seen).unwrap_or_else(|| panic!("no bearer token: {seen:?}"));
        let fp = fingerprint(&token);
        if fp == *at_login[0] || refreshed.iter().any(|t| fingerprint(t) == fp) {
            continue;
        }
        assert!(
            s.customers
                .issued_access_tokens()
                .contains(&("refresh_token".to_string(), fp.clone())),
            "{fp}: neither the login's token nor a refreshed one\n{}",
            s.customers.logs()
        );
        refreshed.push(token);
    }
    // Every refresh the gateway counts is one the provider issued, and none failed.
    let by_refresh = s
        .customers
        .issued_access_tokens()
        .iter()
        .filter(|(gty, _)| gty == "refresh_token")
        .count();
    let counted = s.refreshes("success").await.unwrap_or(0.0);
    assert!(counted >= 2.0, "{counted}");
    assert_eq!(counted, by_refresh as f64, "{}", s.gw.logs());
    for result in ["rejected", "unavailable"] {
        assert_eq!(s.refreshes(result).await, None, "{result}");
    }

    // Routes that do not forward the token neither receive nor refresh it, also when
    // it is due (the last token is 1 s from due; the provider's clock is the real one).
    let before = s.refreshes("success").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.get(&s.gw.url("/account")).await.status, 200);
    assert_eq!(s.echo.last().header("authorization"), None);
    assert_eq!(s.refreshes("success").await, before);

    // Logout now hints with the ID token from a refresh; the provider takes it.
    let csrf = b
        .get(&s.gw.url("/.portcullis/logout"))
        .await
        .form("method=\"post\"")
        .and_then(|f| f.fields.into_iter().find(|(k, _)| k == "csrf"))
        .map(|(_, v)| v)
        .expect("a csrf field");
    let out = b
        .post_form(&s.gw.url("/.portcullis/logout"), &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303, "{}", out.body);
    let hint = param(&out.location_params(), "id_token_hint").expect("an id_token_hint");
    assert_eq!(jwt_claims(&hint)["sub"], "alice");
    let provider_page = b.get(&out.location().unwrap()).await;
    assert_eq!(
        provider_page.status,
        200,
        "{}\n{}",
        provider_page.body,
        s.customers.logs()
    );
    let done = b.confirm_logout_at_provider(&provider_page).await;
    assert_eq!(done.location(), Some(s.gw.url("/")), "{done:?}");
}

#[tokio::test]
async fn a_refresh_the_provider_refuses_ends_the_session() {
    let s = Lifecycle::start(Some(SHORT_TTL)).await;
    let browser = Browser::new();
    s.sign_in(&browser, "customers", "/tokens", "alice", "wonderland")
        .await;
    let api = Browser::new();
    s.sign_in(&api, "customers", "/tokens", "bob", "builder")
        .await;

    // An administrator at the provider revokes both users' access.
    assert!(s.customers.revoke_grants("alice").await >= 1);
    assert!(s.customers.revoke_grants("bob").await >= 1);

    // Once the token is due, a browser is sent to log in again...
    let page = poll_until(&s, || async {
        let page = browser.get(&s.gw.url("/tokens")).await;
        (page.status != 200).then_some(page)
    })
    .await;
    assert_eq!(page.status, 302, "{}\n{}", page.body, s.gw.logs());
    let to = page.location().unwrap();
    assert!(to.starts_with(&s.gw.url("/.portcullis/login?")), "{to}");
    assert_eq!(s.refreshes("rejected").await, Some(1.0));
    // ...because the session ended, for every route.
    s.assert_signed_out(&browser, "after the refused refresh")
        .await;
    // A script or API client gets 401.
    let page = poll_until(&s, || async {
        let page = api
            .get_with(&s.gw.url("/tokens"), &[("Accept", "application/json")])
            .await;
        (page.status != 200).then_some(page)
    })
    .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("refresh-failed"), "{}", page.body);
    assert_eq!(s.refreshes("rejected").await, Some(2.0));
    assert_eq!(
        s.metric(
            "portcullis_sessions_ended_total",
            &[("reason", "refresh-failed")]
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn while_the_provider_is_unreachable_the_current_access_token_serves_until_it_expires() {
    // Due after 3 s, expired after 6 s: time for requests in between.
    let mut s = Lifecycle::start(Some(6)).await;
    let b = Browser::new();
    s.sign_in(&b, "customers", "/tokens", "alice", "wonderland")
        .await;
    let last = bearer(&s.echo.last()).expect("a bearer token");

    s.customers.stop();
    // Until it expires, the last token serves, also after refreshes failed; then the
    // route fails closed.
    let mut served_after_failed_refresh = false;
    let deadline = std::time::Instant::now() + REFRESH_LIMIT;
    let page = loop {
        let page = b.get(&s.gw.url("/tokens")).await;
        if page.status != 200 {
            break page;
        }
        assert_eq!(bearer(&s.echo.last()).as_deref(), Some(last.as_str()));
        if s.refreshes("unavailable").await.is_some() {
            served_after_failed_refresh = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token did not expire within {REFRESH_LIMIT:?}\n{}",
            s.gw.logs()
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(
        served_after_failed_refresh,
        "no request was served with the old token after a failed refresh\n{}",
        s.gw.logs()
    );
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(page.body.contains("provider-unavailable"), "{}", page.body);
    assert_eq!(s.refreshes("success").await, None);
    assert_eq!(s.refreshes("rejected").await, None);
    // The session was not ended: a failure to reach the provider is not a refusal.
    assert_eq!(
        s.metric(
            "portcullis_sessions_ended_total",
            &[("reason", "refresh-failed")]
        )
        .await,
        None
    );
}

/// Calls `f` every [`POLL`] until it returns something; fails after [`REFRESH_LIMIT`].
async fn poll_until<T, F, Fut>(s: &Lifecycle, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + REFRESH_LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting after {REFRESH_LIMIT:?}\n{}",
            s.gw.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The access token in a request's `Authorization: Bearer`.
fn bearer(seen: &common::Seen) -> Option<String> {
    seen.header("authorization")?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}
