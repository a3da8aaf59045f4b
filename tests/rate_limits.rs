//! Rate limits end to end: named limits from `gateway.yaml` applied by the real
//! `portcullis` binary to routes (before authentication by client address or header,
//! after it by user), to the login endpoints, and across two gateways on one real
//! `redis-server`, with the local or fail-closed fallback when Redis is down.
//!
//! Every limit here earns one request a day, so no budget refills during a test and the
//! counts are exact without sleeping.

mod common;

use common::browser::Browser;
use common::identity::{session_yaml, with_test_idp, IdpGateway, POLICY};
use common::redis::RedisServer;
use common::{
    free_port, gateway_yaml, parse_response, public_catch_all, series_value, upstream_app, Echo,
    Gateway, Response,
};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: (&str, &str) = ("Accept", "application/json");
const DAY: u64 = 86_400;

/// The value of a counter series, 0 while it has never been incremented.
async fn counter(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gw.admin("GET", "/metrics", &[]).await.text();
    series_value(&text, name, labels).unwrap_or(0.0)
}

async fn rate_limited(gw: &Gateway, limit: &str, route: &str) -> f64 {
    counter(
        gw,
        "portcullis_rate_limited_total",
        &[("limit", limit), ("route", route)],
    )
    .await
}

async fn fallbacks(gw: &Gateway, limit: &str, action: &str) -> f64 {
    counter(
        gw,
        "portcullis_rate_limit_fallbacks_total",
        &[("limit", limit), ("action", action)],
    )
    .await
}

/// A 429 from a limit: `Retry-After` in whole seconds (at least 1, at most `max`) and
/// the reason `rate-limited` in the JSON error body.
fn assert_limited(r: &Response, max: u64) {
    assert_eq!(r.status, 429, "{}", r.text());
    let secs: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=max).contains(&secs), "Retry-After: {secs}");
    assert_eq!(r.json()["error"], "rate-limited", "{}", r.text());
}

/// Upstream requests whose target starts with `prefix`.
fn reached(echo: &Echo, prefix: &str) -> usize {
    echo.requests()
        .iter()
        .filter(|s| s.target.starts_with(prefix))
        .count()
}

/// `GET path` on the gateway from the local address `source` (any of 127.0.0.0/8 on
/// Linux), so the gateway sees that peer.
async fn get_from(source: IpAddr, gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], gw.port)))
        .await
        .unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        gw.port
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    parse_response(&buf).unwrap().expect("a complete response")
}

/// One command to Redis in RESP, the raw reply.
async fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("Redis answers")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The number of keys in Redis's database 0.
async fn dbsize(port: u16) -> u64 {
    let reply = redis_cmd(port, &["DBSIZE"]).await;
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("DBSIZE: {reply:?}"))
}

// ---------------------------------------------------------------------------------------
// Per client address

/// A public route `/limited` with a per-IP limit of 3, behind `trusted_proxies:
/// [127.0.0.1/32]` (so a request from 127.0.0.1 may name its client in
/// `X-Forwarded-For`), and the rest public and unlimited.
async fn per_ip_gateway() -> (Echo, Gateway) {
    let echo = Echo::start().await;
    let extra = format!(
        "trusted_proxies: [127.0.0.1/32]\n\
         rate_limits:\n  per_ip: {{ key: client_ip, rate: 1/day, burst: 3 }}\n{}",
        upstream_app(echo.addr)
    );
    let policy = public_catch_all(
        "  - name: limited\n    match: { path_prefix: /limited }\n    upstream: app\n    auth: public\n    rate_limits: [per_ip]\n",
    );
    let gw = Gateway::start(&extra, &[("routes.yaml", &policy)]).await;
    (echo, gw)
}

#[tokio::test]
async fn a_per_ip_limit_passes_the_burst_then_answers_429_with_retry_after_and_stops_forwarding() {
    let (echo, gw) = per_ip_gateway().await;
    let client = [("X-Forwarded-For", "198.51.100.1"), JSON];
    for i in 0..3 {
        let r = gw.get("/limited/x", &client).await;
        assert_eq!(r.status, 200, "request {i} of the burst: {}", r.text());
    }
    assert_eq!(rate_limited(&gw, "per_ip", "limited").await, 0.0);

    let r = gw.get("/limited/x", &client).await;
    assert_limited(&r, DAY);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        secs > DAY - 600,
        "one request a day: the next one is about a day away, not {secs} s"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for _ in 0..3 {
        assert_eq!(gw.get("/limited/x", &client).await.status, 429);
    }
    assert_eq!(
        reached(&echo, "/limited"),
        3,
        "nothing over the limit reaches the upstream"
    );
    assert_eq!(rate_limited(&gw, "per_ip", "limited").await, 4.0);

    // Other routes do not carry the limit.
    assert_eq!(gw.get("/other", &client).await.status, 200);
}

