//! Risk scoring end to end: routes that decide by risk (`deny_when_risk_at_least`,
//! `step_up.when_risk_at_least`) score every request of a signed-in session from what
//! the request brings (its client address, its User-Agent, failed logins from its
//! address) against what the session recorded at login, and deny, step up or let
//! through; in shadow mode the decision is only counted and audited.
//!
//! Everything runs through the real binary with the in-process test IdP. Clients are
//! told apart by `X-Forwarded-For` (the tests' loopback address is a trusted proxy), so
//! a browser "moves" by sending another address.

mod common;

use common::browser::{Browser, Page};
use common::identity::{session_yaml, with_test_idp, IdpGateway};
use common::test_idp::Misbehaviour;
use common::{eventually, series_value, Gateway};
use serde_json::{json, Value};
use std::time::Duration;

const METRIC: &str = "portcullis_risk_decisions_total";
/// The test IdP's provider entry: two levels, so routes can step up to mfa.
const PROVIDER: &str = "    acr_levels: { password: \"urn:pw\", mfa: \"urn:mfa\" }\n";
const PW: &str = "urn:pw";

/// Where the browsers sign in from, another address in the same /24, and elsewhere.
const HOME: &str = "198.51.100.7";
const NEIGHBOUR: &str = "198.51.100.99";
const ELSEWHERE: &str = "192.0.2.5";
/// In `risk.networks.deny` and `risk.networks.allow`.
const DENIED_NET: &str = "203.0.113.7";
const ALLOWED_NET: &str = "10.1.2.3";
const ALLOWED_NET_OTHER: &str = "10.200.0.1";

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36";

/// `/guarded` denies from 40; `/watched` the same in shadow mode; `/enforced` the same,
/// always enforced; `/stepped` (sensitivity 10) steps up to mfa from 40; `/sensitive`
/// (sensitivity 90) denies from 90; `/strict` denies from 10; `/account` only needs a
/// login; `/always` denies from 90 and steps up to mfa on every request.
const POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
  - name: guarded
    match: { path_prefix: /guarded }
    upstream: app
    auth: login
    deny_when_risk_at_least: 40
  - name: watched
    match: { path_prefix: /watched }
    upstream: app
    auth: login
    risk_mode: shadow
    deny_when_risk_at_least: 40
  - name: enforced
    match: { path_prefix: /enforced }
    upstream: app
    auth: login
    risk_mode: enforce
    deny_when_risk_at_least: 40
  - name: stepped
    match: { path_prefix: /stepped }
    upstream: app
    auth: login
    sensitivity: 10
    step_up: { acr: mfa, when_risk_at_least: 40 }
    headers: { X-Acr: "{acr}" }
  - name: sensitive
    match: { path_prefix: /sensitive }
    upstream: app
    auth: login
    sensitivity: 90
    deny_when_risk_at_least: 90
  - name: strict
    match: { path_prefix: /strict }
    upstream: app
    auth: login
    deny_when_risk_at_least: 10
  - name: always
    match: { path_prefix: /always }
    upstream: app
    auth: login
    deny_when_risk_at_least: 90
    step_up: { acr: mfa }
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// The `risk:` section in `mode`, with `more` signal weights (`, name: weight`).
fn risk_yaml(mode: &str, more: &str) -> String {
    format!(
        "risk:\n  mode: {mode}\n  networks: {{ deny: [203.0.113.0/24], allow: [10.0.0.0/8] }}\n  \
         signals: {{ ip_changed: 40, user_agent_changed: 30, auth_age: {{ weight: 10, after: 1h }}, \
         network_deny: 100, network_allow: -30{more} }}\n"
    )
}

/// A gateway at the test IdP with the audit log in `audit.log`, the loopback peer
/// trusted, and `extra` (the risk section, login regulation).
async fn gateway(extra: &str) -> IdpGateway {
    let top = format!(
        "{}trusted_proxies: [127.0.0.1/32]\naudit: {{ file: audit.log }}\n{extra}",
        session_yaml(None)
    );
    with_test_idp(&top, PROVIDER, POLICY).await
}

/// A request from the client at `ip` with User-Agent `ua`.
fn from<'a>(ip: &'a str, ua: &'a str) -> [(&'a str, &'a str); 2] {
    [("X-Forwarded-For", ip), ("User-Agent", ua)]
}

