//! Risk scoring: deterministic signals, each with a weight from `risk.signals`, summed
//! into a score once per request on routes that decide by risk. Every signal that
//! fired is reported by name with its contribution, so a decision can be explained.
//!
//! The signals use what the request and its session already hold (no I/O), except
//! those counted per client address (`recent_failures`, `credential_stuffing`,
//! `signup_velocity`): their counts come from the store in one round trip
//! ([`crate::regulation::address_counts`]). GeoIP lookups are in memory.

use crate::config::{RiskSpec, RouteRisk};
use crate::session::Session;
use std::net::IpAddr;

/// One signal's part in a score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    pub signal: &'static str,
    pub points: i32,
}

/// A request's score and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    pub score: i32,
    pub contributions: Vec<Contribution>,
}

impl Assessment {
    fn add(&mut self, signal: &'static str, points: i32) {
        if points != 0 {
            self.score += points;
            self.contributions.push(Contribution { signal, points });
        }
    }

    /// The signal that added the most (metric label), or `none`.
    pub fn top_signal(&self) -> &'static str {
        self.contributions
            .iter()
            .filter(|c| c.points > 0)
            .max_by_key(|c| c.points)
            .map_or("none", |c| c.signal)
    }

    /// `signal=points` pairs, for logs and explanations.
    pub fn explain(&self) -> String {
        if self.contributions.is_empty() {
            return "no signal".into();
        }
        self.contributions
            .iter()
            .map(|c| format!("{}={:+}", c.signal, c.points))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the request brings.
pub struct Facts<'a> {
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub now_s: u64,
    /// What the store counts against the client's address.
    pub counts: AddressCounts,
}

/// Counted per client address in the store (see [`crate::regulation`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressCounts {
    /// Failed logins in the regulation window.
    pub failures: u64,
    /// Distinct accounts that signed in or tried to, in the credential-stuffing window.
    pub accounts: u64,
    /// Sign-up journeys started, in the sign-up-velocity window.
    pub signups: u64,
}

/// The network a client address belongs to, for "the client moved": IPv4 by /24, IPv6
/// by /48 (one site).
fn network(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(a) => (4, u128::from(u32::from(a) >> 8)),
        IpAddr::V6(a) => (6, u128::from(a) >> 80),
    }
}

/// What a route's thresholds make of a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `allow`, `step-up` or `deny`.
    pub outcome: &'static str,
    /// The threshold reached, for `step-up` and `deny`.
    pub threshold: Option<i32>,
}

/// Deny at or above `deny_at`; else step up at or above `step_up_at` when the session
/// is below the step-up's level (`step_needed`); else allow.
pub fn verdict(route: &RouteRisk, score: i32, step_needed: bool) -> Verdict {
    if let Some(t) = route.deny_at.filter(|t| score >= *t) {
        return Verdict {
            outcome: "deny",
            threshold: Some(t),
        };
    }
    if let Some(t) = route.step_up_at.filter(|t| score >= *t && step_needed) {
        return Verdict {
            outcome: "step-up",
            threshold: Some(t),
        };
    }
    Verdict {
        outcome: "allow",
        threshold: None,
    }
}

/// Scores a request of session `s` on a route.
pub fn assess(spec: &RiskSpec, route: &RouteRisk, s: &Session, facts: &Facts<'_>) -> Assessment {
    let w = &spec.weights;
    let mut a = Assessment::default();
    a.add("route_sensitivity", route.sensitivity);
    let geo = spec
        .geoip
        .as_ref()
        .filter(|_| w.country_changed != 0 || w.impossible_travel.is_some());
    // Where the session signed in and where the request comes from, when they are in
    // different networks: what ip_changed and the GeoIP signals look at.
    let moved = if w.ip_changed != 0 || geo.is_some() {
        let at_login = s
            .client_ip
            .as_deref()
            .and_then(|i| i.parse::<IpAddr>().ok());
        match (at_login, facts.client_ip) {
            (Some(then), Some(now)) if network(then) != network(now) => Some((then, now)),
            _ => None,
        }
    } else {
        None
    };
    if moved.is_some() {
        a.add("ip_changed", w.ip_changed);
    }
    if w.user_agent_changed != 0 {
        if let (Some(then), Some(now)) = (s.user_agent.as_deref(), facts.user_agent) {
            // Compared as stored at login (the first 512 characters).
            if !now.chars().take(512).eq(then.chars()) {
                a.add("user_agent_changed", w.user_agent_changed);
            }
        }
    }
    if let Some((weight, after)) = w.auth_age {
        let old = s
            .auth_time
            .is_none_or(|t| facts.now_s.saturating_sub(t) > after.as_secs());
        if old {
            a.add("auth_age", weight);
        }
    }
    if let Some(ip) = facts.client_ip {
        if spec.deny_networks.iter().any(|n| n.contains(&ip)) {
            a.add("network_deny", w.network_deny);
        }
        if spec.allow_networks.iter().any(|n| n.contains(&ip)) {
            a.add("network_allow", w.network_allow);
        }
    }
    if facts.counts.failures > 0 {
        a.add("recent_failures", w.recent_failures);
    }
    if let Some(c) = w.credential_stuffing {
        if facts.counts.accounts >= u64::from(c.at_least) {
            a.add("credential_stuffing", c.weight);
        }
    }
    if let Some(c) = w.signup_velocity {
        if facts.counts.signups >= u64::from(c.at_least) {
            a.add("signup_velocity", c.weight);
        }
    }
    if s.new_device {
        a.add("new_device", w.new_device);
    }
    if let (Some(geo), Some(moved)) = (geo, moved) {
        geo_signals(&mut a, &geo.db, w, s, moved, facts.now_s);
    }
    a
}

