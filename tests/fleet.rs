//! Several gateways, one store: two `portcullis` processes share a real `redis-server`
//! (same key prefix, same cookie name, same provider), so a session made on one works on
//! the other, and every way a session ends (logout, back-channel logout, admin
//! revocation, eviction over a population's `max_sessions`) is effective on both at
//! once. The provider is the in-process test IdP, with both gateways' callbacks
//! registered.

mod common;

use common::browser::Browser;
use common::identity::{session_yaml, wait_discovered};
use common::redis::RedisServer;
use common::test_idp::{TestIdp, TokenHeader};
use common::{free_port, upstream_app, Echo, Gateway, Response};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const TOKEN: &str = "fleet-admin-token-0123456789";
const BEARER: &str = "Bearer fleet-admin-token-0123456789";
const POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers: { X-User: "{sub}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

struct Fleet {
    idp: TestIdp,
    echo: Echo,
    /// Two members; each test says which one it acts on.
    gw: [Gateway; 2],
    /// Held for the test's length; also read directly to age a record.
    redis: RedisServer,
}

/// One member of the fleet: its own ports and config directory, the shared Redis.
async fn member(idp: &TestIdp, echo: &Echo, redis: &RedisServer) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), idp.client_secret()).unwrap();
    std::fs::write(dir.path().join("admin-token"), TOKEN).unwrap();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\", token: {{ file: admin-token }} }}\n\
         threads: 1\n\
         policies: policies/\n\
         {session}\
         providers:\n  - id: idp\n    issuer: \"{issuer}\"\n    client_id: \"{client}\"\n    client_secret: {{ file: client-secret }}\n\
         populations:\n  everyone: {{ providers: [idp], max_sessions: 2 }}\n\
         {up}\n",
        session = session_yaml(Some((&redis.url(), "fleet:"))),
        issuer = idp.issuer(),
        client = idp.client_id(),
        up = upstream_app(echo.addr),
    );
    let gw = Gateway::start_in(dir, &yaml, port, admin_port, &[("routes.yaml", POLICY)]).await;
    wait_discovered(&gw).await;
    idp.allow_redirect_uri(gw.url("/.portcullis/callback"));
    gw
}

async fn fleet() -> Fleet {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let idp = TestIdp::start().await;
    let a = member(&idp, &echo, &redis).await;
    let b = member(&idp, &echo, &redis).await;
    Fleet {
        idp,
        echo,
        gw: [a, b],
        redis,
    }
}

impl Fleet {
    /// A new browser signed in as `sub` on member `i` (cookies ignore ports, so the
    /// browser then presents the same cookie to both members).
    async fn log_in(&self, i: usize, sub: &str) -> Browser {
        self.idp.set_claim("sub", json!(sub));
        let b = Browser::new();
        let page = b.follow(b.get(&self.gw[i].url("/account")).await, 10).await;
        assert_eq!(page.status, 200, "{}\n{}", page.body, self.gw[i].logs());
        assert_eq!(
            page.url,
            self.gw[i].url("/account"),
            "the login stayed on member {i}"
        );
        b
    }

    /// True when member `i` takes `cookie` for a live session, asked without a browser.
    async fn live_on(&self, i: usize, cookie: &str) -> bool {
        let r = self.gw[i]
            .get(
                "/.portcullis/userinfo",
                &[("Cookie", &format!("portcullis={cookie}"))],
            )
            .await;
        assert!(
            r.status == 200 || r.status == 401,
            "{} {}",
            r.status,
            r.text()
        );
        r.status == 200
    }

    async fn admin(&self, i: usize, method: &str, path: &str) -> Response {
        let r = self.gw[i]
            .admin(method, path, &[("Authorization", BEARER)])
            .await;
        assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text());
        r
    }

    async fn count(&self, i: usize) -> u64 {
        let r = self.admin(i, "GET", "/sessions/count").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["active"].as_u64().unwrap()
    }

    /// A signed back-channel logout token from the provider for `claims` (merged over
    /// a valid base: iss, aud, iat, jti, the event).
    fn logout_token(&self, claims: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut c = json!({
            "iss": self.idp.issuer(),
            "aud": self.idp.client_id(),
            "iat": now,
            "exp": now + 120,
            "jti": format!("jti-{}", rand_suffix()),
            "events": { BACKCHANNEL_EVENT: {} },
        });
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        self.idp.mint(c, TokenHeader::rs256().typ("logout+jwt"))
    }
}

fn rand_suffix() -> String {
    format!("{:x}", rand::random::<u64>())
}

/// The session cookie's value in `b`'s jar.
fn cookie(b: &Browser, f: &Fleet) -> String {
    b.cookie_header(&f.gw[0].url("/"))
        .unwrap_or_default()
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis=").map(str::to_string))
        .filter(|v| !v.is_empty())
        .expect("a session cookie")
}

