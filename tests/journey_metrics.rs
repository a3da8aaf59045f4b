//! Journey metrics (issue 6): scripted journeys against a running gateway (with the
//! real `oidc-provider` where a whole login matters, the in-process test IdP elsewhere),
//! then `/metrics` scraped before and after and the exact counter movements asserted:
//! the login funnel (started, sent, callbacks, completed, failures, duration), step-up
//! outcomes, sign-up journeys through the chooser, named journey steps on routes, and
//! abandoned logins (in process on a fake clock, in memory and with two runtimes sharing
//! a real Redis, and once through the binary).

mod common;

use common::browser::{Browser, Page};
use common::identity::{session_yaml, wait_discovered, with_test_idp, IdpGateway, POLICY};
use common::oidc_provider::OidcProvider;
use common::redis::RedisServer;
use common::test_idp::{Misbehaviour, TestIdp};
use common::{free_port, gateway_yaml, series_value, upstream_app, Echo, Gateway};
use portcullis::clock::{Clock, FakeClock, SystemClock};
use portcullis::config;
use portcullis::endpoints::count_abandoned;
use portcullis::metrics::Metrics;
use portcullis::oidc::flow::{self, CallbackParams, StartOptions, StepUpState};
use portcullis::runtime::Runtime;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const STARTED: &str = "portcullis_login_started_total";
const SENT: &str = "portcullis_login_sent_total";
const CALLBACKS: &str = "portcullis_login_callbacks_total";
const COMPLETED: &str = "portcullis_login_completed_total";
const FAILURES: &str = "portcullis_login_failures_total";
const ABANDONED: &str = "portcullis_login_abandoned_total";
const DURATION_COUNT: &str = "portcullis_login_duration_seconds_count";
const STEP_UPS: &str = "portcullis_step_ups_total";
const JOURNEY_STEPS: &str = "portcullis_journey_steps_total";

/// The families compared whole: every series of them that moves must be expected.
const FUNNEL: &[&str] = &[
    STARTED,
    SENT,
    CALLBACKS,
    COMPLETED,
    FAILURES,
    ABANDONED,
    DURATION_COUNT,
    STEP_UPS,
];

// ---------------------------------------------------------------------------
// Reading metrics.
// ---------------------------------------------------------------------------

/// Series of some families, keyed `name{labels sorted by name}`.
type Series = BTreeMap<String, f64>;

/// `name{k="v",...}` with the labels sorted, as [`parse_series`] keys them.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

/// Every series of `families` in Prometheus text. (Label values here are config names
/// and fixed codes: no commas or quotes inside them.)
fn parse_series(text: &str, families: &[&str]) -> Series {
    let mut out = Series::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if !families.contains(&name) {
            continue;
        }
        let mut l: Vec<&str> = labels.split(',').filter(|s| !s.is_empty()).collect();
        l.sort();
        let value: f64 = value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        out.insert(format!("{name}{{{}}}", l.join(",")), value);
    }
    out
}

