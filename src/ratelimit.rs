//! Rate limits: the named limits of `gateway.yaml`, enforced per key.
//!
//! A local limit is a `governor` keyed GCRA limiter in this process. A shared limit is
//! the same algorithm run atomically in Redis (a Lua script on Redis's own clock), so a
//! fleet of gateways spends one budget; when Redis cannot be reached it falls back to
//! the local limiter, or refuses (503) when the limit says `on_store_error: deny`.
//!
//! Keys are hashed: a limiter never holds client addresses, user ids or header values
//! in clear, and Redis keys stay short.

use crate::config::{KeyPart, RateLimitSpec};
use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::Duration;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit: try again after this long (`Retry-After`).
    Limited(Duration),
    /// A shared limit whose store is down, configured to fail closed.
    Unavailable,
}

/// What a key is made of for one request; `None` parts (no session, say) make the
/// limit not apply to the request.
pub struct KeyInput<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    pub session: Option<&'a str>,
    pub user: Option<&'a str>,
    pub route: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// One limit, with its state. Kept across reloads while its settings stay the same.
pub struct Limit<C: GovernorClock = DefaultClock> {
    pub spec: RateLimitSpec,
    local: RateLimiter<u64, DefaultKeyedStateStore<u64>, C, NoOpMiddleware<C::Instant>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limit<DefaultClock> {
    pub fn new(spec: RateLimitSpec) -> Limit {
        Limit::with_clock(spec, DefaultClock::default())
    }
}

impl<C: GovernorClock> Limit<C> {
    /// A limit on `clock` (tests use governor's `FakeRelativeClock`).
    pub fn with_clock(spec: RateLimitSpec, clock: C) -> Limit<C> {
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(spec.period)
            .unwrap_or_else(|| Quota::with_period(Duration::from_nanos(1)).expect("non-zero"))
            .allow_burst(burst);
        Limit {
            local: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock),
            hasher: Default::default(),
            spec,
        }
    }

    /// The key's text for this request, or `None` when a part is missing. Each part is
    /// length-prefixed, so no value (a header may hold anything) can make two different
    /// keys read the same.
    pub fn key_text(&self, input: &KeyInput<'_>) -> Option<String> {
        use std::fmt::Write;
        let mut out = String::with_capacity(64);
        let mut push = |v: &str| {
            let _ = write!(out, "{}:{v}|", v.len());
        };
        for part in &self.spec.key {
            match part {
                KeyPart::ClientIp => push(&client_key(input.client_ip?)),
                KeyPart::Session => push(input.session?),
                KeyPart::User => push(input.user?),
                KeyPart::Route => push(input.route),
                KeyPart::Header(name) => {
                    let v = input.headers.get(name)?;
                    // Bytes that are not UTF-8 are kept distinct (hex), not replaced.
                    match v.to_str() {
                        Ok(t) => push(t),
                        Err(_) => push(&crate::session::keys::hex(v.as_bytes())),
                    }
                }
            }
        }
        Some(out)
    }

    /// Spends one request of `key`'s budget in this process.
    pub fn check_local(&self, key: &str) -> Result<(), Refusal> {
        self.local
            .check_key(&self.hasher.hash_one(key))
            .map_err(|not_until| Refusal::Limited(not_until.wait_time_from(self.local_clock_now())))
    }

    fn local_clock_now(&self) -> C::Instant {
        self.local.clock().now()
    }

    /// Forgets keys whose budget is full again, so memory follows active keys only.
    pub fn prune(&self) {
        self.local.retain_recent();
    }
}

/// A client address as a limit key: IPv4 per address, IPv6 per /64 (one host or
/// subscriber network), so a client cannot get a fresh budget by stepping through the
/// addresses of its own /64, as failed-login regulation also counts it.
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Spends one request of this request's key: in Redis for a shared limit (falling
/// back as configured), else here. `Ok` also when the key cannot be made (a part
/// missing: the limit does not apply). The flag says a shared limit fell back.
pub async fn check<C: GovernorClock>(
    limit: &Limit<C>,
    store: &dyn crate::session::SessionStore,
    input: &KeyInput<'_>,
) -> (Result<(), Refusal>, bool) {
    let Some(key) = limit.key_text(input) else {
        return (Ok(()), false);
    };
    if !limit.spec.shared {
        return (limit.check_local(&key), false);
    }
    let shared = shared_key(&limit.spec.name, &key);
    match store
        .gcra(&shared, limit.spec.period, limit.spec.burst)
        .await
    {
        Ok(Ok(())) => (Ok(()), false),
        Ok(Err(wait)) => (Err(Refusal::Limited(wait)), false),
        Err(_) if limit.spec.fail_closed => (Err(Refusal::Unavailable), true),
        Err(_) => (limit.check_local(&key), true),
    }
}

