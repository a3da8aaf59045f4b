//! What a signed-in user can do about their own sessions, through the real binary and
//! the in-process test IdP: `/.portcullis/sessions` lists them (HTML and JSON) and ends
//! one or all others with the session's anti-forgery token; `/.portcullis/logout` asks
//! for confirmation and ends the session only on a POST carrying that token. Ends are
//! reported to `logout.notify`.

mod common;

use common::browser::{Browser, Page};
use common::hook::Hook;
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::series_value;
use serde_json::{json, Value};

struct Setup {
    s: IdpGateway,
    hook: Hook,
}

async fn setup() -> Setup {
    let hook = Hook::start().await;
    let session = format!(
        "{}logout:\n  redirect: /bye\n  notify: \"{}\"\n",
        session_yaml(None),
        hook.url()
    );
    let s = with_test_idp(&session, "", POLICY).await;
    Setup { s, hook }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        self.s.gw.url(path)
    }

    /// A new browser signed in as `sub`.
    async fn log_in(&self, sub: &str) -> Browser {
        self.s.idp.set_claim("sub", json!(sub));
        let b = Browser::new();
        let page = b.follow(b.get(&self.url("/account")).await, 10).await;
        assert_eq!(page.status, 200, "{}\n{}", page.body, self.s.gw.logs());
        b
    }

    /// True when the browser's session is live.
    async fn signed_in(&self, b: &Browser) -> bool {
        let r = b.get(&self.url("/.portcullis/userinfo")).await;
        assert!(
            r.status == 200 || r.status == 401,
            "{} {}",
            r.status,
            r.body
        );
        r.status == 200
    }

    /// True when the session whose cookie value is `cookie` is live, asked without any
    /// browser (a cleared cookie in the jar proves nothing about the store).
    async fn live(&self, cookie: &str) -> bool {
        let r = self
            .s
            .gw
            .get(
                "/.portcullis/userinfo",
                &[("Cookie", &format!("portcullis={cookie}"))],
            )
            .await;
        r.status == 200
    }

    async fn sessions_json(&self, b: &Browser) -> Value {
        let page = b
            .get_with(
                &self.url("/.portcullis/sessions"),
                &[("Accept", "application/json")],
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.json()
    }

    /// (handle of the current session, csrf) as the JSON listing gives them.
    async fn me(&self, b: &Browser) -> (String, String) {
        let v = self.sessions_json(b).await;
        let id = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["current"] == true)
            .unwrap_or_else(|| panic!("no current session in {v}"))["id"]
            .as_str()
            .unwrap()
            .to_string();
        (id, v["csrf"].as_str().unwrap().to_string())
    }

    async fn ended_total(&self, reason: &str) -> f64 {
        let text = self.s.gw.admin("GET", "/metrics", &[]).await.text();
        series_value(
            &text,
            "portcullis_sessions_ended_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    }
}

fn session_cookie(b: &Browser, s: &Setup) -> Option<String> {
    b.cookie_header(&s.url("/"))?
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis=").map(str::to_string))
        .filter(|v| !v.is_empty())
}

/// POST a form from `b`'s cookie jar with `Accept: application/json`.
async fn post_json(b: &Browser, url: &str, fields: &[(&str, &str)]) -> Page {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(b.jar.clone())
        .build()
        .unwrap();
    let r = client
        .post(url)
        .header("Accept", "application/json")
        .form(fields)
        .send()
        .await
        .unwrap();
    Page {
        status: r.status().as_u16(),
        url: url.to_string(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

fn error_of(page: &Page) -> String {
    page.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_sessions_page_lists_the_users_sessions_and_marks_this_one() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let b = t.log_in("user-123").await;
    let bob = t.log_in("user-456").await;
    let (mine, csrf) = t.me(&a).await;
    let (theirs, _) = t.me(&b).await;
    let (bobs, _) = t.me(&bob).await;

    let page = a.get(&t.url("/.portcullis/sessions")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = &page.body;
    assert_eq!(html.matches("(this session)").count(), 1, "{html}");
    assert_eq!(html.matches("name=\"session\" value=").count(), 2, "{html}");
    // The marker sits in the current session's row, before its own End button.
    let row_of = |id: &str| {
        let at = html.find(&format!("value=\"{id}\"")).unwrap();
        html[..at].rfind("<tr>").unwrap()
    };
    let marker = html.find("(this session)").unwrap();
    assert!(row_of(&mine) < marker && marker < html.find(&format!("value=\"{mine}\"")).unwrap());
    assert!(html.contains(&format!("value=\"{theirs}\"")));
    assert!(!row_of(&theirs).eq(&row_of(&mine)));
    assert!(
        !html.contains(&bobs),
        "another user's session is not listed"
    );
    assert!(html.contains(&format!("name=\"csrf\" value=\"{csrf}\"")));
    assert!(
        html.contains("value=\"end-others\""),
        "two sessions: end all others is offered"
    );
    // The cookie value itself never appears on the page.
    assert!(!html.contains(&session_cookie(&a, &t).unwrap()));
}

#[tokio::test]
async fn the_sessions_json_lists_ids_devices_times_and_the_csrf() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let _b = t.log_in("user-123").await;
    let v = t.sessions_json(&a).await;
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list.iter().filter(|x| x["current"] == true).count(), 1);
    assert_eq!(list[0]["current"], true, "oldest first: a signed in first");
    for x in list {
        assert_eq!(x["device"], "Unknown device");
        let id = x["id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        for k in ["created", "last_seen"] {
            let t = x[k].as_str().unwrap();
            assert!(t.starts_with("20") && t.ends_with('Z'), "{k}: {t}");
        }
    }
    let csrf = v["csrf"].as_str().unwrap();
    assert!(csrf.len() >= 32, "{csrf}");
    let cookie = session_cookie(&a, &t).unwrap();
    assert!(
        !v.to_string().contains(&cookie),
        "the cookie value is not an id"
    );
}

#[tokio::test]
async fn ending_another_browser_signs_it_out_and_keeps_this_one() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let b = t.log_in("user-123").await;
    let (_, csrf) = t.me(&a).await;
    let (other, _) = t.me(&b).await;
    let before = t.ended_total("revoked").await;
    let r = a
        .post_form(
            &t.url("/.portcullis/sessions"),
            &[("csrf", &csrf), ("action", "end"), ("session", &other)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location().unwrap(), t.url("/.portcullis/sessions"));
    assert!(
        r.set_cookies().is_empty(),
        "this browser keeps its cookie: {:?}",
        r.set_cookies()
    );
    assert!(!t.signed_in(&b).await, "the other browser is signed out");
    assert!(t.signed_in(&a).await, "this browser is not");
    assert_eq!(
        t.sessions_json(&a).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.ended_total("revoked").await - before, 1.0);
    let event = t.hook.wait_for("revoked").await;
    assert_eq!(event["user"], "idp:user-123");
    assert_eq!(event["sessions"], 1);
}

#[tokio::test]
async fn ending_this_session_from_the_list_signs_this_browser_out() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let (mine, csrf) = t.me(&a).await;
    let cookie = session_cookie(&a, &t).unwrap();
    let r = a
        .post_form(
            &t.url("/.portcullis/sessions"),
            &[("csrf", &csrf), ("action", "end"), ("session", &mine)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location().unwrap(), t.url("/bye"));
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=;") && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    assert!(!t.live(&cookie).await);
}

#[tokio::test]
async fn end_others_keeps_only_this_session() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let b = t.log_in("user-123").await;
    let c = t.log_in("user-123").await;
    let bob = t.log_in("user-456").await;
    let (_, csrf) = t.me(&b).await;
    let r = post_json(
        &b,
        &t.url("/.portcullis/sessions"),
        &[("csrf", &csrf), ("action", "end-others")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({ "ended": 2 }));
    assert!(!t.signed_in(&a).await);
    assert!(!t.signed_in(&c).await);
    assert!(t.signed_in(&b).await, "the current session stays");
    assert!(
        t.signed_in(&bob).await,
        "another user's sessions are not others of mine"
    );
    let list = t.sessions_json(&b).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    let event = t.hook.wait_for("revoked").await;
    assert_eq!(event["sessions"], 2, "one event for the user: {event}");
}

#[tokio::test]
async fn a_wrong_or_missing_csrf_is_refused_and_nothing_ends() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let b = t.log_in("user-123").await;
    let (_, csrf_a) = t.me(&a).await;
    let (other, csrf_b) = t.me(&b).await;
    assert_ne!(csrf_a, csrf_b, "each session has its own token");
    let wrong = format!("{}x", &csrf_a[..csrf_a.len() - 1]);
    let url = t.url("/.portcullis/sessions");
    for fields in [
        vec![("action", "end"), ("session", other.as_str())],
        vec![("csrf", ""), ("action", "end"), ("session", &other)],
        vec![("csrf", &wrong), ("action", "end"), ("session", &other)],
        // Another session's token, even the user's own other session's.
        vec![("csrf", &csrf_b), ("action", "end"), ("session", &other)],
        vec![("csrf", &csrf_b), ("action", "end-others")],
        // Given twice, the right one among them.
        vec![
            ("csrf", &wrong),
            ("csrf", &csrf_a),
            ("action", "end-others"),
        ],
    ] {
        let r = post_json(&a, &url, &fields).await;
        assert_eq!(r.status, 403, "{fields:?}: {}", r.body);
        assert_eq!(error_of(&r), "csrf-invalid");
        let html = a.post_form(&url, &fields).await;
        assert_eq!(html.status, 403, "{fields:?}");
    }
    // The token in the query string is not the form's.
    let r = a
        .post_form(
            &format!("{url}?csrf={csrf_a}"),
            &[("action", "end"), ("session", &other)],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(t.signed_in(&a).await);
    assert!(t.signed_in(&b).await, "nothing ended");
    assert_eq!(
        t.sessions_json(&a).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(t.hook.events().is_empty(), "{:?}", t.hook.events());
}

#[tokio::test]
async fn another_users_session_cannot_be_ended() {
    let t = setup().await;
    let alice = t.log_in("user-123").await;
    let bob = t.log_in("user-456").await;
    let (_, csrf) = t.me(&alice).await;
    let (bobs, _) = t.me(&bob).await;
    let r = post_json(
        &alice,
        &t.url("/.portcullis/sessions"),
        &[("csrf", &csrf), ("action", "end"), ("session", &bobs)],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(error_of(&r), "session-unknown");
    let r = post_json(
        &alice,
        &t.url("/.portcullis/sessions"),
        &[
            ("csrf", &csrf),
            ("action", "end"),
            ("session", "0123456789abcdef0123456789abcdef"),
        ],
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(t.signed_in(&bob).await, "bob is untouched");
    assert!(t.signed_in(&alice).await);
}

#[tokio::test]
async fn without_a_session_the_sessions_endpoint_answers_401() {
    let t = setup().await;
    let b = Browser::new();
    let page = b
        .get_with(
            &t.url("/.portcullis/sessions"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert_eq!(error_of(&page), "user-unauthenticated");
    assert_eq!(b.get(&t.url("/.portcullis/sessions")).await.status, 401);
    let r = post_json(
        &b,
        &t.url("/.portcullis/sessions"),
        &[("csrf", "x"), ("action", "end-others")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // A made-up cookie is no better.
    let r =
        t.s.gw
            .get(
                "/.portcullis/sessions",
                &[(
                    "Cookie",
                    "portcullis=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                )],
            )
            .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn the_logout_page_asks_for_confirmation_with_a_post_form() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let (_, csrf) = t.me(&a).await;
    let page = a.get(&t.url("/.portcullis/logout")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let form = page
        .form("action=\"/.portcullis/logout\"")
        .unwrap_or_else(|| panic!("no logout form: {}", page.body));
    assert!(page.body.contains("method=\"post\""), "{}", page.body);
    assert_eq!(form.action, t.url("/.portcullis/logout"));
    assert_eq!(form.fields, vec![("csrf".to_string(), csrf)]);
    assert!(
        page.body.contains("alice@example.com"),
        "says who is signed in"
    );
    assert!(t.signed_in(&a).await, "showing the page signs nobody out");
    // Without a session there is nothing to confirm.
    let nobody = Browser::new();
    let page = nobody.get(&t.url("/.portcullis/logout")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("You are signed out"), "{}", page.body);
    assert!(page.form("action=\"/.portcullis/logout\"").is_none());
}

#[tokio::test]
async fn logout_without_the_csrf_token_is_refused() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let b = t.log_in("user-123").await;
    let (_, csrf_b) = t.me(&b).await;
    let url = t.url("/.portcullis/logout");
    for fields in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "not-the-token")],
        vec![("csrf", csrf_b.as_str())],
    ] {
        let r = a.post_form(&url, &fields).await;
        assert_eq!(r.status, 403, "{fields:?}: {}", r.body);
        assert!(r.body.contains("csrf-invalid"), "{}", r.body);
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    }
    let r = post_json(&a, &url, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(error_of(&r), "csrf-invalid");
    assert!(t.signed_in(&a).await);
    assert!(t.signed_in(&b).await);
    assert_eq!(t.ended_total("logout").await, 0.0);
}

#[tokio::test]
async fn logout_with_the_csrf_token_ends_the_session_and_clears_the_cookie() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let other = t.log_in("user-123").await;
    let cookie = session_cookie(&a, &t).unwrap();
    let page = a.get(&t.url("/.portcullis/logout")).await;
    let form = page.form("action=\"/.portcullis/logout\"").unwrap();
    let fields: Vec<(&str, &str)> = form
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = a.post_form(&form.action, &fields).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=;") && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    // On to the provider's end_session_endpoint (RP-initiated logout).
    let loc = url::Url::parse(&r.location().unwrap()).unwrap();
    assert_eq!(
        loc.as_str().split('?').next().unwrap(),
        t.s.idp.url("/logout")
    );
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q.get("client_id"), Some(&t.s.idp.client_id()));
    assert_eq!(q.get("post_logout_redirect_uri"), Some(&t.url("/bye")));
    let hint = q.get("id_token_hint").expect("id_token_hint");
    assert_eq!(hint.split('.').count(), 3, "{hint}");

    assert!(
        session_cookie(&a, &t).is_none(),
        "the browser dropped the cookie"
    );
    assert!(!t.live(&cookie).await, "the session is gone from the store");
    assert!(t.signed_in(&other).await, "logout ends this session only");
    assert_eq!(t.ended_total("logout").await, 1.0);
    let event = t.hook.wait_for("logout").await;
    assert_eq!(event["event"], "session-ended");
    assert_eq!(event["user"], "idp:user-123");
    assert_eq!(event["sub"], "user-123");
    assert_eq!(event["sessions"], 1);
    // A second POST has no session: it lands where a logout lands.
    let again = a.post_form(&form.action, &fields).await;
    assert_eq!(again.status, 303);
    assert_eq!(again.location().unwrap(), t.url("/bye"));
}

#[tokio::test]
async fn logout_answers_json_to_scripts() {
    let t = setup().await;
    let a = t.log_in("user-123").await;
    let cookie = session_cookie(&a, &t).unwrap();
    let (_, csrf) = t.me(&a).await;
    let r = post_json(&a, &t.url("/.portcullis/logout"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"], "signed-out");
    assert!(
        v["location"]
            .as_str()
            .unwrap()
            .starts_with(&t.s.idp.url("/logout?")),
        "{v}"
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("portcullis=;")),
        "{:?}",
        r.set_cookies()
    );
    assert!(!t.live(&cookie).await);
}