/// What moved from `before` to `after` (a series absent counts as 0).
fn moved(before: &Series, after: &Series) -> Series {
    let mut out = Series::new();
    for k in before.keys().chain(after.keys()) {
        let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

/// An expected movement: `(name, labels, delta)`.
type Move<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

fn expect(moves: &[Move<'_>]) -> Series {
    moves
        .iter()
        .map(|(name, labels, d)| (key(name, labels), *d))
        .collect()
}

async fn scrape(gw: &Gateway) -> String {
    let r = gw.admin("GET", "/metrics", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

async fn funnel(gw: &Gateway) -> Series {
    parse_series(&scrape(gw).await, FUNNEL)
}

fn in_process(rt: &Runtime, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series_value(
        &String::from_utf8(rt.metrics.render()).unwrap(),
        name,
        labels,
    )
}

// ---------------------------------------------------------------------------
// Gateways.
// ---------------------------------------------------------------------------

const OP_SECRET: &str = "journey-metrics-secret-0123456789abcdef";

/// Routes for the real provider: `/account` needs a login, `/vault` steps up to loa2
/// (the provider gives it only with the one-time code).
const OP_POLICY: &str = r#"routes:
  - name: vault
    match: { path_prefix: /vault }
    upstream: app
    auth: login
    step_up: { acr: loa2, max_age: 10m, prompt_login: true }
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    headers: { X-User: "{sub}", X-Acr: "{acr}" }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// The real `oidc-provider` and a gateway using it as provider `op`.
struct OpSetup {
    op: OidcProvider,
    gw: Gateway,
    echo: Echo,
}

async fn op_setup() -> OpSetup {
    let echo = Echo::start().await;
    let (op, gw) = common::oidc_provider::with_gateway(
        OP_SECRET,
        &echo,
        &session_yaml(None),
        "    scopes: [openid, email, profile, groups]\n    acr_levels: { loa1: \"urn:portcullis:loa:1\", loa2: \"urn:portcullis:loa:2\" }",
        OP_POLICY,
    )
    .await;
    OpSetup { op, gw, echo }
}

/// From `start` (a page that leads to the provider), signs in as alice and returns the
/// gateway callback's answer, not followed.
async fn through_provider(s: &OpSetup, b: &Browser, start: Page, otp: Option<&str>) -> Page {
    let back = b
        .sign_in_at_provider(start, &s.op.issuer, "alice", "wonderland", otp)
        .await;
    let to = back.location().unwrap_or_else(|| {
        panic!(
            "the provider did not send us back: {} {}\n{}",
            back.status,
            back.body,
            s.op.logs()
        )
    });
    assert!(to.starts_with(&s.gw.url("/.portcullis/callback")), "{to}");
    b.get(&to).await
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// ---------------------------------------------------------------------------
// 1. A completed login with the real oidc-provider.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_completed_login_moves_each_funnel_step_of_its_journey_by_one() {
    let s = op_setup().await;
    let before = funnel(&s.gw).await;
    for name in [STARTED, SENT, CALLBACKS, COMPLETED] {
        assert!(
            !before.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "{name} has series before any login: {before:?}"
        );
    }

    let b = Browser::new();
    let start = b.get(&s.gw.url("/account/orders")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let back = through_provider(&s, &b, start, None).await;
    assert_eq!(back.status, 302, "{}\n{}", back.body, s.gw.logs());
    let page = b.follow(back, 5).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account/orders"));
    assert_eq!(s.echo.last().header("x-user"), Some("alice"));

    let login: &[(&str, &str)] = &[("journey", "login")];
    let login_op: &[(&str, &str)] = &[("journey", "login"), ("provider", "op")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, login, 1.0),
            (SENT, login_op, 1.0),
            (CALLBACKS, login_op, 1.0),
            (COMPLETED, login_op, 1.0),
            (DURATION_COUNT, login_op, 1.0),
        ]),
        "exactly one of each funnel step, and no failure, abandonment or step-up"
    );
}

// ---------------------------------------------------------------------------
// 2. Callbacks that match no pending login, and a provider's refusal.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_callback_with_a_bad_state_counts_as_an_unknown_state_mismatch_only() {
    let s = with_test_idp(&session_yaml(None), "", POLICY).await;
    let before = funnel(&s.gw).await;
    let bogus = "A".repeat(43);
    let r =
        s.gw.get(
            &format!("/.portcullis/callback?state={bogus}&code=abc"),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("state-mismatch"), "{}", r.text());
    let unknown: &[(&str, &str)] = &[("journey", "unknown"), ("provider", "unknown")];
    let mismatch: &[(&str, &str)] = &[
        ("journey", "unknown"),
        ("provider", "unknown"),
        ("reason", "state-mismatch"),
    ];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[(CALLBACKS, unknown, 1.0), (FAILURES, mismatch, 1.0)]),
        "nothing else in the funnel moves"
    );

    // A callback replayed after a completed login is one more of the same.
    let b = Browser::new();
    let start = b.get(&s.gw.url("/account")).await;
    let at_idp = b.get(&start.location().unwrap()).await;
    let authorize = b.get(&at_idp.location().unwrap()).await;
    let callback = authorize.location().unwrap();
    assert!(
        callback.starts_with(&s.gw.url("/.portcullis/callback")),
        "{callback}"
    );
    let done = b.get(&callback).await;
    assert_eq!(done.status, 302, "{}\n{}", done.body, s.gw.logs());
    let mid = funnel(&s.gw).await;
    let replay = b.get(&callback).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(
        moved(&mid, &funnel(&s.gw).await),
        expect(&[(CALLBACKS, unknown, 1.0), (FAILURES, mismatch, 1.0)]),
        "a replayed callback matches no pending login"
    );
}

#[tokio::test]
async fn a_provider_refusal_counts_a_callback_and_an_access_denied_failure_of_its_journey() {
    let s = with_test_idp(&session_yaml(None), "", POLICY).await;
    s.idp.set(Misbehaviour::AccessDenied);
    let before = funnel(&s.gw).await;
    let b = Browser::new();
    let page = b.follow(b.get(&s.gw.url("/account")).await, 10).await;
    assert_eq!(page.status, 400, "{}\n{}", page.body, s.gw.logs());
    assert!(page.body.contains("access-denied"), "{}", page.body);
    let login_idp: &[(&str, &str)] = &[("journey", "login"), ("provider", "idp")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, &[("journey", "login")], 1.0),
            (SENT, login_idp, 1.0),
            (CALLBACKS, login_idp, 1.0),
            (
                FAILURES,
                &[
                    ("journey", "login"),
                    ("provider", "idp"),
                    ("reason", "access-denied")
                ],
                1.0
            ),
        ])
    );
}