/// A browser signed in (at the password level, through `/account`) from the client at
/// `ip` with User-Agent `ua`: every hop, the callback included, comes from there.
async fn signed_in(s: &IdpGateway, ip: &str, ua: &str) -> Browser {
    s.idp.set_claim("acr", json!(PW));
    let b = Browser::new();
    let h = from(ip, ua);
    let mut page = b.get_with(&s.gw.url("/account"), &h).await;
    for _ in 0..10 {
        let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
            break;
        };
        page = b.get_with(&next, &h).await;
    }
    assert_eq!(page.status, 200, "{}\n{}", page.body, s.gw.logs());
    assert_eq!(page.url, s.gw.url("/account"));
    b
}

/// `GET path` by the browser `b` from `ip` with `ua`.
async fn visit(s: &IdpGateway, b: &Browser, path: &str, ip: &str, ua: &str) -> Page {
    b.get_with(&s.gw.url(path), &from(ip, ua)).await
}

/// A 403 risk-too-high that reached no upstream.
async fn assert_denied(s: &IdpGateway, b: &Browser, path: &str, ip: &str, ua: &str) {
    let before = s.echo.count();
    let page = visit(s, b, path, ip, ua).await;
    assert_eq!(page.status, 403, "{path} from {ip}: {}", page.body);
    assert!(page.body.contains("risk-too-high"), "{}", page.body);
    assert_eq!(
        s.echo.count(),
        before,
        "a denied request reaches no upstream"
    );
}

/// A 200 from the upstream, for this very request.
async fn assert_served(s: &IdpGateway, b: &Browser, path: &str, ip: &str, ua: &str) {
    let before = s.echo.count();
    let page = visit(s, b, path, ip, ua).await;
    assert_eq!(
        page.status,
        200,
        "{path} from {ip}: {}\n{}",
        page.body,
        s.gw.logs()
    );
    assert_eq!(s.echo.count(), before + 1, "served by the upstream");
    assert_eq!(s.echo.last().target, path);
}

/// `portcullis_risk_decisions_total{route, outcome, mode, top_signal}`, 0 while never
/// incremented.
async fn decisions(gw: &Gateway, route: &str, outcome: &str, mode: &str, top: &str) -> f64 {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    series_value(
        &text,
        METRIC,
        &[
            ("route", route),
            ("outcome", outcome),
            ("mode", mode),
            ("top_signal", top),
        ],
    )
    .unwrap_or(0.0)
}

/// Every `risk-decision` event in the audit log.
fn risk_events(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "risk-decision")
        .collect()
}

/// The `risk-decision` events of `route`, once there are `n` of them.
async fn route_events(gw: &Gateway, route: &str, n: usize) -> Vec<Value> {
    let got = eventually(Duration::from_secs(5), || async {
        let evs: Vec<Value> = risk_events(gw)
            .into_iter()
            .filter(|e| e["route"] == route)
            .collect();
        (evs.len() >= n).then_some(evs)
    })
    .await;
    got.unwrap_or_else(|| {
        panic!(
            "expected {n} risk-decision events for {route}; audit log:\n{}",
            std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap_or_default()
        )
    })
}

/// A `risk-decision` event names the user only by pseudonym, never by subject.
fn assert_pseudonymous(e: &Value) {
    let user = e["user"].as_str().expect("user");
    assert_eq!(user.len(), 16, "{e}");
    assert!(
        !e.to_string().contains("user-123"),
        "the subject leaks: {e}"
    );
}