#[tokio::test]
async fn each_client_behind_a_trusted_proxy_has_its_own_budget() {
    let (echo, gw) = per_ip_gateway().await;
    let a = [("X-Forwarded-For", "198.51.100.1"), JSON];
    let b = [("X-Forwarded-For", "198.51.100.2"), JSON];
    for _ in 0..3 {
        assert_eq!(gw.get("/limited", &a).await.status, 200);
    }
    assert_limited(&gw.get("/limited", &a).await, DAY);

    for i in 0..3 {
        let r = gw.get("/limited", &b).await;
        assert_eq!(r.status, 200, "client b, request {i}: {}", r.text());
    }
    assert_limited(&gw.get("/limited", &b).await, DAY);
    // The proxy itself (no X-Forwarded-For) is a third client.
    assert_eq!(gw.get("/limited", &[JSON]).await.status, 200);
    assert_eq!(reached(&echo, "/limited"), 7);
    assert_eq!(rate_limited(&gw, "per_ip", "limited").await, 2.0);
}

/// An IPv6 client can send from any address of its /64: they share one budget, and
/// another /64 has its own.
#[tokio::test]
async fn ipv6_addresses_of_one_64_share_a_budget() {
    let (_echo, gw) = per_ip_gateway().await;
    for addr in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:ffff:ffff:ffff:fffe",
    ] {
        let r = gw.get("/limited", &[("X-Forwarded-For", addr), JSON]).await;
        assert_eq!(r.status, 200, "{addr}: {}", r.text());
    }
    let fourth = [("X-Forwarded-For", "2001:db8:1:2:dead:beef::9"), JSON];
    assert_limited(&gw.get("/limited", &fourth).await, DAY);
    let other = [("X-Forwarded-For", "2001:db8:1:3::1"), JSON];
    assert_eq!(gw.get("/limited", &other).await.status, 200);
}

