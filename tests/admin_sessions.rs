//! The admin listener's sessions API: it exists only with `admin.token` configured,
//! wants that token, lists a user's live sessions, ends one or all of them (at once,
//! for the browsers holding them), counts the sessions in the store, and reports each
//! revocation in `portcullis_sessions_ended_total` and to `logout.notify`. Logins go
//! through the in-process test IdP; the gateway is the real binary.

mod common;

use common::browser::Browser;
use common::hook::Hook;
use common::identity::{session_yaml, wait_discovered, with_test_idp, IdpGateway, POLICY};
use common::test_idp::TestIdp;
use common::{eventually, free_port, series_value, upstream_app, Echo, Gateway, Response};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "admin-0123456789-abcdef";
const BEARER: &str = "Bearer admin-0123456789-abcdef";

struct Setup {
    idp: TestIdp,
    gw: Gateway,
    #[allow(dead_code)]
    echo: Echo,
    hook: Hook,
}

/// A gateway (memory store) whose admin listener has a token and whose logout events go
/// to a hook, with the test IdP as provider `idp`.
async fn setup() -> Setup {
    let echo = Echo::start().await;
    let hook = Hook::start().await;
    let idp = TestIdp::start().await;
    let port = free_port();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), idp.client_secret()).unwrap();
    std::fs::write(dir.path().join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\", token: {{ file: admin-token }} }}\n\
         threads: 1\n\
         policies: policies/\n\
         {session}\
         logout:\n  notify: \"{hook}\"\n\
         providers:\n  - id: idp\n    issuer: \"{issuer}\"\n    client_id: \"{client}\"\n    client_secret: {{ file: client-secret }}\n\
         {up}\n",
        session = session_yaml(None),
        hook = hook.url(),
        issuer = idp.issuer(),
        client = idp.client_id(),
        up = upstream_app(echo.addr),
    );
    let gw = Gateway::start_in(dir, &yaml, port, admin_port, &[("routes.yaml", POLICY)]).await;
    wait_discovered(&gw).await;
    idp.allow_redirect_uri(gw.url("/.portcullis/callback"));
    Setup {
        idp,
        gw,
        echo,
        hook,
    }
}

/// A new browser signed in as `sub`, with `user_agent` on every request of the login.
async fn log_in(s: &Setup, sub: &str, user_agent: &str) -> Browser {
    s.idp.set_claim("sub", json!(sub));
    let b = Browser::new();
    let ua = [("User-Agent", user_agent)];
    let mut page = b.get_with(&s.gw.url("/account"), &ua).await;
    for _ in 0..10 {
        let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
            break;
        };
        page = b.get_with(&next, &ua).await;
    }
    assert_eq!(
        page.status,
        200,
        "login as {sub}: {}\n{}",
        page.body,
        s.gw.logs()
    );
    assert_eq!(page.url, s.gw.url("/account"));
    b
}

/// True when the browser's session is live.
async fn signed_in(s: &Setup, b: &Browser) -> bool {
    let r = b.get(&s.gw.url("/.portcullis/userinfo")).await;
    assert!(
        r.status == 200 || r.status == 401,
        "{} {}",
        r.status,
        r.body
    );
    r.status == 200
}

