//! Sessions as a browser sees them: cookie attributes, rotation at login (no fixation),
//! 302 for navigations and 401 for everything else, route requirements, the return
//! path corpus, identity headers and the signed assertion, and `/.portcullis/userinfo`.
//! Logins go through the in-process test IdP.

mod common;

use common::browser::{Browser, Page};
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::test_idp::TestIdp;
use common::{Echo, Gateway};
use serde_json::json;

type Setup = IdpGateway;

async fn setup() -> Setup {
    with_test_idp(&session_yaml(None), "", POLICY).await
}

async fn log_in_at(s: &Setup, b: &Browser, path: &str) -> Page {
    b.follow(b.get(&s.gw.url(path)).await, 10).await
}

/// Follows redirects until one points at `prefix`; returns that URL, not followed.
async fn until(b: &Browser, mut page: Page, prefix: &str) -> String {
    for _ in 0..10 {
        let loc = page.location().expect("a redirect");
        if loc.starts_with(prefix) {
            return loc;
        }
        page = b.get(&loc).await;
    }
    panic!("never reached {prefix}");
}

fn session_cookie(b: &Browser, s: &Setup) -> Option<String> {
    b.cookie_header(&s.gw.url("/"))?
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis=").map(str::to_string))
}

#[tokio::test]
async fn login_rotates_the_session_id_and_a_planted_id_never_becomes_valid() {
    let s = setup().await;
    // The attacker's own real session, planted in the victim's browser.
    let attacker = Browser::new();
    assert_eq!(log_in_at(&s, &attacker, "/account").await.status, 200);
    let planted = session_cookie(&attacker, &s).unwrap();
    let victim = Browser::new();
    let url = url::Url::parse(&s.gw.url("/")).unwrap();
    victim
        .jar
        .add_cookie_str(&format!("portcullis={planted}; Path=/"), &url);
    // A made-up id is not a session.
    let made_up = Browser::new();
    made_up.jar.add_cookie_str(
        "portcullis=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; Path=/",
        &url,
    );
    assert_eq!(made_up.get(&s.gw.url("/account")).await.status, 302);

    s.idp.set_claim("sub", json!("victim-7"));
    // The victim signs in (explicitly: with the planted cookie, /account already passes
    // as the attacker, which is why the real cookie is __Host- over https).
    let page = log_in_at(&s, &victim, "/.portcullis/login?rd=/account").await;
    assert_eq!(page.status, 200);
    let fresh = session_cookie(&victim, &s).unwrap();
    assert_ne!(fresh, planted, "login must issue a new id");
    assert_eq!(s.echo.last().header("x-user"), Some("victim-7"));
    // The planted session ended when the victim logged in over it.
    assert_eq!(attacker.get(&s.gw.url("/account")).await.status, 302);
}

