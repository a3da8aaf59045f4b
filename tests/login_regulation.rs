//! Failed-login regulation (`login.regulation`) end to end: logins refused at the
//! in-process test IdP (`access_denied`) or at the callback are counted per account (the
//! email given for home-realm discovery) and per client address, and the next login
//! start is held back (429, a friendly page, `Retry-After`) with a back-off or a ban;
//! across two gateways sharing a real `redis-server` too.
//!
//! Clients are told apart by `X-Forwarded-For` (the tests' loopback address is a
//! trusted proxy). Bans last an hour and back-offs 30 s, so nothing here waits for time
//! to pass; their expiry is the unit tests' business (`src/regulation.rs`).

mod common;

use common::browser::{Browser, Page};
use common::identity::POLICY;
use common::identity::{gateway_for, session_yaml, with_test_idp, IdpGateway, ProviderSetup};
use common::redis::RedisServer;
use common::test_idp::{Misbehaviour, TestIdp};
use common::{series_value, Echo, Gateway};

/// The loopback peer is a trusted proxy: each test client is its `X-Forwarded-For`.
const TRUST: &str = "trusted_proxies: [127.0.0.1/32]\n";
const METRIC: &str = "portcullis_login_regulation_total";
const HOUR: u64 = 3600;

/// A `login.regulation` section: window and ban of an hour.
fn regulation(max_failures: u32, per_ip: u32, backoff_after: u32, backoff: &str) -> String {
    format!(
        "login:\n  regulation:\n    window: 1h\n    max_failures: {max_failures}\n    \
         max_failures_per_ip: {per_ip}\n    backoff_after: {backoff_after}\n    \
         backoff: {backoff}\n    ban: 1h\n"
    )
}

/// A gateway at the test IdP with `extra` (regulation, populations) after the session
/// section (memory, or the given Redis with the prefix `t:`).
async fn gateway(extra: &str, redis: Option<&RedisServer>) -> IdpGateway {
    let url = redis.map(RedisServer::url);
    let session = session_yaml(url.as_deref().map(|u| (u, "t:")));
    with_test_idp(&format!("{session}{TRUST}{extra}"), "", POLICY).await
}

/// `/.portcullis/login`, for `email` when given, then back to `/account`.
fn login_path(email: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("rd", "/account");
    if let Some(e) = email {
        q.append_pair("email", e);
    }
    format!("/.portcullis/login?{}", q.finish())
}

/// A login start from the client at `ip`, not followed.
async fn start(gw: &Gateway, b: &Browser, email: Option<&str>, ip: &str) -> Page {
    b.get_with(&gw.url(&login_path(email)), &[("X-Forwarded-For", ip)])
        .await
}

/// A login that starts, is sent to the provider (the only one, with `login_hint` when
/// there is an email) and comes back to the callback from the client at `ip`; returns
/// the callback's answer.
async fn attempt(gw: &Gateway, idp: &TestIdp, email: Option<&str>, ip: &str) -> Page {
    let b = Browser::new();
    let started = start(gw, &b, email, ip).await;
    assert_eq!(
        started.status,
        302,
        "login start from {ip} for {email:?} was not let through: {}\n{}",
        started.body,
        gw.logs()
    );
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(idp.issuer()), "{authorize}");
    let hint = started
        .location_params()
        .into_iter()
        .find(|(k, _)| k == "login_hint")
        .map(|(_, v)| v);
    assert_eq!(hint.as_deref(), email, "login_hint is the email given");
    let back = b.get(&authorize).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let callback = back.location().unwrap();
    assert!(
        callback.starts_with(&gw.url("/.portcullis/callback")),
        "{callback}"
    );
    b.get_with(&callback, &[("X-Forwarded-For", ip)]).await
}

/// A login refused by the provider (`access_denied`), seen at the callback.
async fn denied(gw: &Gateway, idp: &TestIdp, email: Option<&str>, ip: &str) {
    idp.set(Misbehaviour::AccessDenied);
    let page = attempt(gw, idp, email, ip).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("access-denied"), "{}", page.body);
}