#[tokio::test]
async fn a_callback_from_another_browser_fails_its_own_journey_not_an_unknown_one() {
    let s = with_test_idp(&session_yaml(None), "", POLICY).await;
    let before = funnel(&s.gw).await;
    let b = Browser::new();
    let started = b
        .get(&s.gw.url("/.portcullis/login?journey=signup&rd=/"))
        .await;
    assert_eq!(started.status, 302, "{}", started.body);
    let answered = b.get(&started.location().unwrap()).await;
    let callback = answered.location().unwrap();
    // Delivered by a browser without the login's binding cookie.
    let elsewhere = Browser::new().get(&callback).await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);
    assert!(
        elsewhere.body.contains("browser-mismatch"),
        "{}",
        elsewhere.body
    );
    let signup_idp: &[(&str, &str)] = &[("journey", "signup"), ("provider", "idp")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, &[("journey", "signup")], 1.0),
            (SENT, signup_idp, 1.0),
            (CALLBACKS, signup_idp, 1.0),
            (
                FAILURES,
                &[
                    ("journey", "signup"),
                    ("provider", "idp"),
                    ("reason", "browser-mismatch")
                ],
                1.0
            ),
        ])
    );
}

// ---------------------------------------------------------------------------
// 3. Abandoned logins: in process on a fake clock.
// ---------------------------------------------------------------------------

/// The login timeout of the in-process runtimes.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A runtime like the binary's, on `clock`, with the test IdP as provider `idp` and the
/// given session store (YAML flow mapping). Its metrics are its own.
fn runtime(clock: &FakeClock, idp: &TestIdp, store: &str) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("secret"), idp.client_secret()).unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "listen: [{{ address: \"127.0.0.1:8080\" }}]\n\
             public_url: \"https://shop.example.com\"\n\
             session: {{ store: {store}, login_timeout: {}s }}\n\
             providers:\n\
             \x20 - id: idp\n\
             \x20   issuer: \"{}\"\n\
             \x20   client_id: \"{}\"\n\
             \x20   client_secret: {{ file: secret }}\n\
             \x20   acr_levels: {{ password: \"urn:pw\", mfa: \"urn:mfa\" }}\n\
             upstreams:\n  app: {{ targets: [\"127.0.0.1:3000\"] }}\n",
            LOGIN_TIMEOUT.as_secs(),
            idp.issuer(),
            idp.client_id(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        "routes:\n\
         \x20 - { name: secure, match: { path_prefix: /secure }, upstream: app, auth: login, step_up: { acr: mfa } }\n\
         \x20 - { name: account, match: { path_prefix: / }, upstream: app, auth: login }\n",
    )
    .unwrap();
    let cfg = config::load(&dir.path().join("gateway.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.session.login_timeout, LOGIN_TIMEOUT);
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Runtime::build(cfg, None, &Arc::new(Metrics::new()), &clock, 1).unwrap()
}

/// A fake clock at the real time (so that the test IdP's tokens are current on it).
fn clock_now() -> FakeClock {
    let clock = FakeClock::new();
    let real = SystemClock.now_ms();
    clock.advance(Duration::from_millis(real.saturating_sub(clock.now_ms())));
    clock
}

async fn idp_for_runtime() -> TestIdp {
    let idp = TestIdp::start().await;
    idp.allow_redirect_uri("https://shop.example.com/.portcullis/callback");
    idp
}

/// Discovers the runtime's provider `idp` (the binary's background task does this).
async fn discover(rt: &Runtime) {
    let p = &rt.providers["idp"];
    p.refresh().await;
    assert!(p.discovered().is_some(), "the test IdP was not discovered");
}

/// Starts a login at `idp` through the flow, as `/.portcullis/login` does.
async fn start_login(rt: &Runtime, options: &StartOptions<'_>) -> flow::Started {
    flow::start(
        &rt.providers["idp"],
        rt.store.as_ref(),
        "/",
        None,
        options,
        rt.config.session.login_timeout,
        rt.clock.now_ms(),
    )
    .await
    .unwrap_or_else(|f| panic!("login start failed: {f:?}"))
}

/// The test IdP's answer to `started`'s authorization request: the callback's query.
async fn authorize_at_idp(started: &flow::Started) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(&started.location).send().await.unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to.starts_with("https://shop.example.com/.portcullis/callback?"),
        "{to}"
    );
    to.split_once('?').unwrap().1.to_string()
}

/// The callback of `started` (answered by the test IdP), delivered to the flow now.
async fn call_back(
    rt: &Runtime,
    started: &flow::Started,
    query: &str,
) -> Result<flow::Finished, flow::Failure> {
    let params = CallbackParams::parse(query).unwrap();
    flow::finish(
        |id| rt.providers.get(id).map(|p| p.as_ref()),
        rt.store.as_ref(),
        &params,
        started.new_binding.as_deref(),
        flow::Client {
            ip: None,
            user_agent: None,
        },
        rt.clock.now_ms(),
    )
    .await
}

fn abandoned(rt: &Runtime, journey: &str) -> Option<f64> {
    in_process(rt, ABANDONED, &[("journey", journey), ("provider", "idp")])
}