#[tokio::test]
async fn a_session_from_another_network_is_denied_where_it_passed_from_its_own() {
    let s = gateway(&risk_yaml("enforce", "")).await;
    let b = signed_in(&s, HOME, FIREFOX).await;

    // From the network it signed in from (another address in the same /24): no signal.
    assert_served(&s, &b, "/guarded", HOME, FIREFOX).await;
    assert_served(&s, &b, "/guarded", NEIGHBOUR, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "allow", "enforce", "none").await,
        2.0
    );
    assert!(risk_events(&s.gw).is_empty(), "allow is not audited");

    // From another network: ip_changed (40) reaches the threshold (40).
    assert_denied(&s, &b, "/guarded", ELSEWHERE, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "enforce", "ip_changed").await,
        1.0
    );
    let evs = route_events(&s.gw, "guarded", 1).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = &evs[0];
    assert_eq!(e["score"], 40, "{e}");
    assert_eq!(e["signals"], json!({ "ip_changed": 40 }), "{e}");
    assert_eq!(e["threshold"], 40, "{e}");
    assert_eq!(e["mode"], "enforce", "{e}");
    assert_eq!(e["outcome"], "deny", "{e}");
    assert!(e["ts"].is_string(), "{e}");
    assert_pseudonymous(e);

    // The session itself is not ended: back home, it passes again.
    assert_served(&s, &b, "/guarded", HOME, FIREFOX).await;
    // An API client is denied the same way (JSON, still 403).
    let before = s.echo.count();
    let page = b
        .get_with(
            &s.gw.url("/guarded"),
            &[
                ("X-Forwarded-For", ELSEWHERE),
                ("User-Agent", FIREFOX),
                ("Accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(page.json()["error"], "risk-too-high");
    assert_eq!(s.echo.count(), before);
}

#[tokio::test]
async fn shadow_mode_lets_a_denied_request_through_but_counts_and_audits_it() {
    // risk_mode: shadow on the route, the gateway enforcing.
    let s = gateway(&risk_yaml("enforce", "")).await;
    let b = signed_in(&s, HOME, FIREFOX).await;
    assert_served(&s, &b, "/watched", ELSEWHERE, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "watched", "deny", "shadow", "ip_changed").await,
        1.0
    );
    assert_eq!(
        decisions(&s.gw, "watched", "deny", "enforce", "ip_changed").await,
        0.0
    );
    let e = &route_events(&s.gw, "watched", 1).await[0];
    assert_eq!(e["mode"], "shadow", "{e}");
    assert_eq!(e["outcome"], "deny", "{e}");
    assert_eq!(e["score"], 40, "{e}");
    assert_eq!(e["signals"], json!({ "ip_changed": 40 }), "{e}");
    assert_eq!(e["threshold"], 40, "{e}");
    // The enforcing route next to it denies the same request.
    assert_denied(&s, &b, "/guarded", ELSEWHERE, FIREFOX).await;

    // mode: shadow for the gateway: every route without its own risk_mode is shadowed;
    // a route with risk_mode: enforce still denies.
    let s = gateway(&risk_yaml("shadow", "")).await;
    let b = signed_in(&s, HOME, FIREFOX).await;
    assert_served(&s, &b, "/guarded", ELSEWHERE, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "shadow", "ip_changed").await,
        1.0
    );
    let e = &route_events(&s.gw, "guarded", 1).await[0];
    assert_eq!(e["mode"], "shadow", "{e}");
    assert_eq!(e["outcome"], "deny", "{e}");
    assert_denied(&s, &b, "/enforced", ELSEWHERE, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "enforced", "deny", "enforce", "ip_changed").await,
        1.0
    );
    let e = &route_events(&s.gw, "enforced", 1).await[0];
    assert_eq!(e["mode"], "enforce", "{e}");
}