#[tokio::test]
async fn an_untrusted_x_forwarded_for_gives_no_new_budget() {
    let (echo, gw) = per_ip_gateway().await;

    // From a peer that is not a trusted proxy, X-Forwarded-For is not read at all.
    let untrusted: IpAddr = "127.0.0.2".parse().unwrap();
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        let r = get_from(
            untrusted,
            &gw,
            "/limited",
            &[("X-Forwarded-For", &xff), JSON],
        )
        .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = get_from(
        untrusted,
        &gw,
        "/limited",
        &[("X-Forwarded-For", "203.0.113.99"), JSON],
    )
    .await;
    assert_limited(&r, DAY);

    // Through the trusted proxy, only the rightmost untrusted entry is the client:
    // whatever the client wrote to its left (one header or several) is its own claim.
    let a = [("X-Forwarded-For", "198.51.100.1"), JSON];
    for _ in 0..3 {
        assert_eq!(gw.get("/limited", &a).await.status, 200);
    }
    for spoofed in [
        vec![("X-Forwarded-For", "203.0.113.7, 198.51.100.1"), JSON],
        vec![
            ("X-Forwarded-For", "203.0.113.8"),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
        vec![
            ("X-Forwarded-For", "203.0.113.9,198.51.100.1, 127.0.0.1"),
            JSON,
        ],
    ] {
        let r = gw.get("/limited", &spoofed).await;
        assert_eq!(r.status, 429, "{spoofed:?}: {}", r.text());
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(reached(&echo, "/limited"), 6);
    assert_eq!(rate_limited(&gw, "per_ip", "limited").await, 4.0);
}

// ---------------------------------------------------------------------------------------
// Per header value

#[tokio::test]
async fn a_header_keyed_limit_gives_each_value_its_own_budget_and_skips_requests_without_it() {
    let echo = Echo::start().await;
    let extra = format!(
        "rate_limits:\n  per_key: {{ key: \"header:X-Api-Key\", rate: 1/day, burst: 2 }}\n{}",
        upstream_app(echo.addr)
    );
    let policy = public_catch_all(
        "  - name: api\n    match: { path_prefix: /api }\n    upstream: app\n    auth: public\n    rate_limits: [per_key]\n",
    );
    let gw = Gateway::start(&extra, &[("routes.yaml", &policy)]).await;

    let k1 = [("X-Api-Key", "k1"), JSON];
    let k2 = [("X-Api-Key", "k2"), JSON];
    for _ in 0..2 {
        assert_eq!(gw.get("/api/a", &k1).await.status, 200);
    }
    assert_limited(&gw.get("/api/a", &k1).await, DAY);
    // Header names are case-insensitive: the same key, the same budget.
    assert_eq!(gw.get("/api/a", &[("x-api-key", "k1")]).await.status, 429);

    for i in 0..2 {
        let r = gw.get("/api/b", &k2).await;
        assert_eq!(r.status, 200, "k2, request {i}: {}", r.text());
    }
    assert_limited(&gw.get("/api/b", &k2).await, DAY);

    // Without the header the limit does not apply.
    for i in 0..5 {
        let r = gw.get("/api/c", &[JSON]).await;
        assert_eq!(r.status, 200, "no key, request {i}: {}", r.text());
    }
    assert_eq!(reached(&echo, "/api"), 2 + 2 + 5);
    assert_eq!(rate_limited(&gw, "per_key", "api").await, 3.0);
}

// ---------------------------------------------------------------------------------------
// Per user, after authentication

const USER_POLICY: &str = r#"routes:
  - name: account
    match: { path_prefix: /account }
    upstream: app
    auth: login
    rate_limits: [per_user]
  - name: home
    match: { path_prefix: / }
    upstream: app
    auth: public
"#;

/// A new browser signed in as `sub`, landing on the public `/` (so the login itself
/// spends nothing of a limit on `/account`).
async fn sign_in(s: &IdpGateway, sub: &str) -> Browser {
    s.idp.set_claim("sub", json!(sub));
    let b = Browser::new();
    let page = b
        .follow(b.get(&s.gw.url("/.portcullis/login?rd=/")).await, 10)
        .await;
    assert_eq!(
        page.status,
        200,
        "login as {sub}: {}\n{}",
        page.body,
        s.gw.logs()
    );
    assert_eq!(page.url, s.gw.url("/"));
    b
}

#[tokio::test]
async fn a_user_keyed_limit_gives_each_user_a_budget_and_unauthenticated_requests_spend_none() {
    let session = format!(
        "{}rate_limits:\n  per_user: {{ key: [user, route], rate: 1/day, burst: 3 }}\n",
        session_yaml(None)
    );
    let s = with_test_idp(&session, "", USER_POLICY).await;

    // Without a session: sent to log in, however often, never limited.
    for i in 0..5 {
        let r = s.gw.get("/account", &[]).await;
        assert_eq!(r.status, 302, "anonymous request {i}: {}", r.text());
        let loc = r.header("location").unwrap_or_default();
        assert!(loc.contains("/.portcullis/login"), "{loc}");
    }

    let alice = sign_in(&s, "alice").await;
    for i in 0..3 {
        let p = alice.get_with(&s.gw.url("/account"), &[JSON]).await;
        assert_eq!(p.status, 200, "alice, request {i}: {}", p.body);
    }
    let p = alice.get_with(&s.gw.url("/account"), &[JSON]).await;
    assert_eq!(p.status, 429, "{}", p.body);
    let secs: u64 = p.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=DAY).contains(&secs), "{secs}");
    assert_eq!(p.json()["error"], "rate-limited");

    // Another user has a budget of their own.
    let bob = sign_in(&s, "bob").await;
    for i in 0..3 {
        let p = bob.get_with(&s.gw.url("/account"), &[JSON]).await;
        assert_eq!(p.status, 200, "bob, request {i}: {}", p.body);
    }
    assert_eq!(
        bob.get_with(&s.gw.url("/account"), &[JSON]).await.status,
        429
    );

    // Anonymous requests are still sent to log in, not refused by anyone's limit.
    assert_eq!(s.gw.get("/account", &[]).await.status, 302);
    assert_eq!(reached(&s.echo, "/account"), 6);
    assert_eq!(rate_limited(&s.gw, "per_user", "account").await, 2.0);
}

// ---------------------------------------------------------------------------------------
// Login endpoints