#[tokio::test]
async fn a_login_is_counted_abandoned_once_when_it_times_out_and_not_before() {
    let clock = clock_now();
    let idp = idp_for_runtime().await;
    let rt = runtime(&clock, &idp, "{ type: memory }");
    discover(&rt).await;
    start_login(&rt, &StartOptions::default()).await;

    assert_eq!(count_abandoned(&rt).await.unwrap(), 0, "just started");
    clock.advance(LOGIN_TIMEOUT - Duration::from_millis(1));
    assert_eq!(
        count_abandoned(&rt).await.unwrap(),
        0,
        "a millisecond before the timeout"
    );
    assert_eq!(abandoned(&rt, "login"), None);

    clock.advance(Duration::from_millis(1));
    assert_eq!(count_abandoned(&rt).await.unwrap(), 1, "at the timeout");
    assert_eq!(abandoned(&rt, "login"), Some(1.0));
    // Taken once: later sweeps find nothing more.
    clock.advance(LOGIN_TIMEOUT);
    assert_eq!(count_abandoned(&rt).await.unwrap(), 0);
    assert_eq!(abandoned(&rt, "login"), Some(1.0));
    let text = String::from_utf8(rt.metrics.render()).unwrap();
    assert_eq!(
        parse_series(&text, &[ABANDONED]),
        expect(&[(ABANDONED, &[("journey", "login"), ("provider", "idp")], 1.0)]),
        "one series, one count"
    );
    assert!(
        !text.contains(&format!("{STEP_UPS}{{")),
        "a login is no step-up: {text}"
    );
}

#[tokio::test]
async fn a_login_whose_callback_came_is_never_counted_abandoned() {
    let clock = clock_now();
    let idp = idp_for_runtime().await;
    let rt = runtime(&clock, &idp, "{ type: memory }");
    discover(&rt).await;

    // One login completes, one comes back to a browser that lost its binding (a failed
    // callback is still a callback), one never comes back.
    let completed = start_login(&rt, &StartOptions::default()).await;
    let failed = start_login(&rt, &StartOptions::default()).await;
    let _abandoned = start_login(&rt, &StartOptions::default()).await;

    let query = authorize_at_idp(&completed).await;
    let done = call_back(&rt, &completed, &query).await;
    assert!(done.is_ok(), "{:?}", done.err());

    let query = authorize_at_idp(&failed).await;
    let params = CallbackParams::parse(&query).unwrap();
    let refused = flow::finish(
        |id| rt.providers.get(id).map(|p| p.as_ref()),
        rt.store.as_ref(),
        &params,
        None,
        flow::Client {
            ip: None,
            user_agent: None,
        },
        clock.now_ms(),
    )
    .await;
    assert_eq!(refused.err().map(|f| f.reason), Some("browser-mismatch"));

    clock.advance(LOGIN_TIMEOUT);
    assert_eq!(
        count_abandoned(&rt).await.unwrap(),
        1,
        "only the login without a callback"
    );
    assert_eq!(abandoned(&rt, "login"), Some(1.0));
    clock.advance(LOGIN_TIMEOUT);
    assert_eq!(count_abandoned(&rt).await.unwrap(), 0);
    assert_eq!(abandoned(&rt, "login"), Some(1.0));
}

#[tokio::test]
async fn at_the_timeout_a_login_is_either_completed_or_abandoned_never_both() {
    let clock = clock_now();
    let idp = idp_for_runtime().await;
    let rt = runtime(&clock, &idp, "{ type: memory }");
    discover(&rt).await;
    let early = start_login(&rt, &StartOptions::default()).await;
    let late = start_login(&rt, &StartOptions::default()).await;
    let (early_query, late_query) = (
        authorize_at_idp(&early).await,
        authorize_at_idp(&late).await,
    );

    // A millisecond before the timeout the callback still comes in time.
    clock.advance(LOGIN_TIMEOUT - Duration::from_millis(1));
    let done = call_back(&rt, &early, &early_query).await;
    assert!(done.is_ok(), "{:?}", done.err());
    // At the timeout the other one is abandoned, and its callback no longer counts.
    clock.advance(Duration::from_millis(1));
    assert_eq!(count_abandoned(&rt).await.unwrap(), 1);
    assert_eq!(abandoned(&rt, "login"), Some(1.0));
    let refused = call_back(&rt, &late, &late_query).await;
    assert_eq!(
        refused.err().map(|f| f.reason),
        Some("state-mismatch"),
        "a login counted abandoned must not complete"
    );
}