#[tokio::test]
async fn a_changed_user_agent_pushes_the_score_to_a_step_up() {
    let s = gateway(&risk_yaml("enforce", "")).await;
    let b = signed_in(&s, HOME, FIREFOX).await;

    // Sensitivity 10 alone is below 40: served at the password level, no step-up.
    assert_served(&s, &b, "/stepped", HOME, FIREFOX).await;
    assert_eq!(s.echo.last().header("x-acr"), Some(PW));
    assert_eq!(
        decisions(&s.gw, "stepped", "allow", "enforce", "route_sensitivity").await,
        1.0
    );

    // Another browser on the same session: 10 + 30 = 40, a navigation steps up.
    let before = s.echo.count();
    let page = visit(&s, &b, "/stepped/page", HOME, CHROME).await;
    assert_eq!(page.status, 302, "{}", page.body);
    let location = page.location().unwrap();
    assert!(
        location.starts_with(&s.gw.url("/.portcullis/login?")),
        "{location}"
    );
    let params = page.location_params();
    assert!(
        params.contains(&("step_up".into(), "stepped".into())),
        "{params:?}"
    );
    assert!(
        params.contains(&("rd".into(), "/stepped/page".into())),
        "{params:?}"
    );
    assert_eq!(s.echo.count(), before, "a step-up reaches no upstream");

    // An API request (JSON) gets the RFC 9470 challenge instead.
    let page = b
        .get_with(
            &s.gw.url("/stepped/data"),
            &[
                ("X-Forwarded-For", HOME),
                ("User-Agent", CHROME),
                ("Accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    let challenge = page.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(challenge.contains("urn:mfa"), "{challenge}");
    assert_eq!(s.echo.count(), before, "a step-up reaches no upstream");

    assert_eq!(
        decisions(&s.gw, "stepped", "step-up", "enforce", "user_agent_changed").await,
        2.0
    );
    let evs = route_events(&s.gw, "stepped", 2).await;
    for e in &evs {
        assert_eq!(e["outcome"], "step-up", "{e}");
        assert_eq!(e["score"], 40, "{e}");
        assert_eq!(
            e["signals"],
            json!({ "route_sensitivity": 10, "user_agent_changed": 30 }),
            "{e}"
        );
        assert_eq!(e["threshold"], 40, "{e}");
        assert_eq!(e["mode"], "enforce", "{e}");
    }

    // The original browser is still below the threshold.
    assert_served(&s, &b, "/stepped", HOME, FIREFOX).await;
}

#[tokio::test]
async fn deny_and_allow_networks_and_route_sensitivity_move_the_score() {
    let s = gateway(&risk_yaml("enforce", "")).await;

    // A client in the deny network is denied even from the network it signed in from.
    let b = signed_in(&s, DENIED_NET, FIREFOX).await;
    assert_denied(&s, &b, "/guarded", DENIED_NET, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "enforce", "network_deny").await,
        1.0
    );
    let e = &route_events(&s.gw, "guarded", 1).await[0];
    assert_eq!(e["signals"], json!({ "network_deny": 100 }), "{e}");
    assert_eq!(e["score"], 100, "{e}");

    // A client in the allow network: from its own address -30, from another /24 in it
    // 40 - 30 = 10, below /guarded's 40 but at /strict's 10.
    let b = signed_in(&s, ALLOWED_NET, FIREFOX).await;
    assert_served(&s, &b, "/guarded", ALLOWED_NET, FIREFOX).await;
    assert_served(&s, &b, "/strict", ALLOWED_NET, FIREFOX).await;
    assert_served(&s, &b, "/guarded", ALLOWED_NET_OTHER, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "allow", "enforce", "ip_changed").await,
        1.0,
        "moved within the allow network: allowed, ip_changed the top signal"
    );
    assert_denied(&s, &b, "/strict", ALLOWED_NET_OTHER, FIREFOX).await;
    let e = &route_events(&s.gw, "strict", 1).await[0];
    assert_eq!(
        e["signals"],
        json!({ "ip_changed": 40, "network_allow": -30 }),
        "{e}"
    );
    assert_eq!(e["score"], 10, "{e}");
    assert_eq!(e["threshold"], 10, "{e}");

    // A route whose sensitivity alone reaches its threshold denies every request, even
    // from home with the browser it signed in with.
    let b = signed_in(&s, HOME, FIREFOX).await;
    assert_served(&s, &b, "/guarded", HOME, FIREFOX).await;
    assert_denied(&s, &b, "/sensitive", HOME, FIREFOX).await;
    assert_denied(&s, &b, "/sensitive", NEIGHBOUR, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "sensitive", "deny", "enforce", "route_sensitivity").await,
        2.0
    );
    let evs = route_events(&s.gw, "sensitive", 2).await;
    for e in &evs {
        assert_eq!(e["signals"], json!({ "route_sensitivity": 90 }), "{e}");
        assert_eq!(e["score"], 90, "{e}");
        assert_eq!(e["threshold"], 90, "{e}");
        assert_eq!(e["outcome"], "deny", "{e}");
    }
}

/// A login from `ip` refused by the provider (`access_denied`), seen at the callback.
async fn failed_login(s: &IdpGateway, ip: &str) {
    s.idp.set(Misbehaviour::AccessDenied);
    let b = Browser::new();
    let h = from(ip, FIREFOX);
    let started = b
        .get_with(&s.gw.url("/.portcullis/login?rd=%2Faccount"), &h)
        .await;
    assert_eq!(started.status, 302, "{}\n{}", started.body, s.gw.logs());
    let authorize = started.location().unwrap();
    assert!(authorize.starts_with(s.idp.issuer()), "{authorize}");
    let back = b.get(&authorize).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let callback = back.location().unwrap();
    assert!(
        callback.starts_with(&s.gw.url("/.portcullis/callback")),
        "{callback}"
    );
    let page = b.get_with(&callback, &h).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("access-denied"), "{}", page.body);
    s.idp.unset(Misbehaviour::AccessDenied);
}

