//! Populations: who a signed-in user is (by provider and claims, first match wins) and
//! the rules their sessions live by. Limits and timeouts are driven in process on an
//! injected clock (a runtime built from YAML, its session manager called directly);
//! selection, route restrictions, unmatched users and minimum `acr` levels go through
//! the real binary, with two in-process test IdPs as providers `idp` and `acme`.

mod common;

use common::browser::{Browser, Page};
use common::hook::Hook;
use common::identity::wait_discovered;
use common::test_idp::{TestIdp, TokenHeader};
use common::{free_port, series_value, upstream_app, Echo, Gateway};
use portcullis::clock::{Clock, FakeClock};
use portcullis::config;
use portcullis::metrics::Metrics;
use portcullis::runtime::Runtime;
use portcullis::session::{Ended, Session, SessionId};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// In process: limits and timeouts on a fake clock.
// ---------------------------------------------------------------------------

fn runtime(clock: &FakeClock) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:8080\" }]\n\
         public_url: \"https://shop.example.com\"\n\
         session: { idle_timeout: 30m, absolute_timeout: 12h }\n\
         providers:\n\
         \x20 - { id: customers, issuer: \"https://login.shop.example\", client_id: shop, client_secret: { file: secret } }\n\
         \x20 - { id: acme, issuer: \"https://id.acme.example\", client_id: shop, client_secret: { file: secret } }\n\
         populations:\n\
         \x20 partners:\n\
         \x20   providers: [acme]\n\
         \x20   idle_timeout: 10m\n\
         \x20   absolute_timeout: 1h\n\
         \x20   max_sessions: 3\n\
         \x20 customers:\n\
         \x20   providers: [customers]\n\
         upstreams:\n  app: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        "routes:\n  - { name: account, match: { path_prefix: / }, upstream: app, auth: login }\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Runtime::build(cfg, None, &Arc::new(Metrics::new()), &clock, 1).unwrap()
}

/// A session as the callback makes it for a user placed in `population`.
fn user(population: Option<&str>, subject: &str) -> Session {
    let (provider, issuer) = match population {
        Some("partners") => ("acme", "https://id.acme.example"),
        _ => ("customers", "https://login.shop.example"),
    };
    Session {
        provider: provider.into(),
        issuer: issuer.into(),
        subject: subject.into(),
        population: population.map(str::to_string),
        ..Session::default()
    }
}

async fn live(rt: &Runtime, id: &SessionId) -> Result<(), Ended> {
    rt.sessions.load(id).await.unwrap().map(|_| ())
}

#[tokio::test]
async fn max_sessions_ends_the_oldest_sessions_of_that_user_only() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let bob = rt
        .sessions
        .create(user(Some("partners"), "bob"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        let c = rt
            .sessions
            .create(user(Some("partners"), "ann"))
            .await
            .unwrap();
        assert_eq!(c.evicted.len(), 0, "within the limit");
        ids.push(c.id);
    }
    let key = user(Some("partners"), "ann").user_key();
    clock.advance(Duration::from_secs(1));
    let fourth = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap();
    assert_eq!(
        fourth.evicted.len(),
        1,
        "one over the limit: the oldest goes"
    );
    assert_eq!(live(&rt, &ids[0]).await, Err(Ended::Unknown));
    for id in ids[1..].iter().chain([&fourth.id]) {
        assert_eq!(live(&rt, id).await, Ok(()));
    }
    let listed: Vec<String> = rt
        .sessions
        .list_user(&key)
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(listed, [ids[1].hash(), ids[2].hash(), fourth.id.hash()]);
    // The next one evicts the next oldest, not the newest.
    clock.advance(Duration::from_secs(1));
    let fifth = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap();
    assert_eq!(fifth.evicted.len(), 1);
    assert_eq!(live(&rt, &ids[1]).await, Err(Ended::Unknown));
    assert_eq!(live(&rt, &fourth.id).await, Ok(()));
    assert_eq!(rt.sessions.list_user(&key).await.unwrap().len(), 3);
    assert_eq!(
        live(&rt, &bob.id).await,
        Ok(()),
        "another user is untouched"
    );
    assert_eq!(rt.sessions.count_active().await.unwrap(), 4);

    // A population without a limit keeps every session.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        let c = rt
            .sessions
            .create(user(Some("customers"), "cat"))
            .await
            .unwrap();
        assert_eq!(c.evicted.len(), 0);
    }
    let cat = user(Some("customers"), "cat").user_key();
    assert_eq!(rt.sessions.list_user(&cat).await.unwrap().len(), 5);
}