#[tokio::test]
async fn abandoned_sign_ups_and_step_ups_are_counted_by_journey_and_route() {
    let clock = clock_now();
    let idp = idp_for_runtime().await;
    let rt = runtime(&clock, &idp, "{ type: memory }");
    discover(&rt).await;
    start_login(
        &rt,
        &StartOptions {
            prompt_create: true,
            ..StartOptions::default()
        },
    )
    .await;
    let step = StepUpState {
        route: "secure".into(),
        session: "0".repeat(64),
        accepted: vec!["urn:mfa".into()],
        max_age: None,
        elevation_ms: 0,
    };
    start_login(
        &rt,
        &StartOptions {
            acr_values: Some("urn:mfa"),
            step_up: Some(step),
            ..StartOptions::default()
        },
    )
    .await;
    assert_eq!(count_abandoned(&rt).await.unwrap(), 0);
    clock.advance(LOGIN_TIMEOUT);
    assert_eq!(count_abandoned(&rt).await.unwrap(), 2);
    let text = String::from_utf8(rt.metrics.render()).unwrap();
    assert_eq!(
        parse_series(&text, &[ABANDONED, STEP_UPS]),
        expect(&[
            (
                ABANDONED,
                &[("journey", "signup"), ("provider", "idp")],
                1.0
            ),
            (
                ABANDONED,
                &[("journey", "step-up"), ("provider", "idp")],
                1.0
            ),
            (
                STEP_UPS,
                &[
                    ("route", "secure"),
                    ("outcome", "abandoned"),
                    ("reason", "timed-out")
                ],
                1.0
            ),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_gateways_sharing_redis_an_abandoned_login_is_counted_by_exactly_one() {
    let redis = RedisServer::start().await;
    let clock = clock_now();
    let idp = idp_for_runtime().await;
    let store = format!(
        "{{ type: redis, url: \"{}\", key_prefix: \"jm:\" }}",
        redis.url()
    );
    let a = Arc::new(runtime(&clock, &idp, &store));
    let b = Arc::new(runtime(&clock, &idp, &store));
    assert!(matches!(
        a.config.session.store,
        config::StoreSpec::Redis { .. }
    ));
    discover(&a).await;
    discover(&b).await;
    let counted = |rt: &Runtime| abandoned(rt, "login").unwrap_or(0.0);

    // Started at one gateway, timed out, counted by the other: one queue for the fleet.
    start_login(&a, &StartOptions::default()).await;
    clock.advance(LOGIN_TIMEOUT);
    assert_eq!(count_abandoned(&b).await.unwrap(), 1);
    assert_eq!(count_abandoned(&a).await.unwrap(), 0, "already taken");
    assert_eq!((counted(&a), counted(&b)), (0.0, 1.0));

    // One login, swept by both at once.
    start_login(&b, &StartOptions::default()).await;
    let (na, nb) = tokio::join!(count_abandoned(&a), count_abandoned(&b));
    assert_eq!((na.unwrap(), nb.unwrap()), (0, 0), "not timed out yet");
    clock.advance(LOGIN_TIMEOUT);
    let (na, nb) = tokio::join!(count_abandoned(&a), count_abandoned(&b));
    let (na, nb) = (na.unwrap(), nb.unwrap());
    assert_eq!(na + nb, 1, "counted once in the fleet: {na} + {nb}");
    assert_eq!(counted(&a) + counted(&b), 2.0);
    assert_eq!((counted(&a), counted(&b)), (na as f64, 1.0 + nb as f64));

    // Many logins, many sweeps racing: each counted exactly once.
    for _ in 0..20 {
        start_login(&a, &StartOptions::default()).await;
    }
    clock.advance(LOGIN_TIMEOUT);
    let sweeps: Vec<_> = (0..4)
        .map(|i| {
            let rt = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { count_abandoned(&rt).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for s in sweeps {
        total += s.await.unwrap();
    }
    assert_eq!(total, 20);
    assert_eq!(counted(&a) + counted(&b), 22.0);
    let (na, nb) = tokio::join!(count_abandoned(&a), count_abandoned(&b));
    assert_eq!((na.unwrap(), nb.unwrap()), (0, 0));
}

#[tokio::test]
async fn through_the_binary_a_login_left_at_the_provider_is_counted_abandoned() {
    let s = with_test_idp(
        &format!("{}  login_timeout: 1s\n", session_yaml(None)),
        "",
        POLICY,
    )
    .await;
    let before = funnel(&s.gw).await;
    let r = s.gw.get("/.portcullis/login?rd=/account", &[]).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(s.idp.issuer())),
        "{:?}",
        r.header("location")
    );
    let labels: &[(&str, &str)] = &[("journey", "login"), ("provider", "idp")];
    let seen = common::eventually(Duration::from_secs(20), || async {
        let now = funnel(&s.gw).await;
        now.contains_key(&key(ABANDONED, labels)).then_some(now)
    })
    .await
    .unwrap_or_else(|| panic!("not counted abandoned:\n{}", s.gw.logs()));
    assert_eq!(
        moved(&before, &seen),
        expect(&[
            (STARTED, &[("journey", "login")], 1.0),
            (SENT, labels, 1.0),
            (ABANDONED, labels, 1.0),
        ])
    );
}

// ---------------------------------------------------------------------------
// 4. A step-up round trip with the real oidc-provider.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_step_up_round_trip_moves_the_step_up_journey_and_its_outcomes_by_one() {
    let s = op_setup().await;
    let b = Browser::new();
    let start = b.get(&s.gw.url("/account")).await;
    assert_eq!(start.status, 302, "{}", start.body);
    let back = through_provider(&s, &b, start, None).await;
    let page = b.follow(back, 5).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(s.echo.last().header("x-acr"), Some("urn:portcullis:loa:1"));

    let before = funnel(&s.gw).await;
    let challenge = b.get(&s.gw.url("/vault/keys")).await;
    assert_eq!(challenge.status, 302, "{}", challenge.body);
    let to = challenge.location().unwrap();
    assert_eq!(
        query_param(&to, "step_up").as_deref(),
        Some("vault"),
        "{to}"
    );
    let started = b.get(&to).await;
    assert_eq!(started.status, 302, "{}", started.body);
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(&s.op.issuer), "{authorize}");
    assert_eq!(
        query_param(&authorize, "acr_values").as_deref(),
        Some("urn:portcullis:loa:2")
    );
    let back = through_provider(&s, &b, started, Some("123456")).await;
    assert_eq!(back.status, 302, "{}\n{}", back.body, s.gw.logs());
    let page = b.get(&back.location().unwrap()).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(s.echo.last().header("x-acr"), Some("urn:portcullis:loa:2"));

    let step_up_op: &[(&str, &str)] = &[("journey", "step-up"), ("provider", "op")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (
                STEP_UPS,
                &[
                    ("route", "vault"),
                    ("outcome", "challenged"),
                    ("reason", "step-up-required")
                ],
                1.0
            ),
            (STARTED, &[("journey", "step-up")], 1.0),
            (SENT, step_up_op, 1.0),
            (CALLBACKS, step_up_op, 1.0),
            (COMPLETED, step_up_op, 1.0),
            (DURATION_COUNT, step_up_op, 1.0),
            (
                STEP_UPS,
                &[
                    ("route", "vault"),
                    ("outcome", "completed"),
                    ("reason", "ok")
                ],
                1.0
            ),
        ]),
        "the step-up journey, once, and nothing of the login journey"
    );
}

// ---------------------------------------------------------------------------
// 5. Sign-up journeys, direct and through the chooser.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_signup_link_asks_for_registration_and_counts_a_signup_journey() {
    let s = with_test_idp(&session_yaml(None), "", POLICY).await;
    let before = funnel(&s.gw).await;
    let b = Browser::new();
    let started = b
        .get(&s.gw.url("/.portcullis/login?journey=signup&rd=%2Faccount"))
        .await;
    assert_eq!(started.status, 302, "{}", started.body);
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(s.idp.issuer()), "{authorize}");
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("create"));
    let signup_idp: &[(&str, &str)] = &[("journey", "signup"), ("provider", "idp")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, &[("journey", "signup")], 1.0),
            (SENT, signup_idp, 1.0)
        ])
    );

    // The user comes back signed up: the rest of the funnel, as a sign-up.
    let mid = funnel(&s.gw).await;
    let page = b.follow(started, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account"));
    assert_eq!(
        moved(&mid, &funnel(&s.gw).await),
        expect(&[
            (CALLBACKS, signup_idp, 1.0),
            (COMPLETED, signup_idp, 1.0),
            (DURATION_COUNT, signup_idp, 1.0),
        ])
    );

    // Any other journey is refused before anything is counted.
    let mid = funnel(&s.gw).await;
    let r =
        s.gw.get("/.portcullis/login?journey=recover&rd=/", &[])
            .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("journey-unknown"), "{}", r.text());
    assert_eq!(moved(&mid, &funnel(&s.gw).await), Series::new());
}