#[tokio::test]
async fn a_failed_login_from_the_address_scores_recent_failures() {
    let regulation = "login:\n  regulation:\n    window: 1h\n    max_failures: 10\n    \
                      max_failures_per_ip: 10\n    backoff_after: 5\n    backoff: 30s\n    ban: 1h\n";
    let s = gateway(&format!(
        "{}{regulation}",
        risk_yaml("enforce", ", recent_failures: 25")
    ))
    .await;
    let b = signed_in(&s, HOME, FIREFOX).await;
    // No failure yet: /strict (10) lets the session through from home.
    assert_served(&s, &b, "/strict", HOME, FIREFOX).await;

    failed_login(&s, HOME).await;

    // Now the address has a failed login: 25 reaches /strict's 10.
    assert_denied(&s, &b, "/strict", HOME, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "strict", "deny", "enforce", "recent_failures").await,
        1.0
    );
    let e = &route_events(&s.gw, "strict", 1).await[0];
    assert_eq!(e["signals"], json!({ "recent_failures": 25 }), "{e}");
    assert_eq!(e["score"], 25, "{e}");
    assert_eq!(e["threshold"], 10, "{e}");
    // Below /guarded's 40.
    assert_served(&s, &b, "/guarded", HOME, FIREFOX).await;
    // Failures count per address: a neighbour in the same /24 has none.
    assert_served(&s, &b, "/strict", NEIGHBOUR, FIREFOX).await;
}

#[tokio::test]
async fn a_step_up_without_a_risk_threshold_applies_on_every_request_of_a_risk_route() {
    let s = gateway(&risk_yaml("enforce", "")).await;
    let b = signed_in(&s, HOME, FIREFOX).await;
    // Score 0, far below the deny threshold: the unconditional step-up still applies.
    let before = s.echo.count();
    let page = visit(&s, &b, "/always", HOME, FIREFOX).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert!(
        page.location_params()
            .contains(&("step_up".into(), "always".into())),
        "{:?}",
        page.location()
    );
    assert_eq!(s.echo.count(), before, "a step-up reaches no upstream");
    assert_eq!(
        decisions(&s.gw, "always", "allow", "enforce", "none").await,
        1.0,
        "the risk decision itself is allow"
    );
    // Above it, the risk decision (deny) comes first.
    assert_denied(&s, &b, "/always", DENIED_NET, FIREFOX).await;
}

/// `portcullis explain` prints each signal with its points, the route's thresholds and
/// the decision the request path would take, from a described request.
#[test]
fn explain_prints_every_signal_the_thresholds_and_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("cs"), "secret").unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: [{ address: \"127.0.0.1:18080\" }]\n\
         public_url: \"https://shop.example.com\"\n\
         providers:\n  - id: customers\n    issuer: https://login.example.com\n    client_id: shop\n    client_secret: { file: cs }\n    acr_levels: { password: \"urn:pw\", mfa: \"urn:mfa\" }\n\
         risk:\n  networks: { deny: [203.0.113.0/24] }\n  signals: { ip_changed: 40, user_agent_changed: 30, network_deny: 100 }\n\
         upstreams:\n  shop: { targets: [\"127.0.0.1:3000\"] }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "routes:\n  - name: payouts\n    match: { path_prefix: /payouts }\n    upstream: shop\n    auth: login\n    sensitivity: 10\n    risk_mode: shadow\n    step_up: { acr: mfa, when_risk_at_least: 40 }\n    deny_when_risk_at_least: 90\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("explain")
            .arg("--config")
            .arg(dir.path().join("gateway.yaml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let moved = run(&[
        "--route",
        "payouts",
        "--client-ip",
        "198.51.100.7",
        "--signed-in-from",
        "192.0.2.10",
        "--acr",
        "urn:pw",
    ]);
    assert!(moved.contains("risk mode shadow"), "{moved}");
    assert!(
        moved.contains("score 50 = route_sensitivity=+10, ip_changed=+40"),
        "{moved}"
    );
    assert!(moved.contains("deny at 90 or more"), "{moved}");
    assert!(moved.contains("step up to mfa at 40 or more"), "{moved}");
    assert!(
        moved.contains(
            "decision: step up (risk-step-up): the score reached 40 and the session is below mfa [shadow: reported, not taken]"
        ),
        "{moved}"
    );
    let home = run(&[
        "--route",
        "payouts",
        "--client-ip",
        "192.0.2.10",
        "--acr",
        "urn:pw",
    ]);
    assert!(home.contains("score 10 = route_sensitivity=+10"), "{home}");
    assert!(
        home.contains("decision: allow: no threshold reached"),
        "{home}"
    );
    let denied = run(&[
        "--route",
        "payouts",
        "--client-ip",
        "203.0.113.9",
        "--user-agent",
        "Chrome",
        "--signed-in-user-agent",
        "Firefox",
        "--acr",
        "urn:mfa",
    ]);
    assert!(
        denied.contains(
            "score 140 = route_sensitivity=+10, user_agent_changed=+30, network_deny=+100"
        ),
        "{denied}"
    );
    assert!(
        denied.contains("decision: deny (403 risk-too-high)"),
        "{denied}"
    );
}

/// The first sign-in from a browser is from a new device; the next sign-in from the
/// same browser (its device cookie known for the user) is not, and another browser is
/// new again.
#[tokio::test]
async fn a_browser_is_a_new_device_until_it_has_signed_in_once() {
    let s = gateway(&risk_yaml("enforce", ", new_device: 40")).await;
    let a = signed_in(&s, HOME, FIREFOX).await;
    assert_denied(&s, &a, "/guarded", HOME, FIREFOX).await;
    let event = eventually(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(s.gw.dir.path().join("audit.log")).ok()?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "risk-decision")
    })
    .await
    .expect("a risk-decision event");
    assert_eq!(event["signals"], json!({ "new_device": 40 }));

    // The same browser signs in again: its device is known now.
    let h = from(HOME, FIREFOX);
    let mut page = a
        .get_with(
            &s.gw.url("/.portcullis/login?rd=%2Faccount&provider=idp"),
            &h,
        )
        .await;
    for _ in 0..10 {
        let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
            break;
        };
        page = a.get_with(&next, &h).await;
    }
    assert_eq!(page.status, 200, "{}", page.body);
    assert_served(&s, &a, "/guarded", HOME, FIREFOX).await;

    // Another browser of the same user is a new device.
    let b = signed_in(&s, HOME, FIREFOX).await;
    assert_denied(&s, &b, "/guarded", HOME, FIREFOX).await;
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "enforce", "new_device").await,
        2.0
    );
}