/// The public id (handle) of the browser's current session, from its own sessions page.
async fn handle_of(s: &Setup, b: &Browser) -> String {
    let page = b
        .get_with(
            &s.gw.url("/.portcullis/sessions"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let v = page.json();
    let current: Vec<&Value> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{v}");
    current[0]["id"].as_str().unwrap().to_string()
}

async fn admin(s: &Setup, method: &str, path: &str) -> Response {
    s.gw.admin(method, path, &[("Authorization", BEARER)]).await
}

async fn ended_total(s: &Setup, reason: &str) -> f64 {
    let text = admin(s, "GET", "/metrics").await.text();
    series_value(
        &text,
        "portcullis_sessions_ended_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn without_an_admin_token_configured_the_sessions_api_is_forbidden() {
    let IdpGateway {
        idp: _idp,
        gw,
        echo: _echo,
    } = with_test_idp(&session_yaml(None), "", POLICY).await;
    for (method, path) in [
        ("GET", "/sessions?provider=idp&sub=user-123"),
        ("DELETE", "/sessions?provider=idp&sub=user-123"),
        (
            "DELETE",
            "/sessions/0123456789abcdef0123456789abcdef?provider=idp&sub=user-123",
        ),
        ("GET", "/sessions/count"),
    ] {
        // Any token, or none: without one configured, nobody may end sessions.
        for headers in [vec![], vec![("Authorization", BEARER)]] {
            let r = gw.admin(method, path, &headers).await;
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            assert_eq!(r.json()["error"], "admin-token-not-configured");
        }
    }
    // The rest of the admin listener is unaffected.
    assert_eq!(gw.admin("GET", "/metrics", &[]).await.status, 200);
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_and_ends_nothing() {
    let s = setup().await;
    let b = log_in(&s, "user-123", "curl/8").await;
    let user = "/sessions?provider=idp&sub=user-123";
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token")],
        vec![("Authorization", "Bearer ")],
        // The right token without the scheme, or under another scheme.
        vec![("Authorization", TOKEN)],
        vec![("Authorization", "Basic admin-0123456789-abcdef")],
        // A prefix of the right token.
        vec![("Authorization", "Bearer admin-0123456789")],
    ] {
        for (method, path) in [("GET", user), ("DELETE", user), ("GET", "/sessions/count")] {
            let r = s.gw.admin(method, path, &headers).await;
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {headers:?}: {}",
                r.text()
            );
            assert_eq!(r.json()["error"], "admin-token-required");
            assert!(r.header("www-authenticate").is_some());
        }
    }
    assert!(signed_in(&s, &b).await, "a refused DELETE must end nothing");
    // The scheme is case-insensitive.
    let r =
        s.gw.admin(
            "GET",
            user,
            &[("Authorization", &format!("bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn listing_shows_the_current_sessions_of_that_user_only() {
    let s = setup().await;
    let laptop = log_in(
        &s,
        "user-123",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    )
    .await;
    let phone = log_in(&s, "user-123", "Mozilla/5.0 (iPhone) Safari/604.1").await;
    let gone = log_in(&s, "user-123", "curl/8").await;
    let _other = log_in(&s, "user-456", "curl/8").await;
    // One of user-123's sessions ends: it is no longer listed.
    let csrf = csrf_of(&s, &gone).await;
    let out = gone
        .post_form(&s.gw.url("/.portcullis/logout"), &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303, "{}", out.body);

    let r = admin(&s, "GET", "/sessions?provider=idp&sub=user-123").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["user"], "idp:user-123");
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let ids: Vec<&str> = list.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            handle_of(&s, &laptop).await.as_str(),
            handle_of(&s, &phone).await.as_str()
        ],
        "oldest first, ids as the user's own sessions page shows them"
    );
    for item in list {
        assert_eq!(item["provider"], "idp");
        assert_eq!(item["population"], Value::Null, "no populations configured");
        assert_eq!(item["client_ip"], "127.0.0.1");
        assert_eq!(item["acr"], "urn:portcullis:loa:1");
        let created = item["created_ms"].as_u64().unwrap();
        let seen = item["last_seen_ms"].as_u64().unwrap();
        assert!(created > 1_700_000_000_000 && seen >= created, "{item}");
        let id = item["id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        let text = item.to_string();
        assert!(!text.contains("csrf") && !text.contains("token"), "{text}");
    }
    assert_eq!(
        list[0]["user_agent"],
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"
    );
    assert_eq!(list[1]["user_agent"], "Mozilla/5.0 (iPhone) Safari/604.1");

    let other = admin(&s, "GET", "/sessions?provider=idp&sub=user-456")
        .await
        .json();
    assert_eq!(other["sessions"].as_array().unwrap().len(), 1);
    let nobody = admin(&s, "GET", "/sessions?provider=idp&sub=nobody")
        .await
        .json();
    assert_eq!(nobody, json!({ "user": "idp:nobody", "sessions": [] }));
}

/// The browser's anti-forgery token, from its sessions page.
async fn csrf_of(s: &Setup, b: &Browser) -> String {
    let page = b
        .get_with(
            &s.gw.url("/.portcullis/sessions"),
            &[("Accept", "application/json")],
        )
        .await;
    page.json()["csrf"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn deleting_one_session_by_id_ends_that_one_at_once() {
    let s = setup().await;
    let a = log_in(&s, "user-123", "curl/8").await;
    let b = log_in(&s, "user-123", "curl/8").await;
    let bob = log_in(&s, "user-456", "curl/8").await;
    let id = handle_of(&s, &a).await;

    // Another user's query cannot reach this session by its id.
    let r = admin(
        &s,
        "DELETE",
        &format!("/sessions/{id}?provider=idp&sub=user-456"),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "session-unknown");
    assert!(signed_in(&s, &a).await);

    let r = admin(
        &s,
        "DELETE",
        &format!("/sessions/{id}?provider=idp&sub=user-123"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({ "ended": 1 }));
    assert!(!signed_in(&s, &a).await, "the revoked session still works");
    assert!(signed_in(&s, &b).await, "only the named session ends");
    assert!(signed_in(&s, &bob).await);

    // Gone means gone.
    let r = admin(
        &s,
        "DELETE",
        &format!("/sessions/{id}?provider=idp&sub=user-123"),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = admin(
        &s,
        "DELETE",
        "/sessions/not-a-session?provider=idp&sub=user-123",
    )
    .await;
    assert_eq!(r.status, 404);
    // An empty id (say, an unset shell variable in `/sessions/$ID`) names no session: it
    // must not be taken for the whole user.
    let r = admin(&s, "DELETE", "/sessions/?provider=idp&sub=user-123").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        signed_in(&s, &b).await,
        "an empty id ended the user's other session"
    );
    let list = admin(&s, "GET", "/sessions?provider=idp&sub=user-123")
        .await
        .json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deleting_all_of_a_users_sessions_ends_them_and_no_others() {
    let s = setup().await;
    let a = log_in(&s, "user-123", "curl/8").await;
    let b = log_in(&s, "user-123", "curl/8").await;
    let bob = log_in(&s, "user-456", "curl/8").await;
    let r = admin(&s, "DELETE", "/sessions?provider=idp&sub=user-123").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({ "ended": 2 }));
    assert!(!signed_in(&s, &a).await);
    assert!(!signed_in(&s, &b).await);
    assert!(signed_in(&s, &bob).await, "another user is untouched");
    let again = admin(&s, "DELETE", "/sessions?provider=idp&sub=user-123").await;
    assert_eq!(again.json(), json!({ "ended": 0 }));
    // The revoked browser is sent to log in again.
    let page = a.get(&s.gw.url("/account")).await;
    assert_eq!(page.status, 302);
}

#[tokio::test]
async fn count_follows_logins_and_ends() {
    let s = setup().await;
    let count = || async {
        let r = admin(&s, "GET", "/sessions/count").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["active"].as_u64().unwrap()
    };
    assert_eq!(count().await, 0);
    let a = log_in(&s, "user-123", "curl/8").await;
    let _b = log_in(&s, "user-123", "curl/8").await;
    let _bob = log_in(&s, "user-456", "curl/8").await;
    assert_eq!(count().await, 3);
    let id = handle_of(&s, &a).await;
    admin(
        &s,
        "DELETE",
        &format!("/sessions/{id}?provider=idp&sub=user-123"),
    )
    .await;
    assert_eq!(count().await, 2);
    admin(&s, "DELETE", "/sessions?provider=idp&sub=user-456").await;
    assert_eq!(count().await, 1);
}

#[tokio::test]
async fn unknown_providers_and_missing_parameters_are_refused() {
    let s = setup().await;
    let b = log_in(&s, "user-123", "curl/8").await;
    for method in ["GET", "DELETE"] {
        let r = admin(&s, method, "/sessions?provider=nope&sub=user-123").await;
        assert_eq!(r.status, 404, "{method}: {}", r.text());
        assert_eq!(r.json()["error"], "provider-unknown");
        for path in [
            "/sessions",
            "/sessions?sub=user-123",
            "/sessions?provider=idp",
            "/sessions/0123456789abcdef0123456789abcdef",
        ] {
            let r = admin(&s, method, path).await;
            assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
            assert_eq!(r.json()["error"], "user-missing");
        }
    }
    let r = admin(&s, "POST", "/sessions?provider=idp&sub=user-123").await;
    assert_eq!(r.status, 405);
    assert!(signed_in(&s, &b).await, "nothing ended by refused requests");
}

#[tokio::test]
async fn revocation_is_counted_and_notified() {
    let s = setup().await;
    let _a = log_in(&s, "user-123", "curl/8").await;
    let b = log_in(&s, "user-123", "curl/8").await;
    let before = ended_total(&s, "revoked").await;
    let r = admin(&s, "DELETE", "/sessions?provider=idp&sub=user-123").await;
    assert_eq!(r.json(), json!({ "ended": 2 }));
    assert_eq!(ended_total(&s, "revoked").await - before, 2.0);
    let event = s.hook.wait_for("revoked").await;
    assert_eq!(event["event"], "session-ended");
    assert_eq!(event["user"], "idp:user-123");
    assert_eq!(event["provider"], "idp");
    assert_eq!(event["iss"], s.idp.issuer());
    assert_eq!(event["sub"], "user-123");
    assert_eq!(event["sessions"], 2, "one event per user: {event}");
    assert_eq!(s.hook.events().len(), 1, "{:?}", s.hook.events());

    // One by id: counted and notified as well.
    let c = log_in(&s, "user-123", "curl/8").await;
    assert!(!signed_in(&s, &b).await);
    let id = handle_of(&s, &c).await;
    admin(
        &s,
        "DELETE",
        &format!("/sessions/{id}?provider=idp&sub=user-123"),
    )
    .await;
    assert_eq!(ended_total(&s, "revoked").await - before, 3.0);
    let ok = eventually(Duration::from_secs(10), || async {
        (s.hook.events().len() == 2).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{:?}", s.hook.events());
    assert_eq!(s.hook.events()[1]["sessions"], 1);
    let text = admin(&s, "GET", "/metrics").await.text();
    assert_eq!(
        series_value(
            &text,
            "portcullis_logout_notifications_total",
            &[("result", "success")]
        ),
        Some(2.0)
    );
}
