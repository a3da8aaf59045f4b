//! Gateways wired to an identity provider (the in-process test IdP or the real
//! `oidc-provider`), and the checks every failed login must pass.

use super::{free_port, gateway_yaml, upstream_app, Echo, Gateway};
use std::time::Duration;

/// What a test gateway needs to know about its provider.
pub struct ProviderSetup<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    /// Extra YAML lines for the provider entry, indented by 4 spaces.
    pub extra: &'a str,
}

/// The session section: memory by default, or Redis at `redis_url` with `prefix`.
pub fn session_yaml(redis: Option<(&str, &str)>) -> String {
    match redis {
        None => "session:\n  store: { type: memory }\n".to_string(),
        Some((url, prefix)) => format!(
            "session:\n  store: {{ type: redis, url: \"{url}\", key_prefix: \"{prefix}\", response_timeout: 300ms, connect_timeout: 300ms }}\n"
        ),
    }
}

/// Routes used by most identity tests: `/account` needs a login and receives identity
/// headers, `/staff` needs the group `staff`, `/api` is an API route, the rest is public.
pub const POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers:
      X-User: "{sub}"
      X-Email: "{email}"
      X-Groups: "{groups}"
      X-Acr: "{acr}"
    assertion: true
  - name: staff
    match: { path_prefix: /staff }
    upstream: app
    auth: login
    require: { groups_any: [staff] }
    headers: { X-User: "{sub}" }
  - name: partners
    match: { path_prefix: /partners }
    upstream: app
    auth: login
    require: { email_domain: partner.example }
  - name: api
    match: { path_prefix: /api }
    upstream: app
    auth: login
    api: true
    headers: { X-User: "{sub}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// A gateway in front of `echo`, with one provider `idp` and the given session section,
/// started with the client secret in a file. Waits until the provider is discovered.
pub async fn gateway_for(
    echo: &Echo,
    p: &ProviderSetup<'_>,
    session: &str,
    policy: &str,
) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let extra = format!(
        "{session}providers:\n  - id: idp\n    issuer: \"{issuer}\"\n    client_id: \"{client_id}\"\n    client_secret: {{ file: client-secret }}\n{extra}\n{up}",
        issuer = p.issuer,
        client_id = p.client_id,
        extra = p.extra,
        up = upstream_app(echo.addr),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), p.client_secret).unwrap();
    let gw = Gateway::start_in(
        dir,
        &gateway_yaml(port, admin_port, &extra),
        port,
        admin_port,
        &[("routes.yaml", policy)],
    )
    .await;
    wait_discovered(&gw).await;
    gw
}

/// Waits until `/readyz` says every provider is discovered with keys.
pub async fn wait_discovered(gw: &Gateway) {
    let ok = super::eventually(Duration::from_secs(15), || async {
        let r = gw.admin("GET", "/readyz", &[]).await;
        let v = r.json();
        let providers = v["providers"].as_object()?.clone();
        providers
            .values()
            .all(|p| p["discovered"] == true && p["keys"] == true)
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "provider not discovered:\n{}", gw.logs());
}

impl Gateway {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A gateway whose provider is the in-process test IdP, in front of an echo upstream.
pub struct IdpGateway {
    pub idp: super::test_idp::TestIdp,
    pub gw: Gateway,
    pub echo: Echo,
}

/// Starts the test IdP, an echo upstream and a gateway using them (provider id `idp`),
/// and registers the gateway's callback at the IdP.
pub async fn with_test_idp(session: &str, provider_extra: &str, policy: &str) -> IdpGateway {
    let echo = Echo::start().await;
    let idp = super::test_idp::TestIdp::start().await;
    let gw = gateway_for(
        &echo,
        &ProviderSetup {
            issuer: idp.issuer(),
            client_id: &idp.client_id(),
            client_secret: &idp.client_secret(),
            extra: provider_extra,
        },
        session,
        policy,
    )
    .await;
    idp.allow_redirect_uri(gw.url("/.portcullis/callback"));
    IdpGateway { idp, gw, echo }
}