#[tokio::test]
async fn only_navigations_are_redirected_to_login() {
    let s = setup().await;
    let b = Browser::new();
    let nav = b
        .get_with(
            &s.gw.url("/account/orders?page=2"),
            &[("Accept", "text/html")],
        )
        .await;
    assert_eq!(nav.status, 302);
    assert_eq!(
        nav.location().unwrap(),
        s.gw.url("/.portcullis/login?rd=%2Faccount%2Forders%3Fpage%3D2&provider=idp")
    );
    for headers in [
        vec![("Accept", "application/json")],
        vec![("X-Requested-With", "XMLHttpRequest")],
        vec![("Sec-Fetch-Mode", "cors")],
    ] {
        let r = b.get_with(&s.gw.url("/account"), &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert!(r.header("www-authenticate").is_some());
    }
    let api = b
        .get_with(&s.gw.url("/api/things"), &[("Accept", "text/html")])
        .await;
    assert_eq!(api.status, 401, "api routes never redirect");
    let post = b.post_form(&s.gw.url("/account"), &[("a", "b")]).await;
    assert_eq!(post.status, 401);
    assert_eq!(s.echo.count(), 0);
}

#[tokio::test]
async fn requirements_refuse_with_a_reason() {
    let s = setup().await;
    s.idp.set_claim("groups", json!(["customers"]));
    let b = Browser::new();
    assert_eq!(log_in_at(&s, &b, "/account").await.status, 200);
    let staff = b
        .get_with(&s.gw.url("/staff"), &[("Accept", "application/json")])
        .await;
    assert_eq!(staff.status, 403);
    assert_eq!(staff.json()["error"], "group-missing");
    let partners = b
        .get_with(&s.gw.url("/partners"), &[("Accept", "application/json")])
        .await;
    assert_eq!(partners.status, 403);
    assert_eq!(partners.json()["error"], "email-domain-not-allowed");
    let metric =
        s.gw.metric("portcullis_auth_refusals_total{reason=\"group-missing\",route=\"staff\"}")
            .await;
    assert_eq!(metric, Some(1.0));
}

#[tokio::test]
async fn return_paths_that_leave_the_site_fall_back_to_root() {
    let s = setup().await;
    let origin = s.gw.url("");
    for (rd, expected) in [
        ("/account/orders?x=1", "/account/orders?x=1"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/%09/evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("https:evil.example", "/"),
        ("https://evil.example/", "/"),
        ("@evil.example", "/"),
        ("/%0d%0aLocation:%20https://evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ] {
        let b = Browser::new();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("rd", rd);
        let start = b
            .get(&s.gw.url(&format!("/.portcullis/login?{}", q.finish())))
            .await;
        let cb = until(&b, start, &s.gw.url("/.portcullis/callback")).await;
        let done = b.get(&cb).await;
        assert_eq!(done.status, 302, "{rd}: {}", done.body);
        assert_eq!(
            done.location().unwrap(),
            format!("{origin}{expected}"),
            "return path for {rd:?}"
        );
    }
}

#[tokio::test]
async fn identity_headers_are_sanitised_and_the_assertion_verifies() {
    let s = setup().await;
    s.idp
        .set_claim("email", json!("a@example.com\r\nX-Evil: 1"));
    s.idp.set_claim("groups", json!(["staff", "x,admins"]));
    let b = Browser::new();
    assert_eq!(log_in_at(&s, &b, "/account").await.status, 200);
    let seen = s.echo.last();
    assert_eq!(
        seen.header("x-email"),
        None,
        "a value with CR/LF is not sent"
    );
    assert_eq!(seen.header("x-evil"), None);
    assert_eq!(
        seen.header("x-groups"),
        Some("staff"),
        "a group with a comma is dropped"
    );
    assert!(seen
        .header("cookie")
        .is_none_or(|c| !c.contains("portcullis")));

    let jwks = b.get(&s.gw.url("/.portcullis/jwks.json")).await;
    assert_eq!(jwks.status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.body).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["account"]);
    v.set_issuer(&[s.gw.url("")]);
    let assertion = seen.header("x-portcullis-assertion").unwrap();
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &v).unwrap();
    assert_eq!(data.claims["sub"], "user-123");
    assert_eq!(data.claims["provider"], "idp");
    let exp = data.claims["exp"].as_u64().unwrap();
    let iat = data.claims["iat"].as_u64().unwrap();
    assert!(exp - iat <= 60, "assertions are short-lived");
}

#[tokio::test]
async fn other_cookies_reach_the_upstream_but_ours_do_not() {
    let s = setup().await;
    let b = Browser::new();
    let url = url::Url::parse(&s.gw.url("/")).unwrap();
    b.jar.add_cookie_str("theme=dark; Path=/", &url);
    assert_eq!(log_in_at(&s, &b, "/account").await.status, 200);
    let cookie = s
        .echo
        .last()
        .header("cookie")
        .unwrap_or_default()
        .to_string();
    assert_eq!(cookie, "theme=dark");
    b.get(&s.gw.url("/public-page")).await;
    assert_eq!(s.echo.last().header("cookie"), Some("theme=dark"));
}

#[tokio::test]
async fn userinfo_returns_the_session_for_single_page_apps() {
    let s = setup().await;
    let b = Browser::new();
    let anon = b.get(&s.gw.url("/.portcullis/userinfo")).await;
    assert_eq!(anon.status, 401);
    assert_eq!(log_in_at(&s, &b, "/account").await.status, 200);
    let me = b.get(&s.gw.url("/.portcullis/userinfo")).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.header("cache-control"), Some("no-store"));
    let v = me.json();
    assert_eq!(v["sub"], "user-123");
    assert_eq!(v["provider"], "idp");
    assert_eq!(v["claims"]["email"], "alice@example.com");
    assert_eq!(v["acr"], "urn:portcullis:loa:1");
}