/// Signs in as `sub` from `ip` (a browser of its own).
async fn signed_in_as(s: &IdpGateway, sub: &str, ip: &str) -> Browser {
    s.idp.set_claim("sub", json!(sub));
    signed_in(s, ip, FIREFOX).await
}

/// Many accounts signing in from one address within the window is the shape of
/// credential stuffing: every session used from that address scores it, sessions
/// elsewhere do not.
#[tokio::test]
async fn many_accounts_from_one_address_score_credential_stuffing() {
    let s = gateway(&risk_yaml(
        "enforce",
        ", credential_stuffing: { weight: 50, accounts: 3, window: 10m }",
    ))
    .await;
    let first = signed_in_as(&s, "victim-1", HOME).await;
    signed_in_as(&s, "victim-2", HOME).await;
    // Two accounts: below the pattern, /guarded (40) serves.
    assert_served(&s, &first, "/guarded", HOME, FIREFOX).await;
    // The same account again is not a new account.
    let again = signed_in_as(&s, "victim-2", HOME).await;
    assert_served(&s, &again, "/guarded", HOME, FIREFOX).await;
    let third = signed_in_as(&s, "victim-3", HOME).await;
    assert_denied(&s, &third, "/guarded", HOME, FIREFOX).await;
    assert_denied(&s, &first, "/guarded", HOME, FIREFOX).await;
    let e = &route_events(&s.gw, "guarded", 1).await[0];
    assert_eq!(e["signals"], json!({ "credential_stuffing": 50 }), "{e}");
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "enforce", "credential_stuffing").await,
        2.0
    );
    // Counted per address: a user signed in elsewhere is not affected.
    let elsewhere = signed_in_as(&s, "someone", ELSEWHERE).await;
    assert_served(&s, &elsewhere, "/guarded", ELSEWHERE, FIREFOX).await;
}