/// `country_changed` and `impossible_travel`: where the session signed in (`then`)
/// against where the request comes from (`now`), two different networks. Silent when
/// either address is not in the database.
fn geo_signals(
    a: &mut Assessment,
    db: &crate::geoip::GeoIp,
    w: &crate::config::SignalWeights,
    s: &Session,
    (then, now): (IpAddr, IpAddr),
    now_s: u64,
) {
    let (Some(from), Some(to)) = (db.locate(then), db.locate(now)) else {
        return;
    };
    if let (Some(c1), Some(c2)) = (from.country, to.country) {
        if c1 != c2 {
            a.add("country_changed", w.country_changed);
        }
    }
    if let Some((weight, max_kmh)) = w.impossible_travel {
        let km = crate::geoip::surely_apart_km(&from, &to);
        if km > 0.0 {
            // Hours since sign-in, at least a minute (two requests a second apart from
            // two continents are still impossible, but not infinitely so).
            let since_ms = (now_s * 1000).saturating_sub(s.created_ms).max(60_000);
            let kmh = km / (since_ms as f64 / 3_600_000.0);
            if kmh > f64::from(max_kmh) {
                a.add("impossible_travel", weight);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignalWeights;
    use std::time::Duration;

    fn spec() -> RiskSpec {
        RiskSpec {
            weights: SignalWeights {
                ip_changed: 20,
                user_agent_changed: 40,
                auth_age: Some((10, Duration::from_secs(3600))),
                network_deny: 100,
                network_allow: -30,
                recent_failures: 25,
                new_device: 30,
                ..SignalWeights::default()
            },
            deny_networks: vec!["203.0.113.0/24".parse().unwrap()],
            allow_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..RiskSpec::default()
        }
    }

    fn session() -> Session {
        Session {
            client_ip: Some("192.0.2.10".into()),
            user_agent: Some("Firefox".into()),
            auth_time: Some(10_000),
            ..Session::default()
        }
    }

    fn facts(ip: &str, ua: &'static str, now_s: u64, failures: u64) -> Facts<'static> {
        Facts {
            client_ip: Some(ip.parse().unwrap()),
            user_agent: Some(ua),
            now_s,
            counts: AddressCounts {
                failures,
                ..AddressCounts::default()
            },
        }
    }

    #[test]
    fn the_same_client_soon_after_login_scores_only_the_route() {
        let route = RouteRisk {
            sensitivity: 5,
            ..RouteRisk::default()
        };
        let a = assess(
            &spec(),
            &route,
            &session(),
            &facts("192.0.2.99", "Firefox", 10_060, 0),
        );
        assert_eq!(a.score, 5, "{}", a.explain());
        assert_eq!(a.explain(), "route_sensitivity=+5");
    }

    #[test]
    fn each_signal_adds_its_weight_and_is_named() {
        let r = RouteRisk::default();
        let s = session();
        let one = |f: Facts<'static>| assess(&spec(), &r, &s, &f);
        assert_eq!(
            one(facts("198.51.100.1", "Firefox", 10_060, 0)).explain(),
            "ip_changed=+20"
        );
        assert_eq!(
            one(facts("192.0.2.1", "Chrome", 10_060, 0)).explain(),
            "user_agent_changed=+40"
        );
        assert_eq!(
            one(facts("192.0.2.1", "Firefox", 20_000, 0)).explain(),
            "auth_age=+10"
        );
        assert_eq!(
            one(facts("192.0.2.1", "Firefox", 10_060, 3)).explain(),
            "recent_failures=+25"
        );
        let denied = one(facts("203.0.113.5", "Firefox", 10_060, 0));
        assert_eq!(
            denied.score,
            120,
            "moved and in a denied network: {}",
            denied.explain()
        );
        assert_eq!(denied.top_signal(), "network_deny");
        let all = one(facts("203.0.113.5", "Chrome", 20_000, 1));
        assert_eq!(all.score, 20 + 40 + 10 + 100 + 25);
        let allowed = one(facts("10.1.2.3", "Firefox", 10_060, 0));
        assert_eq!(allowed.score, -10, "{}", allowed.explain());
        assert_eq!(allowed.top_signal(), "ip_changed");
    }

    #[test]
    fn thresholds_deny_before_they_step_up() {
        let r = RouteRisk {
            deny_at: Some(90),
            step_up_at: Some(40),
            ..RouteRisk::default()
        };
        assert_eq!(verdict(&r, 39, true).outcome, "allow");
        assert_eq!(
            verdict(&r, 40, true),
            Verdict {
                outcome: "step-up",
                threshold: Some(40)
            }
        );
        assert_eq!(
            verdict(&r, 40, false).outcome,
            "allow",
            "already at the level"
        );
        assert_eq!(
            verdict(&r, 95, true),
            Verdict {
                outcome: "deny",
                threshold: Some(90)
            }
        );
    }

    #[test]
    fn signals_without_a_weight_are_off() {
        let a = assess(
            &RiskSpec::default(),
            &RouteRisk::default(),
            &session(),
            &facts("203.0.113.5", "Chrome", 99_999, 9),
        );
        assert_eq!(a, Assessment::default());
        assert_eq!(a.top_signal(), "none");
    }

    fn geo_spec() -> RiskSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/geoip/test-city.mmdb");
        RiskSpec {
            weights: SignalWeights {
                country_changed: 30,
                impossible_travel: Some((60, 1000)),
                ..SignalWeights::default()
            },
            geoip: Some(crate::config::GeoDb {
                db: std::sync::Arc::new(crate::geoip::GeoIp::open(&path).unwrap()),
                path,
            }),
            ..RiskSpec::default()
        }
    }

    #[test]
    fn a_session_seen_in_another_country_too_soon_to_have_flown_there_scores_both() {
        // Signed in in London (192.0.2.0/24) at t = 1000 s.
        let s = Session {
            client_ip: Some("192.0.2.10".into()),
            created_ms: 1_000_000,
            ..Session::default()
        };
        let r = RouteRisk::default();
        let at = |ip: &str, hours: f64| Facts {
            client_ip: Some(ip.parse().unwrap()),
            user_agent: None,
            now_s: 1000 + (hours * 3600.0) as u64,
            counts: AddressCounts::default(),
        };
        let spec = geo_spec();
        // Sydney is ~17,000 km away: 10 hours later is 1,700 km/h, a day later 700 km/h.
        assert_eq!(
            assess(&spec, &r, &s, &at("198.51.100.7", 10.0)).explain(),
            "country_changed=+30, impossible_travel=+60"
        );
        assert_eq!(
            assess(&spec, &r, &s, &at("198.51.100.7", 24.0)).explain(),
            "country_changed=+30"
        );
        // Manchester (~260 km, the same country) a minute later is too fast; an hour is not.
        assert_eq!(
            assess(&spec, &r, &s, &at("203.0.113.200", 0.0)).explain(),
            "impossible_travel=+60"
        );
        assert_eq!(
            assess(&spec, &r, &s, &at("203.0.113.200", 1.0)).explain(),
            "no signal"
        );
        // Same network, or an address the database does not place: nothing to compare.
        assert_eq!(assess(&spec, &r, &s, &at("192.0.2.99", 0.0)).score, 0);
        assert_eq!(assess(&spec, &r, &s, &at("10.9.9.9", 0.0)).score, 0);
        // Without the database the signals are absent.
        let blind = RiskSpec {
            geoip: None,
            ..geo_spec()
        };
        assert_eq!(assess(&blind, &r, &s, &at("198.51.100.7", 0.0)).score, 0);
    }

    #[test]
    fn address_counts_fire_at_their_thresholds() {
        let c = |weight, at_least| {
            Some(crate::config::CountSignal {
                weight,
                at_least,
                window: std::time::Duration::from_secs(600),
            })
        };
        let spec = RiskSpec {
            weights: SignalWeights {
                credential_stuffing: c(50, 10),
                signup_velocity: c(20, 5),
                ..SignalWeights::default()
            },
            ..RiskSpec::default()
        };
        assert!(spec.reads_address_counts());
        let r = RouteRisk::default();
        let with = |accounts, signups| Facts {
            client_ip: None,
            user_agent: None,
            now_s: 0,
            counts: AddressCounts {
                failures: 0,
                accounts,
                signups,
            },
        };
        let one = |f| assess(&spec, &r, &session(), &f).explain();
        assert_eq!(one(with(9, 4)), "no signal");
        assert_eq!(one(with(10, 4)), "credential_stuffing=+50");
        assert_eq!(
            one(with(11, 5)),
            "credential_stuffing=+50, signup_velocity=+20"
        );
        assert!(!RiskSpec::default().reads_address_counts());
    }

    #[test]
    fn ipv6_clients_move_when_they_leave_their_48() {
        let mut s = session();
        s.client_ip = Some("2001:db8:1:2::1".into());
        let r = RouteRisk::default();
        let same = Facts {
            client_ip: Some("2001:db8:1:ff::9".parse().unwrap()),
            user_agent: None,
            now_s: 10_000,
            counts: AddressCounts::default(),
        };
        assert_eq!(assess(&spec(), &r, &s, &same).score, 0);
        let moved = Facts {
            client_ip: Some("2001:db8:2::1".parse().unwrap()),
            ..same
        };
        assert_eq!(assess(&spec(), &r, &s, &moved).score, 20);
    }
}