#[tokio::test]
async fn login_endpoints_answer_429_after_the_login_budget_before_any_state_is_stored() {
    let redis = RedisServer::start().await;
    let session = format!(
        "{}rate_limits:\n  per_ip: {{ key: client_ip, rate: 1/day, burst: 2 }}\nlogin:\n  rate_limits: [per_ip]\n",
        session_yaml(Some((&redis.url(), "login-limit:")))
    );
    let s = with_test_idp(&session, "", POLICY).await;
    let idp_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    s.idp.reset_requests();
    let keys_before = dbsize(redis.port).await;

    // The budget: two logins started, each with its state stored and its browser sent to
    // the provider (which the test visits, as a browser would).
    for i in 0..2 {
        let r = s.gw.get("/.portcullis/login?rd=/account", &[]).await;
        assert_eq!(r.status, 302, "login {i}: {}", r.text());
        let loc = r.header("location").unwrap().to_string();
        assert!(loc.starts_with(&s.idp.url("/authorize")), "{loc}");
        assert!(r.header("set-cookie").is_some());
        let at_idp = idp_client.get(&loc).send().await.unwrap();
        assert!(at_idp.status().is_redirection(), "{}", at_idp.status());
    }
    let keys_after_two = dbsize(redis.port).await;
    assert!(
        keys_after_two > keys_before,
        "login state is stored in Redis"
    );
    let idp_seen = s.idp.requests().len();
    assert_eq!(s.idp.hits("/authorize"), 2);

    // Over the budget: refused before the store or the provider is touched.
    let r = s.gw.get("/.portcullis/login?rd=/account", &[JSON]).await;
    assert_limited(&r, DAY);
    assert_eq!(r.header("location"), None);
    assert_eq!(r.header("set-cookie"), None);
    // The callback shares the budget: no code is redeemed.
    let r =
        s.gw.get("/.portcullis/callback?code=abc&state=def", &[JSON])
            .await;
    assert_limited(&r, DAY);

    assert_eq!(dbsize(redis.port).await, keys_after_two, "no state stored");
    assert_eq!(
        s.idp.requests().len(),
        idp_seen,
        "the provider saw nothing more"
    );
    assert_eq!(s.idp.hits("/token"), 0);
    assert_eq!(
        counter(
            &s.gw,
            "portcullis_login_sent_total",
            &[("journey", "login"), ("provider", "idp")]
        )
        .await,
        2.0
    );
    assert_eq!(
        rate_limited(&s.gw, "per_ip", "portcullis-endpoints").await,
        2.0
    );
    // Routes are not under the login limit.
    assert_eq!(s.gw.get("/", &[]).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// Shared in Redis

/// A gateway on `redis` (key prefix `shared:`, the same for every member) with routes
/// `/fleet` (shared limit, local fallback), `/strict` (shared limit, fail closed),
/// `/open` (a local limit) and the rest public and unlimited.
async fn shared_gateway(echo: &Echo, redis: &RedisServer) -> Gateway {
    let port = free_port();
    let admin_port = free_port();
    let extra = format!(
        "{session}rate_limits:\n\
         \x20 fleet: {{ key: client_ip, rate: 1/day, burst: 3, store: shared }}\n\
         \x20 strict: {{ key: client_ip, rate: 1/day, burst: 3, store: shared, on_store_error: deny }}\n\
         \x20 local: {{ key: client_ip, rate: 1/day, burst: 100 }}\n\
         {up}",
        session = session_yaml(Some((&redis.url(), "shared:"))),
        up = upstream_app(echo.addr),
    );
    let route = |name: &str, limit: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: app\n    auth: public\n    rate_limits: [{limit}]\n")
    };
    let policy = public_catch_all(&format!(
        "{}{}{}",
        route("fleet", "fleet"),
        route("strict", "strict"),
        route("open", "local")
    ));
    Gateway::start_full(
        &gateway_yaml(port, admin_port, &extra),
        port,
        admin_port,
        &[("routes.yaml", &policy)],
    )
    .await
}

#[tokio::test]
async fn a_shared_limit_is_one_budget_across_two_gateways_on_one_redis() {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let a = shared_gateway(&echo, &redis).await;
    let b = shared_gateway(&echo, &redis).await;

    // A burst of 3, spent 2 on A and 1 on B (each alone would allow 3).
    for (gw, name) in [(&a, "A"), (&b, "B"), (&a, "A")] {
        let r = gw.get("/fleet", &[JSON]).await;
        assert_eq!(r.status, 200, "on {name}: {}\n{}", r.text(), gw.logs());
    }
    assert_limited(&b.get("/fleet", &[JSON]).await, DAY);
    assert_limited(&a.get("/fleet", &[JSON]).await, DAY);
    assert_eq!(reached(&echo, "/fleet"), 3);
    assert_eq!(rate_limited(&a, "fleet", "fleet").await, 1.0);
    assert_eq!(rate_limited(&b, "fleet", "fleet").await, 1.0);
    assert_eq!(fallbacks(&a, "fleet", "local").await, 0.0);
    assert_eq!(fallbacks(&b, "fleet", "local").await, 0.0);

    // Counted in Redis under the session store's prefix, the key hashed (no address
    // in clear).
    let keys = redis_cmd(redis.port, &["KEYS", "*"]).await;
    assert!(keys.contains("shared:rl:{"), "{keys}");
    assert!(!keys.contains("127.0.0.1"), "{keys}");
}

/// Spends one request of `/fleet` and `/strict` while Redis is up (so the gateway has
/// connected and counted there), then stops Redis.
async fn shared_gateway_then_redis_down() -> (Echo, Gateway) {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let gw = shared_gateway(&echo, &redis).await;
    for path in ["/fleet", "/strict"] {
        let r = gw.get(path, &[JSON]).await;
        assert_eq!(r.status, 200, "{path} with Redis up: {}", r.text());
    }
    assert_eq!(fallbacks(&gw, "fleet", "local").await, 0.0);
    drop(redis);
    (echo, gw)
}

#[tokio::test]
async fn a_shared_limit_falls_back_to_the_local_limiter_when_redis_is_down() {
    let (echo, gw) = shared_gateway_then_redis_down().await;
    // The local limiter has its whole burst: it spent nothing while Redis counted.
    for i in 0..3 {
        let r = gw.get("/fleet", &[JSON]).await;
        assert_eq!(r.status, 200, "request {i} with Redis down: {}", r.text());
    }
    assert_limited(&gw.get("/fleet", &[JSON]).await, DAY);
    assert_eq!(reached(&echo, "/fleet"), 1 + 3);
    assert_eq!(fallbacks(&gw, "fleet", "local").await, 4.0);
    assert_eq!(fallbacks(&gw, "fleet", "deny").await, 0.0);
    assert_eq!(rate_limited(&gw, "fleet", "fleet").await, 1.0);
}

#[tokio::test]
async fn a_shared_limit_with_on_store_error_deny_answers_503_when_redis_is_down() {
    let (echo, gw) = shared_gateway_then_redis_down().await;
    for _ in 0..2 {
        let r = gw.get("/strict", &[JSON]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "rate-limit-unavailable");
        assert_eq!(r.header("retry-after"), None);
    }
    assert_eq!(
        reached(&echo, "/strict"),
        1,
        "nothing passes while Redis is down"
    );
    assert_eq!(fallbacks(&gw, "strict", "deny").await, 2.0);
    assert_eq!(fallbacks(&gw, "strict", "local").await, 0.0);
}

#[tokio::test]
async fn routes_without_shared_limits_keep_working_when_redis_is_down() {
    let (echo, gw) = shared_gateway_then_redis_down().await;
    for path in ["/open", "/open", "/elsewhere"] {
        let r = gw.get(path, &[JSON]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(reached(&echo, "/open"), 2);
    assert_eq!(reached(&echo, "/elsewhere"), 1);
}

#[tokio::test]
async fn a_shared_limit_answers_in_bounded_time_when_redis_stops_answering() {
    let redis = RedisServer::start().await;
    let echo = Echo::start().await;
    let gw = shared_gateway(&echo, &redis).await;
    for path in ["/fleet", "/strict"] {
        assert_eq!(gw.get(path, &[JSON]).await.status, 200);
    }
    let info = redis_cmd(redis.port, &["INFO", "server"]).await;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("INFO server has process_id")
        .trim()
        .to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    };

    // Connections to Redis hang (SIGSTOP): the store's timeouts bound every check.
    signal("STOP");
    let started = std::time::Instant::now();
    let fleet = gw.get("/fleet", &[JSON]).await;
    let strict = gw.get("/strict", &[JSON]).await;
    let elapsed = started.elapsed();
    signal("CONT");

    assert_eq!(fleet.status, 200, "local fallback: {}", fleet.text());
    assert_eq!(strict.status, 503, "{}", strict.text());
    assert_eq!(strict.json()["error"], "rate-limit-unavailable");
    assert!(
        elapsed < Duration::from_secs(5),
        "two checks against a hung Redis took {elapsed:?}"
    );
    assert_eq!(fallbacks(&gw, "fleet", "local").await, 1.0);
    assert_eq!(fallbacks(&gw, "strict", "deny").await, 1.0);
}