/// The answer to a held login start: 429, the friendly page with the reason code,
/// `Retry-After` in whole seconds within `secs`, and no way on to the provider.
fn assert_held(page: &Page, secs: std::ops::RangeInclusive<u64>) -> u64 {
    assert_eq!(page.status, 429, "{}", page.body);
    let after: u64 = page
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", page.headers))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(
        secs.contains(&after),
        "Retry-After {after}, expected {secs:?}"
    );
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(
        page.body.contains("Too many sign-in attempts"),
        "{}",
        page.body
    );
    assert!(page.body.contains("login-regulated"), "{}", page.body);
    assert!(
        page.header("location").is_none(),
        "a held login goes nowhere"
    );
    assert!(
        page.set_cookies().is_empty(),
        "a held login sets no cookie: {:?}",
        page.set_cookies()
    );
    after
}

/// A login start that is let through to the provider.
fn assert_let_through(page: &Page, gw: &Gateway) {
    assert_eq!(page.status, 302, "{}\n{}", page.body, gw.logs());
}

/// `portcullis_login_regulation_total{action, kind}`, 0 while never incremented.
async fn regulated(gw: &Gateway, action: &str, kind: &str) -> f64 {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    series_value(&text, METRIC, &[("action", action), ("kind", kind)]).unwrap_or(0.0)
}

/// Every series of the regulation metric, as printed.
async fn regulation_series(gw: &Gateway) -> Vec<String> {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{METRIC}{{")))
        .map(str::to_string)
        .collect()
}

async fn redis_keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_account_with_too_many_denied_logins_is_banned_at_login_start() {
    // Back-off only from the maximum on, so the account goes straight to its ban.
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(3, 100, 3, "1s"), None).await;
    // Three denied logins for one account, each from another address (a spread-out
    // attack: no address reaches a threshold), the address in varying case.
    for (i, email) in [
        "alice@example.com",
        "Alice@Example.com",
        "ALICE@EXAMPLE.COM",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(regulated(&gw, "ban-started", "account").await, 0.0);
        denied(&gw, &idp, Some(email), &format!("198.51.100.{}", i + 1)).await;
    }
    assert_eq!(regulated(&gw, "ban-started", "account").await, 1.0);
    assert_eq!(regulated(&gw, "ban-started", "ip").await, 0.0);

    // The next login for that account, from an address never seen: banned for the hour.
    idp.clear();
    let b = Browser::new();
    let page = start(&gw, &b, Some("alice@example.com"), "203.0.113.50").await;
    let secs = assert_held(&page, HOUR - 60..=HOUR);
    assert!(page.body.contains("60 minutes"), "{}", page.body);
    assert!(secs > 0);
    assert_eq!(regulated(&gw, "ban", "account").await, 1.0);
    // Every held start counts.
    let again = start(&gw, &b, Some(" alice@example.com"), "203.0.113.51").await;
    assert_held(&again, HOUR - 60..=HOUR);
    assert_eq!(regulated(&gw, "ban", "account").await, 2.0);

    // Another account from another address is not held, and signs in.
    let bob = Browser::new();
    let page = start(&gw, &bob, Some("bob@example.com"), "203.0.113.60").await;
    assert_let_through(&page, &gw);
    let done = bob.follow(page, 10).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.url, gw.url("/account"));
    // Nor were the addresses the failures came from banned: without the account (the
    // only provider, straight), each may start a login.
    for i in 1..=3 {
        let page = start(&gw, &Browser::new(), None, &format!("198.51.100.{i}")).await;
        assert_let_through(&page, &gw);
    }
    assert_eq!(regulated(&gw, "ban", "ip").await, 0.0);
    assert_eq!(regulated(&gw, "backoff", "account").await, 0.0);
    assert_eq!(regulated(&gw, "backoff", "ip").await, 0.0);
}