/// Two test IdPs, `idp` and `other`, and a gateway offering both (so no provider is
/// pinned: the login endpoint shows its chooser).
struct TwoIdps {
    _idp: TestIdp,
    other: TestIdp,
    gw: Gateway,
    _echo: Echo,
}

async fn two_idps() -> TwoIdps {
    let echo = Echo::start().await;
    let (idp, other) = tokio::join!(TestIdp::start(), TestIdp::start());
    let port = free_port();
    let admin_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idp-secret"), idp.client_secret()).unwrap();
    std::fs::write(dir.path().join("other-secret"), other.client_secret()).unwrap();
    let extra = format!(
        "{}providers:\n\
         \x20 - id: idp\n    issuer: \"{}\"\n    client_id: \"{}\"\n    client_secret: {{ file: idp-secret }}\n\
         \x20 - id: other\n    issuer: \"{}\"\n    client_id: \"{}\"\n    client_secret: {{ file: other-secret }}\n\
         {}",
        session_yaml(None),
        idp.issuer(),
        idp.client_id(),
        other.issuer(),
        other.client_id(),
        upstream_app(echo.addr),
    );
    let gw = Gateway::start_in(
        dir,
        &gateway_yaml(port, admin_port, &extra),
        port,
        admin_port,
        &[("routes.yaml", POLICY)],
    )
    .await;
    wait_discovered(&gw).await;
    for p in [&idp, &other] {
        p.allow_redirect_uri(gw.url("/.portcullis/callback"));
    }
    TwoIdps {
        _idp: idp,
        other,
        gw,
        _echo: echo,
    }
}