/// `journey=signup` sends the browser to the provider's registration (`prompt=create`);
/// sign-ups started from one address are counted and, past the threshold, scored.
#[tokio::test]
async fn signup_journeys_ask_for_registration_and_their_rate_scores_signup_velocity() {
    let s = gateway(&risk_yaml(
        "enforce",
        ", signup_velocity: { weight: 45, signups: 2, window: 1h }",
    ))
    .await;
    let b = signed_in(&s, HOME, FIREFOX).await;
    assert_served(&s, &b, "/guarded", HOME, FIREFOX).await;
    for _ in 0..2 {
        let page = Browser::new()
            .get_with(
                &s.gw.url("/.portcullis/login?journey=signup&rd=%2Faccount"),
                &from(HOME, FIREFOX),
            )
            .await;
        assert_eq!(page.status, 302, "{}", page.body);
        let params = page.location_params();
        assert!(
            params.contains(&("prompt".into(), "create".into())),
            "{params:?}"
        );
    }
    let unknown = Browser::new()
        .get_with(
            &s.gw.url("/.portcullis/login?journey=recover"),
            &from(HOME, FIREFOX),
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("journey-unknown"), "{}", unknown.body);
    // An ordinary login does not ask for registration.
    let plain = Browser::new()
        .get_with(
            &s.gw.url("/.portcullis/login?rd=%2Faccount"),
            &from(HOME, FIREFOX),
        )
        .await;
    assert!(
        !plain.location_params().iter().any(|(k, _)| k == "prompt"),
        "{:?}",
        plain.location()
    );

    assert_denied(&s, &b, "/guarded", HOME, FIREFOX).await;
    let e = &route_events(&s.gw, "guarded", 1).await[0];
    assert_eq!(e["signals"], json!({ "signup_velocity": 45 }), "{e}");
    assert_served(&s, &b, "/guarded", NEIGHBOUR, FIREFOX).await;
}

/// With `risk.geoip`, a session used from another country scores `country_changed`,
/// and one used too far from where it signed in, too soon, `impossible_travel`. The
/// test database places only documentation ranges: 192.0.2.0/24 in London,
/// 198.51.100.0/24 in Sydney, 203.0.113.128/25 in Manchester.
#[tokio::test]
async fn a_session_used_from_another_country_scores_country_change_and_impossible_travel() {
    let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/geoip/test-city.mmdb");
    let s = gateway(&format!(
        "risk:\n  geoip: \"{}\"\n  signals: {{ country_changed: 30, impossible_travel: {{ weight: 15, max_speed_kmh: 1000 }} }}\n",
        db.display()
    ))
    .await;
    const LONDON: &str = "192.0.2.5";
    const SYDNEY: &str = "198.51.100.7";
    const MANCHESTER: &str = "203.0.113.200";
    let b = signed_in(&s, LONDON, FIREFOX).await;
    assert_served(&s, &b, "/guarded", LONDON, FIREFOX).await;
    // Manchester seconds after a London login: too fast, but the same country.
    assert_served(&s, &b, "/guarded", MANCHESTER, FIREFOX).await;
    assert_denied(&s, &b, "/strict", MANCHESTER, FIREFOX).await;
    let e = &route_events(&s.gw, "strict", 1).await[0];
    assert_eq!(e["signals"], json!({ "impossible_travel": 15 }), "{e}");
    // Sydney: another country, and impossibly far.
    assert_denied(&s, &b, "/guarded", SYDNEY, FIREFOX).await;
    let e = &route_events(&s.gw, "guarded", 1).await[0];
    assert_eq!(
        e["signals"],
        json!({ "country_changed": 30, "impossible_travel": 15 }),
        "{e}"
    );
    assert_eq!(
        decisions(&s.gw, "guarded", "deny", "enforce", "country_changed").await,
        1.0
    );
    // An address the database does not place adds nothing.
    assert_served(&s, &b, "/strict", ALLOWED_NET, FIREFOX).await;
    // The sessions page says where each session signed in from.
    let listed = b
        .get_with(
            &s.gw.url("/.portcullis/sessions"),
            &[("Accept", "application/json"), ("X-Forwarded-For", LONDON)],
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.json()["sessions"][0]["location"],
        "United Kingdom",
        "{}",
        listed.body
    );
    let html = b
        .get_with(&s.gw.url("/.portcullis/sessions"), &from(LONDON, FIREFOX))
        .await;
    assert!(
        html.body.contains("Signed in from</th>") && html.body.contains("<td>United Kingdom</td>"),
        "{}",
        html.body
    );
}