#[tokio::test]
async fn each_population_has_its_own_idle_timeout() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let partner = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap()
        .id;
    let customer = rt
        .sessions
        .create(user(Some("customers"), "cat"))
        .await
        .unwrap()
        .id;
    let plain = rt.sessions.create(user(None, "pat")).await.unwrap().id;
    // A population no longer configured (removed by a reload): the session defaults.
    let orphan = rt
        .sessions
        .create(user(Some("gone"), "oz"))
        .await
        .unwrap()
        .id;

    clock.advance(9 * MIN);
    // Nothing is touched until the partner's ten minutes are up.
    clock.advance(MIN);
    assert_eq!(live(&rt, &partner).await, Err(Ended::IdleTimeout));
    for id in [&customer, &plain, &orphan] {
        assert_eq!(
            live(&rt, id).await,
            Ok(()),
            "the default idle timeout is 30m"
        );
    }
    // Idle again from here: 30 minutes for the others.
    clock.advance(29 * MIN);
    for id in [&customer, &plain, &orphan] {
        assert_eq!(live(&rt, id).await, Ok(()));
    }
    clock.advance(30 * MIN);
    assert_eq!(live(&rt, &customer).await, Err(Ended::IdleTimeout));
    assert_eq!(live(&rt, &plain).await, Err(Ended::IdleTimeout));
    assert_eq!(live(&rt, &orphan).await, Err(Ended::IdleTimeout));
}

#[tokio::test]
async fn an_idle_session_is_neither_listed_nor_counted() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let ann = user(Some("partners"), "ann");
    let id = rt.sessions.create(ann.clone()).await.unwrap().id;
    clock.advance(11 * MIN);
    // Past its idle timeout, though not yet noticed by a request for it.
    assert!(
        rt.sessions
            .list_user(&ann.user_key())
            .await
            .unwrap()
            .is_empty(),
        "an ended session is listed as live"
    );
    assert_eq!(rt.sessions.count_active().await.unwrap(), 0);
    assert_eq!(live(&rt, &id).await, Err(Ended::IdleTimeout));
}

#[tokio::test]
async fn max_sessions_counts_live_sessions_only() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    // The oldest session is in use; a newer one is left idle.
    let busy = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap()
        .id;
    clock.advance(Duration::from_secs(1));
    let idle = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap()
        .id;
    clock.advance(5 * MIN);
    assert_eq!(live(&rt, &busy).await, Ok(()));
    let third = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap()
        .id;
    clock.advance(5 * MIN);
    assert_eq!(live(&rt, &busy).await, Ok(()));
    assert_eq!(live(&rt, &third).await, Ok(()));
    // Ten minutes without use: the idle one has ended, so two are live and a new
    // login fits under the limit of three without evicting anyone.
    let fourth = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap();
    assert_eq!(
        fourth.evicted.len(),
        0,
        "a live session was evicted to make room beside an ended one"
    );
    assert_eq!(
        live(&rt, &busy).await,
        Ok(()),
        "the busy session was evicted"
    );
    assert_eq!(live(&rt, &third).await, Ok(()));
    assert_eq!(live(&rt, &fourth.id).await, Ok(()));
    assert!(live(&rt, &idle).await.is_err());
}