/// The GCRA step, atomically in Redis on Redis's clock: allowed, or how many
/// microseconds until it would be. KEYS[1] the key; ARGV[1] the period and ARGV[2] the
/// burst tolerance ((burst - 1) periods), both in microseconds.
pub const GCRA_SCRIPT: &str = "\
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) \
local period = tonumber(ARGV[1]) \
local tolerance = tonumber(ARGV[2]) \
local tat = tonumber(redis.call('GET', KEYS[1]) or now) \
if tat < now then tat = now end \
if now < tat - tolerance then return tat - tolerance - now end \
local new = tat + period \
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1) \
return -1";

/// The Redis key of a shared limit's key (hashed; the limit's name in the hash tag's
/// place would put a whole limit in one Cluster slot, so the hash is the tag).
pub fn shared_key(limit: &str, key: &str) -> String {
    let h = crate::session::keys::sha256_hex(format!("{limit}{key}").as_bytes());
    format!("rl:{{{}}}", &h[..32])
}

/// Microseconds of a duration, for the script's arguments.
pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(key: Vec<KeyPart>, period_ms: u64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            name: "t".into(),
            key,
            period: Duration::from_millis(period_ms),
            burst,
            shared: false,
            fail_closed: false,
        }
    }

    fn input<'a>(headers: &'a http::HeaderMap, ip: &str) -> KeyInput<'a> {
        KeyInput {
            client_ip: Some(ip.parse().unwrap()),
            session: None,
            user: None,
            route: "r",
            headers,
        }
    }

    #[test]
    fn a_burst_passes_then_one_request_per_period() {
        let clock = FakeRelativeClock::default();
        let l = Limit::with_clock(spec(vec![KeyPart::ClientIp], 1000, 3), clock.clone());
        let h = http::HeaderMap::new();
        let k = l.key_text(&input(&h, "192.0.2.1")).unwrap();
        for _ in 0..3 {
            assert_eq!(l.check_local(&k), Ok(()));
        }
        match l.check_local(&k) {
            Err(Refusal::Limited(wait)) => assert_eq!(wait, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(999));
        assert!(l.check_local(&k).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check_local(&k), Ok(()));
        assert!(l.check_local(&k).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64s_budget() {
        let l = Limit::new(spec(vec![KeyPart::ClientIp], 60_000, 1));
        let h = http::HeaderMap::new();
        let key = |ip: &str| l.key_text(&input(&h, ip)).unwrap();
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"), "IPv4 per address");
    }

    #[test]
    fn each_key_has_its_own_budget() {
        let clock = FakeRelativeClock::default();
        let l = Limit::with_clock(spec(vec![KeyPart::ClientIp], 60_000, 1), clock);
        let h = http::HeaderMap::new();
        let a = l.key_text(&input(&h, "192.0.2.1")).unwrap();
        let b = l.key_text(&input(&h, "192.0.2.2")).unwrap();
        assert_eq!(l.check_local(&a), Ok(()));
        assert!(l.check_local(&a).is_err());
        assert_eq!(l.check_local(&b), Ok(()), "another client is not limited");
    }

    #[test]
    fn keys_combine_parts_and_a_missing_part_means_no_key() {
        let l = Limit::new(spec(
            vec![
                KeyPart::User,
                KeyPart::Route,
                KeyPart::Header(http::HeaderName::from_static("x-api-key")),
            ],
            1000,
            1,
        ));
        let mut h = http::HeaderMap::new();
        let mut i = input(&h, "192.0.2.1");
        assert_eq!(l.key_text(&i), None, "no user");
        i.user = Some("idp:alice");
        assert_eq!(l.key_text(&i), None, "no header");
        h.insert("x-api-key", "k1".parse().unwrap());
        let i = KeyInput {
            user: Some("idp:alice"),
            ..input(&h, "192.0.2.1")
        };
        assert_eq!(l.key_text(&i).as_deref(), Some("9:idp:alice|1:r|2:k1|"));
        // Values holding the separator cannot collide with other splits.
        let two = Limit::new(spec(
            vec![
                KeyPart::Header(http::HeaderName::from_static("a")),
                KeyPart::Header(http::HeaderName::from_static("b")),
            ],
            1000,
            1,
        ));
        let key = |a: &str, b: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("a", a.parse().unwrap());
            h.insert("b", b.parse().unwrap());
            two.key_text(&input(&h, "192.0.2.1")).unwrap()
        };
        assert_ne!(key("x|1:y", "z"), key("x", "y|1:z"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