/// The device cookie is signed: a browser presenting a made-up device id (or one whose
/// signature does not match) is a new device and gets a fresh, signed cookie.
#[tokio::test]
async fn a_forged_device_cookie_is_refused_and_replaced() {
    let s = gateway(&risk_yaml("enforce", ", new_device: 40")).await;
    let a = signed_in(&s, HOME, FIREFOX).await;
    let jar = a.cookie_header(&s.gw.url("/")).unwrap();
    let (name, value) = jar
        .split("; ")
        .filter_map(|c| c.split_once('='))
        .find(|(n, _)| n.ends_with("-device"))
        .unwrap_or_else(|| panic!("a device cookie in {jar}"));
    let (id, sig) = value.split_once('.').expect("<id>.<signature>");
    assert_eq!(id.len(), 43, "{value}");
    assert!(!sig.is_empty());

    for forged in [
        id.to_string(),
        format!("{}.{sig}", "A".repeat(43)),
        format!("{id}.{}", "B".repeat(sig.len())),
    ] {
        let c = Browser::new();
        let url = url::Url::parse(&s.gw.url("/")).unwrap();
        c.jar
            .add_cookie_str(&format!("{name}={forged}; Path=/"), &url);
        let h = from(HOME, FIREFOX);
        let mut page = c
            .get_with(&s.gw.url("/.portcullis/login?rd=%2Faccount"), &h)
            .await;
        let mut set = Vec::new();
        for _ in 0..10 {
            set.extend(page.set_cookies());
            let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
                break;
            };
            page = c.get_with(&next, &h).await;
        }
        assert_eq!(page.status, 200, "{}", page.body);
        let fresh = set
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("a new device cookie for {forged}: {set:?}"));
        assert!(!fresh.contains(&forged), "{fresh}");
        assert_denied(&s, &c, "/guarded", HOME, FIREFOX).await;
    }
    // The genuine cookie, copied to another browser, is the known device it names.
    let copy = Browser::new();
    let url = url::Url::parse(&s.gw.url("/")).unwrap();
    copy.jar
        .add_cookie_str(&format!("{name}={value}; Path=/"), &url);
    let h = from(HOME, FIREFOX);
    let mut page = copy
        .get_with(&s.gw.url("/.portcullis/login?rd=%2Faccount"), &h)
        .await;
    for _ in 0..10 {
        let Some(next) = page.is_redirect().then(|| page.location()).flatten() else {
            break;
        };
        page = copy.get_with(&next, &h).await;
    }
    assert_eq!(page.status, 200, "{}", page.body);
    assert_served(&s, &copy, "/guarded", HOME, FIREFOX).await;
}

/// `portcullis check` on a gateway.yaml with `extra`, in a directory with `files`.
fn check(extra: &str, files: &[(&str, &[u8])]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("cs"), "secret").unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "listen: [{{ address: \"127.0.0.1:18080\" }}]\n\
             public_url: \"https://shop.example.com\"\n\
             providers:\n  - id: customers\n    issuer: https://login.example.com\n    client_id: shop\n    client_secret: {{ file: cs }}\n\
             upstreams:\n  shop: {{ targets: [\"127.0.0.1:3000\"] }}\n{extra}"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn a_geoip_database_that_cannot_be_read_is_a_config_error_naming_it() {
    let signals = "  signals: { country_changed: 30 }\n";
    let (ok, out) = check(&format!("risk:\n  geoip: missing.mmdb\n{signals}"), &[]);
    assert!(!ok);
    assert!(
        out.contains("gateway.yaml:")
            && out.contains("risk.geoip:")
            && out.contains("missing.mmdb"),
        "{out}"
    );
    let (ok, out) = check(
        &format!("risk:\n  geoip: junk.mmdb\n{signals}"),
        &[("junk.mmdb", b"not a database")],
    );
    assert!(!ok);
    assert!(
        out.contains("risk.geoip:") && out.contains("junk.mmdb"),
        "{out}"
    );
    let db = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/geoip/test-city.mmdb"),
    )
    .unwrap();
    let (ok, out) = check(
        &format!("risk:\n  geoip: city.mmdb\n{signals}"),
        &[("city.mmdb", &db)],
    );
    assert!(
        ok,
        "a relative path is taken from gateway.yaml's directory: {out}"
    );
}

#[test]
fn new_device_on_redis_needs_the_keys_that_sign_its_cookie() {
    let redis = "session:\n  store: { type: redis, url: \"redis://127.0.0.1:1\" }\n";
    let risk = "risk:\n  signals: { new_device: 30 }\n";
    let (ok, out) = check(&format!("{redis}{risk}"), &[]);
    assert!(!ok);
    assert!(
        out.contains("risk.signals.new_device:") && out.contains("session.encryption_keys"),
        "{out}"
    );
    let keyed = format!(
        "session:\n  store: {{ type: redis, url: \"redis://127.0.0.1:1\" }}\n  encryption_keys: [{{ file: key }}]\n{risk}"
    );
    let (ok, out) = check(&keyed, &[("key", "ab".repeat(32).as_bytes())]);
    assert!(ok, "{out}");
    let (ok, out) = check(risk, &[]);
    assert!(ok, "the memory store signs with its own key: {out}");
}