#[tokio::test]
async fn over_https_the_cookies_are_host_prefixed_secure_httponly_and_lax() {
    let echo = Echo::start().await;
    let idp = TestIdp::start().await;
    let port = common::free_port();
    let admin_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::self_signed(&["127.0.0.1"]);
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    std::fs::write(dir.path().join("client-secret"), idp.client_secret()).unwrap();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\", tls: {{ cert: cert.pem, key: key.pem }} }}]\n\
         public_url: \"https://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\" }}\n\
         threads: 1\n\
         providers:\n  - id: idp\n    issuer: \"{}\"\n    client_id: \"{}\"\n    client_secret: {{ file: client-secret }}\n{}",
        idp.issuer(),
        idp.client_id(),
        common::upstream_app(echo.addr)
    );
    let gw = Gateway::start_in(dir, &yaml, port, admin_port, &[("routes.yaml", POLICY)]).await;
    common::identity::wait_discovered(&gw).await;
    let base = format!("https://127.0.0.1:{port}");
    idp.allow_redirect_uri(format!("{base}/.portcullis/callback"));
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .get(format!("{base}/.portcullis/login?rd=/account"))
        .send()
        .await
        .unwrap();
    let binding = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in [
        "__Host-portcullis-login=",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(binding.contains(part), "{binding} lacks {part}");
    }
    assert!(!binding.contains("Domain"));
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let at_idp = client.get(&authorize).send().await.unwrap();
    let callback = at_idp.headers()["location"].to_str().unwrap().to_string();
    let binding_pair = binding.split(';').next().unwrap().to_string();
    let done = client
        .get(&callback)
        .header("cookie", binding_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    let set: Vec<String> = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-portcullis="))
        .unwrap();
    for part in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(part), "{session} lacks {part}");
    }
    assert!(!session.contains("Domain"));
    let id = session
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-portcullis=");
    assert_eq!(id.len(), 43, "256 bits, base64url");
    assert!(
        set.iter()
            .any(|c| c.starts_with("__Host-portcullis-login=;") && c.contains("Max-Age=0")),
        "the binding cookie is cleared: {set:?}"
    );
}

#[tokio::test]
async fn sessions_and_the_assertion_key_survive_a_reload() {
    let s = setup().await;
    let b = Browser::new();
    assert_eq!(log_in_at(&s, &b, "/account").await.status, 200);
    let jwks_before = b.get(&s.gw.url("/.portcullis/jwks.json")).await.body;
    // A policy change: a new route before the others.
    let extra = "routes:\n  - name: extra\n    match: { path: /extra }\n    auth: deny\n";
    std::fs::write(s.gw.dir.path().join("policies/00-extra.yaml"), extra).unwrap();
    let r = s.gw.admin("POST", "/reload", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        b.get(&s.gw.url("/extra")).await.status,
        403,
        "the new config is live"
    );
    let page = b.get(&s.gw.url("/account")).await;
    assert_eq!(
        page.status, 200,
        "the in-memory session outlived the reload"
    );
    let jwks_after = b.get(&s.gw.url("/.portcullis/jwks.json")).await.body;
    assert_eq!(
        jwks_before, jwks_after,
        "upstreams keep verifying assertions"
    );
    let ready = s.gw.admin("GET", "/readyz", &[]).await.json();
    assert_eq!(
        ready["providers"]["idp"]["discovered"], true,
        "the provider was kept"
    );
}