#[tokio::test]
async fn after_backoff_after_failures_the_next_login_start_backs_off() {
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(10, 10, 2, "30s"), None).await;

    // An account: two denied logins (from two addresses), then a login start waits.
    denied(&gw, &idp, Some("alice@example.com"), "198.51.100.1").await;
    denied(&gw, &idp, Some("alice@example.com"), "198.51.100.2").await;
    let page = start(
        &gw,
        &Browser::new(),
        Some("alice@example.com"),
        "203.0.113.1",
    )
    .await;
    let secs = assert_held(&page, 1..=30);
    assert!(
        page.body.contains(&format!("{secs} seconds")),
        "{}",
        page.body
    );
    assert_eq!(regulated(&gw, "backoff", "account").await, 1.0);

    // An address: two denied logins without an account, then its next start waits.
    denied(&gw, &idp, None, "198.51.100.9").await;
    denied(&gw, &idp, None, "198.51.100.9").await;
    let page = start(&gw, &Browser::new(), None, "198.51.100.9").await;
    assert_held(&page, 1..=30);
    assert_eq!(regulated(&gw, "backoff", "ip").await, 1.0);

    // Not a ban: nothing reached a maximum.
    assert_eq!(regulated(&gw, "ban-started", "account").await, 0.0);
    assert_eq!(regulated(&gw, "ban-started", "ip").await, 0.0);
    assert_eq!(regulated(&gw, "ban", "account").await, 0.0);
    assert_eq!(regulated(&gw, "ban", "ip").await, 0.0);
    // And nobody else waits.
    idp.clear();
    let page = start(
        &gw,
        &Browser::new(),
        Some("bob@example.com"),
        "198.51.100.1",
    )
    .await;
    assert_let_through(&page, &gw);
    let page = start(&gw, &Browser::new(), None, "203.0.113.2").await;
    assert_let_through(&page, &gw);
}

#[tokio::test]
async fn failures_without_an_account_ban_the_client_address() {
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(5, 4, 4, "1s"), None).await;
    let ip = "198.51.100.7";
    // Denied at the provider, twice, no account named.
    denied(&gw, &idp, None, ip).await;
    denied(&gw, &idp, None, ip).await;
    // A forged callback (no login behind its state) counts against the address too.
    let forged = Browser::new()
        .get_with(
            &gw.url("/.portcullis/callback?state=forged-state-0123456789&code=x"),
            &[("X-Forwarded-For", ip)],
        )
        .await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert!(forged.body.contains("state-mismatch"), "{}", forged.body);
    assert_eq!(regulated(&gw, "ban-started", "ip").await, 0.0);
    // So does a malformed one (a parameter given twice).
    let malformed = Browser::new()
        .get_with(
            &gw.url("/.portcullis/callback?state=a&state=b"),
            &[("X-Forwarded-For", ip)],
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert!(
        malformed.body.contains("callback-invalid"),
        "{}",
        malformed.body
    );
    assert_eq!(regulated(&gw, "ban-started", "ip").await, 1.0);
    assert_eq!(regulated(&gw, "ban-started", "account").await, 0.0);

    // That address may not start a login, with or without an account.
    idp.clear();
    let page = start(&gw, &Browser::new(), None, ip).await;
    assert_held(&page, HOUR - 60..=HOUR);
    let page = start(&gw, &Browser::new(), Some("alice@example.com"), ip).await;
    assert_held(&page, HOUR - 60..=HOUR);
    assert_eq!(regulated(&gw, "ban", "ip").await, 2.0);
    // Another address may, for that account too (no account was counted).
    let b = Browser::new();
    let page = start(&gw, &b, Some("alice@example.com"), "198.51.100.8").await;
    assert_let_through(&page, &gw);
    let done = b.follow(page, 10).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let page = start(&gw, &Browser::new(), None, "203.0.113.7").await;
    assert_let_through(&page, &gw);
    assert_eq!(regulated(&gw, "ban", "account").await, 0.0);
}