#[tokio::test]
async fn each_population_has_its_own_absolute_timeout() {
    let clock = FakeClock::new();
    let rt = runtime(&clock);
    let partner = rt
        .sessions
        .create(user(Some("partners"), "ann"))
        .await
        .unwrap()
        .id;
    let customer = rt
        .sessions
        .create(user(Some("customers"), "cat"))
        .await
        .unwrap()
        .id;
    // Both busy: used every five minutes, never idle.
    for _ in 0..11 {
        clock.advance(5 * MIN);
        assert_eq!(live(&rt, &partner).await, Ok(()));
        assert_eq!(live(&rt, &customer).await, Ok(()));
    }
    clock.advance(5 * MIN);
    assert_eq!(
        live(&rt, &partner).await,
        Err(Ended::AbsoluteTimeout),
        "an hour after sign-in the partner's session is over"
    );
    assert_eq!(live(&rt, &customer).await, Ok(()), "a customer has 12h");
    let partners = user(Some("partners"), "ann").user_key();
    assert!(rt.sessions.list_user(&partners).await.unwrap().is_empty());
    for _ in 0..(11 * 12 - 1) {
        clock.advance(5 * MIN);
        assert_eq!(live(&rt, &customer).await, Ok(()));
    }
    clock.advance(5 * MIN);
    assert_eq!(live(&rt, &customer).await, Err(Ended::AbsoluteTimeout));
}

// ---------------------------------------------------------------------------
// Through the gateway: selection, routes, unmatched users, minimum acr.
// ---------------------------------------------------------------------------

const LOA1: &str = "urn:portcullis:loa:1";
const LOA2: &str = "urn:portcullis:loa:2";