#[tokio::test]
async fn a_signup_through_the_chooser_is_one_signup_journey_sent_to_the_chosen_provider() {
    let s = two_idps().await;
    let before = funnel(&s.gw).await;
    let b = Browser::new();
    let chooser = b
        .get(&s.gw.url("/.portcullis/login?journey=signup&rd=%2Faccount"))
        .await;
    assert_eq!(chooser.status, 200, "{}\n{}", chooser.body, s.gw.logs());
    let buttons = chooser.buttons("by-provider");
    assert!(
        buttons
            .iter()
            .any(|(n, v, _)| n == "provider" && v == "other"),
        "{buttons:?}\n{}",
        chooser.body
    );
    let form = chooser.form("by-provider").expect("the chooser's form");
    assert!(
        form.fields
            .contains(&("journey".to_string(), "signup".to_string())),
        "the chooser keeps the journey: {:?}",
        form.fields
    );
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[(STARTED, &[("journey", "signup")], 1.0)]),
        "the chooser shown: a sign-up begun, sent nowhere yet"
    );

    let started = b.get(&form.get_url(&[("provider", "other")])).await;
    assert_eq!(started.status, 302, "{}\n{}", started.body, s.gw.logs());
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(s.other.issuer()), "{authorize}");
    assert_eq!(query_param(&authorize, "prompt").as_deref(), Some("create"));
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, &[("journey", "signup")], 1.0),
            (SENT, &[("journey", "signup"), ("provider", "other")], 1.0),
        ]),
        "the chooser's answer is the same journey: started once, sent once"
    );

    // The sign-up completes at the chosen provider, as a sign-up.
    let page = b.follow(started, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    let signup_other: &[(&str, &str)] = &[("journey", "signup"), ("provider", "other")];
    assert_eq!(
        moved(&before, &funnel(&s.gw).await),
        expect(&[
            (STARTED, &[("journey", "signup")], 1.0),
            (SENT, signup_other, 1.0),
            (CALLBACKS, signup_other, 1.0),
            (COMPLETED, signup_other, 1.0),
            (DURATION_COUNT, signup_other, 1.0),
        ])
    );
}

// ---------------------------------------------------------------------------
// 6. Named journeys on routes.
// ---------------------------------------------------------------------------

const JOURNEY_POLICY: &str = r#"routes:
  - name: cart
    match: { path_prefix: /cart }
    upstream: app
    auth: public
    journey: { name: checkout, step: 1 }
  - name: pay
    match: { path_prefix: /pay }
    upstream: app
    auth: login
    journey: { name: checkout, step: 2 }
  - name: outcome
    match: { path_prefix: /status/ }
    upstream: app
    auth: public
    journey: { name: checkout, step: done }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

fn steps(moves: &[(&str, &str, f64)]) -> Series {
    let mut out = Series::new();
    for step in ["1", "2", "done"] {
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let n = moves
                .iter()
                .find(|(s, c, _)| *s == step && *c == class)
                .map_or(0.0, |m| m.2);
            out.insert(
                key(
                    JOURNEY_STEPS,
                    &[
                        ("journey", "checkout"),
                        ("step", step),
                        ("status_class", class),
                    ],
                ),
                n,
            );
        }
    }
    out
}

async fn journey_steps(gw: &Gateway) -> Series {
    parse_series(&scrape(gw).await, &[JOURNEY_STEPS])
}

/// Waits until the journey steps are `want` (requests are counted once answered), and
/// fails with what they are.
async fn assert_steps(s: &IdpGateway, want: Series) {
    let got = common::eventually(Duration::from_secs(5), || async {
        let now = journey_steps(&s.gw).await;
        (now == want).then_some(now)
    })
    .await;
    if got.is_none() {
        assert_eq!(journey_steps(&s.gw).await, want, "{}", s.gw.logs());
    }
}