#[tokio::test]
async fn ipv6_clients_are_counted_by_their_64_prefix() {
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(5, 2, 2, "1s"), None).await;
    // Two addresses of one /64.
    denied(&gw, &idp, None, "2001:db8:1:2::1").await;
    denied(&gw, &idp, None, "2001:db8:1:2:ffff::9").await;
    assert_eq!(regulated(&gw, "ban-started", "ip").await, 1.0);
    idp.clear();
    let page = start(&gw, &Browser::new(), None, "2001:db8:1:2::abcd").await;
    assert_held(&page, HOUR - 60..=HOUR);
    // The next /64 is another client.
    let page = start(&gw, &Browser::new(), None, "2001:db8:1:3::1").await;
    assert_let_through(&page, &gw);
}

/// One gateway of two on `redis` (the same key prefix), at the shared `idp`.
async fn member(idp: &TestIdp, echo: &Echo, redis: &RedisServer, extra: &str) -> Gateway {
    let session = session_yaml(Some((&redis.url(), "fleet:")));
    let gw = gateway_for(
        echo,
        &ProviderSetup {
            issuer: idp.issuer(),
            client_id: &idp.client_id(),
            client_secret: &idp.client_secret(),
            extra: "",
        },
        &format!("{session}{TRUST}{extra}"),
        POLICY,
    )
    .await;
    idp.allow_redirect_uri(gw.url("/.portcullis/callback"));
    gw
}

#[tokio::test]
async fn failures_on_one_gateway_ban_the_account_on_another() {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let idp = TestIdp::start().await;
    let extra = regulation(3, 100, 3, "1s");
    let a = member(&idp, &echo, &redis, &extra).await;
    let b = member(&idp, &echo, &redis, &extra).await;

    // Two failures on A, the third on B: B starts the ban.
    denied(&a, &idp, Some("alice@example.com"), "198.51.100.1").await;
    denied(&a, &idp, Some("alice@example.com"), "198.51.100.2").await;
    denied(&b, &idp, Some("alice@example.com"), "198.51.100.3").await;
    assert_eq!(regulated(&a, "ban-started", "account").await, 0.0);
    assert_eq!(regulated(&b, "ban-started", "account").await, 1.0);
    assert!(
        !redis_keys(&redis, "fleet:reg:*").await.is_empty(),
        "the counts are in the shared store"
    );

    // Both refuse that account, wherever the user comes from.
    idp.clear();
    for (gw, ip) in [(&a, "203.0.113.1"), (&b, "203.0.113.2")] {
        let page = start(gw, &Browser::new(), Some("alice@example.com"), ip).await;
        assert_held(&page, HOUR - 60..=HOUR);
        assert_eq!(regulated(gw, "ban", "account").await, 1.0);
    }
    // Other accounts sign in on either.
    for (gw, ip) in [(&a, "203.0.113.1"), (&b, "203.0.113.2")] {
        let browser = Browser::new();
        let page = start(gw, &browser, Some("bob@example.com"), ip).await;
        assert_let_through(&page, gw);
        let done = browser.follow(page, 10).await;
        assert_eq!(done.status, 200, "{}", done.body);
    }
}

#[tokio::test]
async fn successful_logins_do_not_count() {
    let redis = RedisServer::start().await;
    // The strictest regulation: one failure bans.
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(1, 1, 1, "1s"), Some(&redis)).await;
    for _ in 0..3 {
        let b = Browser::new();
        let page = start(&gw, &b, Some("alice@example.com"), "198.51.100.1").await;
        assert_let_through(&page, &gw);
        let done = b.follow(page, 10).await;
        assert_eq!(done.status, 200, "{}\n{}", done.body, gw.logs());
        assert_eq!(done.url, gw.url("/account"));
    }
    assert_eq!(
        redis_keys(&redis, "t:reg:*").await,
        Vec::<String>::new(),
        "nothing counted"
    );
    assert_eq!(regulation_series(&gw).await, Vec::<String>::new());

    // The regulation is on: a single failure does hold the next login.
    denied(&gw, &idp, Some("alice@example.com"), "198.51.100.1").await;
    idp.clear();
    let page = start(
        &gw,
        &Browser::new(),
        Some("alice@example.com"),
        "198.51.100.1",
    )
    .await;
    assert_held(&page, HOUR - 60..=HOUR);
}