const POLICY: &str = r#"routes:
  - name: partners
    match: { path_prefix: /partners }
    upstream: app
    auth: login
    population: partners
    headers: { X-Population: "{population}", X-User: "{user}" }
  - name: who
    match: { path_prefix: /who }
    upstream: app
    auth: login
    headers: { X-Population: "{population}", X-User: "{user}" }
  - name: partner-api
    match: { path_prefix: /api/partners }
    upstream: app
    auth: bearer
    bearer: { issuers: [idp, acme], audience: partner-api }
    population: partners
    headers: { X-Population: "{population}", X-User: "{user}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

struct Setup {
    /// Customers and staff sign in here; its `org` claim decides which.
    idp: TestIdp,
    /// Partners sign in here, at level mfa at least.
    acme: TestIdp,
    gw: Gateway,
    echo: Echo,
    /// `logout.notify`.
    hook: Hook,
}

async fn setup() -> Setup {
    let echo = Echo::start().await;
    let hook = Hook::start().await;
    let idp = TestIdp::start().await;
    let acme = TestIdp::start().await;
    let port = free_port();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp-secret"), idp.client_secret()).unwrap();
    std::fs::write(dir.path().join("acme-secret"), acme.client_secret()).unwrap();
    let yaml = format!(
        "listen: [{{ address: \"127.0.0.1:{port}\" }}]\n\
         public_url: \"http://127.0.0.1:{port}\"\n\
         admin: {{ address: \"127.0.0.1:{admin_port}\" }}\n\
         threads: 1\n\
         policies: policies/\n\
         session:\n  store: {{ type: memory }}\n\
         logout:\n  notify: \"{hook}\"\n\
         providers:\n\
         \x20 - id: idp\n\
         \x20   issuer: \"{idp_iss}\"\n\
         \x20   client_id: \"{idp_client}\"\n\
         \x20   client_secret: {{ file: idp-secret }}\n\
         \x20   claims: {{ org: org }}\n\
         \x20 - id: acme\n\
         \x20   issuer: \"{acme_iss}\"\n\
         \x20   client_id: \"{acme_client}\"\n\
         \x20   client_secret: {{ file: acme-secret }}\n\
         \x20   acr_levels: {{ password: \"{LOA1}\", mfa: \"{LOA2}\" }}\n\
         populations:\n\
         \x20 staff:\n\
         \x20   providers: [idp]\n\
         \x20   claims: {{ org: portcullis, groups: admins }}\n\
         \x20 partners:\n\
         \x20   providers: [acme]\n\
         \x20   acr: mfa\n\
         \x20   max_sessions: 2\n\
         \x20   absolute_timeout: 8h\n\
         \x20 customers:\n\
         \x20   providers: [idp]\n\
         \x20   claims: {{ org: shop }}\n\
         {up}\n",
        idp_iss = idp.issuer(),
        idp_client = idp.client_id(),
        acme_iss = acme.issuer(),
        acme_client = acme.client_id(),
        up = upstream_app(echo.addr),
        hook = hook.url(),
    );
    let gw = Gateway::start_in(dir, &yaml, port, admin_port, &[("routes.yaml", POLICY)]).await;
    wait_discovered(&gw).await;
    idp.allow_redirect_uri(gw.url("/.portcullis/callback"));
    acme.allow_redirect_uri(gw.url("/.portcullis/callback"));
    // Partners' default: strong enough.
    acme.set_claim("acr", json!(LOA2));
    Setup {
        idp,
        acme,
        gw,
        echo,
        hook,
    }
}

impl Setup {
    /// A new browser through a login at `provider`, returning to `/who`; the last page.
    async fn log_in_at(&self, provider: &str) -> (Browser, Page) {
        let b = Browser::new();
        let start = b
            .get(
                &self
                    .gw
                    .url(&format!("/.portcullis/login?provider={provider}&rd=/who")),
            )
            .await;
        assert_eq!(start.status, 302, "{}", start.body);
        let page = b.follow(start, 10).await;
        (b, page)
    }

    /// The session cookie's `Max-Age` set by a successful login at `provider`.
    async fn cookie_max_age_at(&self, provider: &str) -> u64 {
        let b = Browser::new();
        let mut page = b
            .get(
                &self
                    .gw
                    .url(&format!("/.portcullis/login?provider={provider}&rd=/who")),
            )
            .await;
        for _ in 0..10 {
            let set = page
                .set_cookies()
                .into_iter()
                .find(|c| c.starts_with("portcullis=") && !c.starts_with("portcullis=;"));
            if let Some(c) = set {
                return c
                    .split("; ")
                    .find_map(|a| a.strip_prefix("Max-Age="))
                    .unwrap_or_else(|| panic!("no Max-Age: {c}"))
                    .parse()
                    .unwrap();
            }
            let next = page
                .location()
                .unwrap_or_else(|| panic!("no session cookie set: {}", page.body));
            page = b.get(&next).await;
        }
        panic!("no session cookie set");
    }

    /// As [`Setup::log_in_at`], and the login must succeed.
    async fn signed_in_at(&self, provider: &str) -> Browser {
        let (b, page) = self.log_in_at(provider).await;
        assert_eq!(page.status, 200, "{}\n{}", page.body, self.gw.logs());
        assert_eq!(page.url, self.gw.url("/who"));
        b
    }

    async fn userinfo(&self, b: &Browser) -> Page {
        b.get(&self.gw.url("/.portcullis/userinfo")).await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.gw.admin("GET", "/metrics", &[]).await.text();
        series_value(&text, name, labels).unwrap_or(0.0)
    }
}

fn has_session_cookie(b: &Browser, s: &Setup) -> bool {
    b.cookie_header(&s.gw.url("/"))
        .unwrap_or_default()
        .split("; ")
        .any(|c| c.starts_with("portcullis=") && c.len() > "portcullis=".len())
}

#[tokio::test]
async fn the_population_follows_the_provider_and_the_claims() {
    let s = setup().await;
    s.idp.set_claim("org", json!("shop"));
    let customer = s.signed_in_at("idp").await;
    let seen = s.echo.last();
    assert_eq!(seen.header("x-population"), Some("customers"));
    assert_eq!(seen.header("x-user"), Some("idp:user-123"));
    let info = s.userinfo(&customer).await.json();
    assert_eq!(info["population"], "customers");
    assert_eq!(info["user"], "idp:user-123");

    // The same provider, another claim: the first population that matches.
    s.idp.set_claim("org", json!("portcullis"));
    let staff = s.signed_in_at("idp").await;
    assert_eq!(s.echo.last().header("x-population"), Some("staff"));
    assert_eq!(s.userinfo(&staff).await.json()["population"], "staff");
    // Every claim must hold (a list claim: contains the value); without `admins` in
    // groups this user is in no population.
    s.idp.set_claim("groups", json!(["staff"]));
    let (_, page) = s.log_in_at("idp").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("population-unmatched"), "{}", page.body);
    s.idp.set_claim("groups", Value::Null);

    // Another provider (same sub there): another user and population.
    let partner = s.signed_in_at("acme").await;
    let seen = s.echo.last();
    assert_eq!(seen.header("x-population"), Some("partners"));
    assert_eq!(seen.header("x-user"), Some("acme:user-123"));
    let info = s.userinfo(&partner).await.json();
    assert_eq!(info["population"], "partners");
    assert_eq!(info["user"], "acme:user-123");

    // The cookie lives as long as the population's sessions can.
    assert_eq!(s.cookie_max_age_at("acme").await, 8 * 3600);
    s.idp.set_claim("org", json!("shop"));
    assert_eq!(
        s.cookie_max_age_at("idp").await,
        12 * 3600,
        "the default absolute_timeout"
    );

    for (pop, n) in [("customers", 2.0), ("staff", 1.0), ("partners", 2.0)] {
        assert_eq!(
            s.metric("portcullis_sessions_created_total", &[("population", pop)])
                .await,
            n,
            "{pop}"
        );
    }
    // A client cannot claim a population of its own.
    let r = customer
        .get_with(&s.gw.url("/who"), &[("X-Population", "partners")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.echo.last().headers_named("x-population"), ["customers"]);
}

#[tokio::test]
async fn a_route_for_partners_refuses_other_populations() {
    let s = setup().await;
    s.idp.set_claim("org", json!("shop"));
    let customer = s.signed_in_at("idp").await;
    let before = s.echo.count();
    let r = customer
        .get_with(
            &s.gw.url("/partners/deals"),
            &[("Accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "population-not-allowed");
    let page = customer.get(&s.gw.url("/partners/deals")).await;
    assert_eq!(page.status, 403, "a browser is not sent to log in again");
    assert!(
        page.body.contains("population-not-allowed"),
        "{}",
        page.body
    );
    assert_eq!(s.echo.count(), before, "nothing reached the upstream");

    let partner = s.signed_in_at("acme").await;
    let r = partner.get(&s.gw.url("/partners/deals")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.echo.last().target, "/partners/deals");
    assert_eq!(s.echo.last().header("x-population"), Some("partners"));
}

#[tokio::test]
async fn a_user_in_no_population_gets_no_session() {
    let s = setup().await;
    for org in [json!("someone-else"), Value::Null] {
        s.idp.set_claim("org", org.clone());
        let (b, page) = s.log_in_at("idp").await;
        assert_eq!(page.status, 403, "org {org}: {}", page.body);
        assert!(
            page.url.starts_with(&s.gw.url("/.portcullis/callback")),
            "{}",
            page.url
        );
        assert!(page.body.contains("population-unmatched"), "{}", page.body);
        assert!(
            !has_session_cookie(&b, &s),
            "org {org}: a session cookie was set"
        );
        assert_eq!(s.userinfo(&b).await.status, 401);
        assert_eq!(b.get(&s.gw.url("/who")).await.status, 302);
    }
    assert_eq!(s.echo.count(), 0, "nothing reached the upstream");
    assert_eq!(
        s.metric(
            "portcullis_login_failures_total",
            &[
                ("journey", "login"),
                ("provider", "idp"),
                ("reason", "population-unmatched")
            ]
        )
        .await,
        2.0
    );
    let text = s.gw.admin("GET", "/metrics", &[]).await.text();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("portcullis_sessions_created_total{") && !l.ends_with(" 0")),
        "no session was created:\n{text}"
    );
}

#[tokio::test]
async fn a_population_with_a_minimum_acr_asks_for_it_and_refuses_less() {
    let s = setup().await;
    // Asked for at the provider partners sign in with...
    s.acme.set_claim("acr", json!(LOA1));
    let (b, page) = s.log_in_at("acme").await;
    let authorize = s
        .acme
        .requests()
        .into_iter()
        .find(|r| r.path == "/authorize")
        .expect("an authorization request");
    assert_eq!(authorize.param("acr_values"), Some(LOA2));
    // ...and a weaker login is refused at the callback, without a session.
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("acr-insufficient"), "{}", page.body);
    assert!(!has_session_cookie(&b, &s));
    assert_eq!(s.userinfo(&b).await.status, 401);
    assert_eq!(
        s.metric(
            "portcullis_login_failures_total",
            &[
                ("journey", "login"),
                ("provider", "acme"),
                ("reason", "acr-insufficient")
            ]
        )
        .await,
        1.0
    );

    // Not asked for where no population has a minimum.
    s.idp.set_claim("org", json!("shop"));
    s.signed_in_at("idp").await;
    let authorize = s
        .idp
        .requests()
        .into_iter()
        .find(|r| r.path == "/authorize")
        .unwrap();
    assert_eq!(authorize.param("acr_values"), None);

    // At the required level the partner signs in.
    s.acme.set_claim("acr", json!(LOA2));
    let ok = s.signed_in_at("acme").await;
    let info = s.userinfo(&ok).await.json();
    assert_eq!(info["population"], "partners");
    assert_eq!(info["acr"], LOA2);
}

#[tokio::test]
async fn logins_over_max_sessions_end_the_oldest() {
    let s = setup().await;
    let first = s.signed_in_at("acme").await;
    let second = s.signed_in_at("acme").await;
    assert_eq!(
        s.metric("portcullis_sessions_ended_total", &[("reason", "evicted")])
            .await,
        0.0
    );
    let third = s.signed_in_at("acme").await;
    assert_eq!(
        s.userinfo(&first).await.status,
        401,
        "the oldest is evicted"
    );
    assert_eq!(s.userinfo(&second).await.status, 200);
    assert_eq!(s.userinfo(&third).await.status, 200);
    assert_eq!(
        s.metric("portcullis_sessions_ended_total", &[("reason", "evicted")])
            .await,
        1.0
    );
    let event = s.hook.wait_for("evicted").await;
    assert_eq!(event["event"], "session-ended");
    assert_eq!(event["user"], "acme:user-123");
    assert_eq!(event["population"], "partners");
    assert_eq!(event["sessions"], 1);
    // The limit is per user: a customer's logins do not count against partners.
    s.idp.set_claim("org", json!("shop"));
    for _ in 0..3 {
        s.signed_in_at("idp").await;
    }
    assert_eq!(s.userinfo(&second).await.status, 200);
    assert_eq!(
        s.metric("portcullis_sessions_ended_total", &[("reason", "evicted")])
            .await,
        1.0
    );
}

/// An access token for `partner-api` from `idp`, with `claims` over a valid base.
fn access_token(idp: &TestIdp, claims: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({
        "iss": idp.issuer(),
        "sub": "svc-7",
        "aud": "partner-api",
        "iat": now,
        "exp": now + 300,
    });
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    idp.mint(c, TokenHeader::rs256().typ("at+jwt"))
}

#[tokio::test]
async fn bearer_tokens_are_placed_in_populations_too() {
    let s = setup().await;
    let call = |token: String| {
        let gw = &s.gw;
        async move {
            gw.get(
                "/api/partners/orders",
                &[
                    ("Authorization", &format!("Bearer {token}")),
                    ("Accept", "application/json"),
                ],
            )
            .await
        }
    };
    let r = call(access_token(&s.acme, json!({ "acr": LOA2 }))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.echo.last().header("x-population"), Some("partners"));
    assert_eq!(s.echo.last().header("x-user"), Some("acme:svc-7"));
    let r = call(access_token(&s.idp, json!({ "org": "shop" }))).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "population-not-allowed");
    let r = call(access_token(&s.idp, json!({ "org": "other" }))).await;
    assert_eq!(r.status, 403, "in no population: {}", r.text());
    // Partners sign in at level mfa at least; a token below it is no partner's.
    let before = s.echo.count();
    let r = call(access_token(&s.acme, json!({ "acr": LOA1 }))).await;
    assert_eq!(
        r.status,
        403,
        "a partner token below the population's acr passed: {}",
        r.text()
    );
    assert_eq!(r.json()["error"], "acr-insufficient");
    assert_eq!(s.echo.count(), before);
}