#[tokio::test]
async fn requests_to_journey_routes_count_their_step_by_status_class() {
    let s = with_test_idp(&session_yaml(None), "", JOURNEY_POLICY).await;
    // Declared steps exist from the start, at zero; no other route has a series.
    assert_eq!(journey_steps(&s.gw).await, steps(&[]));

    for _ in 0..3 {
        assert_eq!(s.gw.get("/cart", &[]).await.status, 200);
    }
    let r = s.gw.get("/pay", &[]).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let r = s.gw.get("/pay", &[("Accept", "application/json")]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(s.gw.get("/status/404", &[]).await.status, 404);
    assert_eq!(s.gw.get("/status/503", &[]).await.status, 503);
    for path in ["/", "/other"] {
        assert_eq!(s.gw.get(path, &[]).await.status, 200);
    }
    assert_steps(
        &s,
        steps(&[
            ("1", "2xx", 3.0),
            ("2", "3xx", 1.0),
            ("2", "4xx", 1.0),
            ("done", "4xx", 1.0),
            ("done", "5xx", 1.0),
        ]),
    )
    .await;

    // A browser signs in on the way to pay: the gateway's own endpoints in between are
    // no step; pay counts its redirect and then its answer.
    let b = Browser::new();
    let page = b.follow(b.get(&s.gw.url("/pay/now")).await, 10).await;
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/pay/now"));
    assert_steps(
        &s,
        steps(&[
            ("1", "2xx", 3.0),
            ("2", "2xx", 1.0),
            ("2", "3xx", 2.0),
            ("2", "4xx", 1.0),
            ("done", "4xx", 1.0),
            ("done", "5xx", 1.0),
        ]),
    )
    .await;
}

/// `portcullis check` on a gateway with `policy`; returns (exit code, stderr).
fn check(policy: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    common::write_config(
        dir.path(),
        &gateway_yaml(
            free_port(),
            free_port(),
            &upstream_app("127.0.0.1:9".parse().unwrap()),
        ),
        &[("routes.yaml", policy)],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_journey_step_that_cannot_be_a_metric_label_is_refused_by_check() {
    let route = |name: &str, prefix: &str, journey: &str| {
        format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: app\n    auth: public\n    journey: {journey}\n"
        )
    };
    let good = format!(
        "routes:\n{}{}",
        route("cart", "/cart", "{ name: checkout, step: 1 }"),
        route("pay", "/pay", "{ name: checkout, step: pay-now }"),
    );
    let (code, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stderr}");

    let bad_step = format!(
        "routes:\n{}{}",
        route("cart", "/cart", "{ name: checkout, step: 1 }"),
        route("pay", "/pay", "{ name: checkout, step: \"Pay Now\" }"),
    );
    let (code, stderr) = check(&bad_step);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("routes[1].journey.step"), "{stderr}");
    assert!(stderr.contains("Pay Now"), "{stderr}");
    assert!(!stderr.contains("routes[0]"), "{stderr}");

    let bad_name = format!(
        "routes:\n{}",
        route("cart", "/cart", "{ name: Checkout, step: 1 }"),
    );
    let (code, stderr) = check(&bad_name);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("routes[0].journey.name"), "{stderr}");
}

/// A public route to the upstream, as a policy entry, with `journey` if given.
fn public_route(name: &str, prefix: &str, journey: Option<&str>) -> String {
    let mut r = format!(
        "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: app\n    auth: public\n"
    );
    if let Some(j) = journey {
        r.push_str(&format!("    journey: {j}\n"));
    }
    r
}

#[tokio::test]
async fn a_reload_drops_the_step_series_of_a_removed_journey_route_and_keeps_the_others() {
    let echo = Echo::start().await;
    let v1 = format!(
        "routes:\n{}{}{}",
        public_route("cart", "/cart", Some("{ name: checkout, step: 1 }")),
        public_route("review", "/review", Some("{ name: checkout, step: 2 }")),
        public_route("home", "/", None),
    );
    let gw = Gateway::start(&upstream_app(echo.addr), &[("routes.yaml", &v1)]).await;
    for path in ["/cart", "/cart", "/review"] {
        assert_eq!(gw.get(path, &[]).await.status, 200);
    }
    let series = |step: &str, class: &str| {
        key(
            JOURNEY_STEPS,
            &[
                ("journey", "checkout"),
                ("step", step),
                ("status_class", class),
            ],
        )
    };
    let counted = common::eventually(Duration::from_secs(5), || async {
        let now = journey_steps(&gw).await;
        (now.get(&series("1", "2xx")) == Some(&2.0) && now.get(&series("2", "2xx")) == Some(&1.0))
            .then_some(())
    })
    .await;
    assert!(counted.is_some(), "{:?}", journey_steps(&gw).await);

    // The cart route goes; review stays; a confirm step comes.
    let v2 = format!(
        "routes:\n{}{}{}",
        public_route("review", "/review", Some("{ name: checkout, step: 2 }")),
        public_route("confirm", "/confirm", Some("{ name: checkout, step: 3 }")),
        public_route("home", "/", None),
    );
    std::fs::write(gw.dir.path().join("policies/routes.yaml"), v2).unwrap();
    let r = gw.admin("POST", "/reload", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/cart", &[]).await.status, 200, "home now");

    let text = scrape(&gw).await;
    assert!(
        !text.contains("portcullis_requests_total{route=\"cart\""),
        "the removed route's own series are dropped:\n{text}"
    );
    let now = parse_series(&text, &[JOURNEY_STEPS]);
    let steps_left: std::collections::BTreeSet<&str> = now
        .keys()
        .filter_map(|k| k.split("step=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        steps_left,
        ["2", "3"].into_iter().collect(),
        "step 1 is declared by no route any more, so its series go like the route's: {now:?}"
    );
    assert_eq!(now.get(&series("2", "2xx")), Some(&1.0), "kept: {now:?}");
    assert_eq!(now.get(&series("3", "2xx")), Some(&0.0), "new: {now:?}");
}