#[tokio::test]
async fn without_regulation_no_login_is_held() {
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway("", None).await;
    for _ in 0..8 {
        denied(&gw, &idp, Some("alice@example.com"), "198.51.100.1").await;
    }
    let forged = Browser::new()
        .get_with(
            &gw.url("/.portcullis/callback?state=forged-state-0123456789&code=x"),
            &[("X-Forwarded-For", "198.51.100.1")],
        )
        .await;
    assert_eq!(forged.status, 400);
    idp.clear();
    let b = Browser::new();
    let page = start(&gw, &b, Some("alice@example.com"), "198.51.100.1").await;
    assert_let_through(&page, &gw);
    assert_eq!(b.follow(page, 10).await.status, 200);
    assert_eq!(regulation_series(&gw).await, Vec::<String>::new());
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    assert_eq!(
        series_value(
            &text,
            "portcullis_login_failures_total",
            &[
                ("journey", "login"),
                ("provider", "idp"),
                ("reason", "access-denied")
            ]
        ),
        Some(8.0),
        "the failures were seen"
    );
}

#[tokio::test]
async fn a_user_refused_for_their_population_is_held_by_the_email_they_gave() {
    // Nobody is in the only population: every login that gets as far is refused.
    let populations =
        "populations:\n  nobody:\n    providers: [idp]\n    claims: { groups: nobody-has-this }\n";
    let IdpGateway {
        gw,
        idp,
        echo: _echo,
    } = gateway(
        &format!("{}{populations}", regulation(2, 100, 2, "1s")),
        None,
    )
    .await;
    for ip in ["198.51.100.1", "198.51.100.2"] {
        let page = attempt(&gw, &idp, Some("alice@example.com"), ip).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("population-unmatched"), "{}", page.body);
    }
    assert_eq!(regulated(&gw, "ban-started", "account").await, 1.0);
    // The ban is on the account the user names at login start: the email.
    let page = start(
        &gw,
        &Browser::new(),
        Some("alice@example.com"),
        "203.0.113.1",
    )
    .await;
    assert_held(&page, HOUR - 60..=HOUR);
    assert_eq!(regulated(&gw, "ban", "account").await, 1.0);
}

#[tokio::test]
async fn a_held_login_is_told_the_longest_wait() {
    let IdpGateway {
        idp,
        gw,
        echo: _echo,
    } = gateway(&regulation(2, 10, 2, "30s"), None).await;
    // The account is banned (failures from two addresses)...
    denied(&gw, &idp, Some("alice@example.com"), "198.51.100.1").await;
    denied(&gw, &idp, Some("alice@example.com"), "198.51.100.2").await;
    assert_eq!(regulated(&gw, "ban-started", "account").await, 1.0);
    // ... and an address only backs off.
    denied(&gw, &idp, None, "198.51.100.3").await;
    denied(&gw, &idp, None, "198.51.100.3").await;
    idp.clear();
    let page = start(&gw, &Browser::new(), None, "198.51.100.3").await;
    assert_held(&page, 1..=30);
    // From that address, the account's login waits for the ban, not the back-off.
    let page = start(
        &gw,
        &Browser::new(),
        Some("alice@example.com"),
        "198.51.100.3",
    )
    .await;
    assert_held(&page, HOUR - 60..=HOUR);
    assert_eq!(regulated(&gw, "ban", "account").await, 1.0);
}