/// The current session's (handle, csrf) as member `i` lists it.
async fn me_on(f: &Fleet, i: usize, b: &Browser) -> (String, String) {
    let page = b
        .get_with(
            &f.gw[i].url("/.portcullis/sessions"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let v = page.json();
    let id = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["current"] == true)
        .unwrap_or_else(|| panic!("no current session: {v}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    (id, v["csrf"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_session_made_on_one_gateway_works_on_the_other() {
    let f = fleet().await;
    let b = f.log_in(0, "user-123").await;
    let c = cookie(&b, &f);
    let page = b.get(&f.gw[1].url("/account/orders")).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, f.gw[1].logs());
    let seen = f.echo.last();
    assert_eq!(seen.target, "/account/orders");
    assert_eq!(seen.header("x-user"), Some("user-123"));
    let info = b.get(&f.gw[1].url("/.portcullis/userinfo")).await.json();
    assert_eq!(info["user"], "idp:user-123");
    assert!(f.live_on(0, &c).await && f.live_on(1, &c).await);
    // Both list the same one session, under the same handle.
    let (on0, csrf0) = me_on(&f, 0, &b).await;
    let (on1, csrf1) = me_on(&f, 1, &b).await;
    assert_eq!((on0, csrf0), (on1, csrf1));
    // A browser that never signed in is sent to log in by either.
    let stranger = Browser::new();
    assert_eq!(stranger.get(&f.gw[1].url("/account")).await.status, 302);
}

#[tokio::test]
async fn logout_on_one_gateway_ends_the_session_on_the_other_at_once() {
    let f = fleet().await;
    let b = f.log_in(0, "user-123").await;
    let other = f.log_in(1, "user-123").await;
    let c = cookie(&b, &f);
    assert!(f.live_on(1, &c).await);
    let confirm = b.get(&f.gw[0].url("/.portcullis/logout")).await;
    let form = confirm
        .form("action=\"/.portcullis/logout\"")
        .unwrap_or_else(|| panic!("no logout form: {}", confirm.body));
    // The token is the session's, whichever member shows it.
    let (_, csrf_on_1) = me_on(&f, 1, &b).await;
    assert_eq!(form.fields, vec![("csrf".to_string(), csrf_on_1.clone())]);
    let r = b
        .post_form(&f.gw[0].url("/.portcullis/logout"), &[("csrf", &csrf_on_1)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // No waiting: the other member reads the store on every request.
    assert!(
        !f.live_on(1, &c).await,
        "the session survived on the other gateway"
    );
    assert!(!f.live_on(0, &c).await);
    assert!(
        f.live_on(1, &cookie(&other, &f)).await,
        "only that session ended"
    );
    assert_eq!(f.count(1).await, 1);
}

#[tokio::test]
async fn a_back_channel_logout_on_one_gateway_ends_sessions_on_the_other() {
    let f = fleet().await;
    // One provider session (sid) behind a session on each member; another user apart.
    f.idp.set_claim("sid", json!("op-session-1"));
    let on0 = f.log_in(0, "user-123").await;
    let on1 = f.log_in(1, "user-123").await;
    f.idp.set_claim("sid", json!("op-session-2"));
    let bob = f.log_in(1, "user-456").await;
    let (c0, c1, cb) = (cookie(&on0, &f), cookie(&on1, &f), cookie(&bob, &f));
    assert!(f.live_on(1, &c0).await && f.live_on(0, &c1).await);

    let token = f.logout_token(json!({ "sid": "op-session-1", "sub": "user-123" }));
    let url = f.gw[0].url("/.portcullis/backchannel-logout");
    let r = Browser::new()
        .post_form(&url, &[("logout_token", &token)])
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, f.gw[0].logs());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for i in 0..2 {
        assert!(
            !f.live_on(i, &c0).await,
            "member {i} still takes the first session"
        );
        assert!(
            !f.live_on(i, &c1).await,
            "member {i} still takes the second session"
        );
        assert!(
            f.live_on(i, &cb).await,
            "another provider session ended on member {i}"
        );
    }
    assert_eq!(f.count(0).await, 1);

    // The token's jti is remembered fleet-wide: replayed to the other member, refused.
    let replay = Browser::new()
        .post_form(
            &f.gw[1].url("/.portcullis/backchannel-logout"),
            &[("logout_token", &token)],
        )
        .await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(replay.json()["error_description"], "logout-token-replayed");

    // By `sub` alone (no sid): every session of that user, on every member.
    f.idp.set_claim("sid", json!("op-session-3"));
    let again = f.log_in(1, "user-123").await;
    let ca = cookie(&again, &f);
    let token = f.logout_token(json!({ "sub": "user-123" }));
    let r = Browser::new()
        .post_form(&url, &[("logout_token", &token)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!f.live_on(1, &ca).await);
    assert!(f.live_on(1, &cb).await);
}

#[tokio::test]
async fn admin_revocation_on_one_gateway_ends_sessions_on_the_other_at_once() {
    let f = fleet().await;
    let a = f.log_in(0, "user-123").await;
    let b = f.log_in(0, "user-123").await;
    let bob = f.log_in(0, "user-456").await;
    let (ca, cb, cbob) = (cookie(&a, &f), cookie(&b, &f), cookie(&bob, &f));

    // Listed by the other member, as the user's own page shows them.
    let list = f
        .admin(1, "GET", "/sessions?provider=idp&sub=user-123")
        .await
        .json();
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [me_on(&f, 0, &a).await.0, me_on(&f, 0, &b).await.0]);

    let r = f
        .admin(1, "DELETE", "/sessions?provider=idp&sub=user-123")
        .await;
    assert_eq!(r.json(), json!({ "ended": 2 }));
    assert!(
        !f.live_on(0, &ca).await,
        "revoked on member 1, still live on member 0"
    );
    assert!(!f.live_on(0, &cb).await);
    assert!(f.live_on(0, &cbob).await);

    // One session by its id, revoked on member 0, is gone on member 1.
    let (bobs, _) = me_on(&f, 1, &bob).await;
    let r = f
        .admin(
            0,
            "DELETE",
            &format!("/sessions/{bobs}?provider=idp&sub=user-456"),
        )
        .await;
    assert_eq!(r.json(), json!({ "ended": 1 }));
    assert!(!f.live_on(1, &cbob).await);
    assert_eq!(f.count(0).await, 0);
    assert_eq!(f.count(1).await, 0);
}

#[tokio::test]
async fn every_gateway_counts_the_same_sessions() {
    let f = fleet().await;
    assert_eq!((f.count(0).await, f.count(1).await), (0, 0));
    let a = f.log_in(0, "user-123").await;
    let _b = f.log_in(0, "user-456").await;
    let _c = f.log_in(1, "user-789").await;
    assert_eq!((f.count(0).await, f.count(1).await), (3, 3));
    let (_, csrf) = me_on(&f, 1, &a).await;
    let r = a
        .post_form(&f.gw[1].url("/.portcullis/logout"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!((f.count(0).await, f.count(1).await), (2, 2));
    f.admin(0, "DELETE", "/sessions?provider=idp&sub=user-789")
        .await;
    assert_eq!((f.count(0).await, f.count(1).await), (1, 1));
}

#[tokio::test]
async fn a_session_stored_by_the_previous_release_can_still_sign_out() {
    // A rolling upgrade: the record was written before sessions had an anti-forgery
    // token (the field is absent; it reads as empty).
    let f = fleet().await;
    let b = f.log_in(0, "user-123").await;
    let c = cookie(&b, &f);
    let key = format!(
        "fleet:{}",
        portcullis::session::keys::session(
            &portcullis::session::SessionId::parse(&c).unwrap().hash()
        )
    );
    let client = redis::Client::open(f.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&raw).unwrap();
    assert!(record.as_object_mut().unwrap().remove("csrf").is_some());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .arg("PX")
        .arg(ttl)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(f.live_on(1, &c).await, "the old record is a session");

    let confirm = b.get(&f.gw[1].url("/.portcullis/logout")).await;
    let form = confirm
        .form("action=\"/.portcullis/logout\"")
        .unwrap_or_else(|| panic!("no logout form: {}", confirm.body));
    let fields: Vec<(&str, &str)> = form
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = b.post_form(&form.action, &fields).await;
    assert_eq!(
        r.status, 303,
        "the user cannot sign out: {} {}",
        r.status, r.body
    );
    assert!(!f.live_on(0, &c).await);
}

#[tokio::test]
async fn the_session_limit_holds_across_gateways() {
    // `everyone` allows two sessions per user, wherever they were made.
    let f = fleet().await;
    let first = f.log_in(0, "user-123").await;
    let second = f.log_in(1, "user-123").await;
    let c1 = cookie(&first, &f);
    assert!(f.live_on(1, &c1).await);
    let third = f.log_in(0, "user-123").await;
    for i in 0..2 {
        assert!(
            !f.live_on(i, &c1).await,
            "the oldest session still works on member {i}"
        );
        assert!(f.live_on(i, &cookie(&second, &f)).await);
        assert!(f.live_on(i, &cookie(&third, &f)).await);
    }
    let list = f
        .admin(1, "GET", "/sessions?provider=idp&sub=user-123")
        .await
        .json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["sessions"][0]["population"], "everyone");
    assert_eq!(f.count(1).await, 2);
    let text = f.admin(0, "GET", "/metrics").await.text();
    assert_eq!(
        common::series_value(
            &text,
            "portcullis_sessions_ended_total",
            &[("reason", "evicted")]
        ),
        Some(1.0),
        "counted by the member whose login evicted it"
    );
}
