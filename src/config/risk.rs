//! `risk:` in `gateway.yaml` and each route's `sensitivity`, `risk_mode`,
//! `deny_when_risk_at_least` and `step_up.when_risk_at_least`. Enforced by
//! `crate::risk`.

use super::node;
use super::raw::*;
use super::Builder;
use ipnet::IpNet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Enforce decisions, or only report what they would have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RiskMode {
    #[default]
    Enforce,
    Shadow,
}

impl RiskMode {
    pub fn label(self) -> &'static str {
        match self {
            RiskMode::Enforce => "enforce",
            RiskMode::Shadow => "shadow",
        }
    }
}

impl From<RawRiskMode> for RiskMode {
    fn from(m: RawRiskMode) -> Self {
        match m {
            RawRiskMode::Enforce => RiskMode::Enforce,
            RawRiskMode::Shadow => RiskMode::Shadow,
        }
    }
}

/// The weights of the signals (0: off).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalWeights {
    pub ip_changed: i32,
    pub user_agent_changed: i32,
    /// (weight, authentication older than this)
    pub auth_age: Option<(i32, Duration)>,
    pub network_deny: i32,
    pub network_allow: i32,
    pub recent_failures: i32,
    pub new_device: i32,
    pub credential_stuffing: Option<CountSignal>,
    pub signup_velocity: Option<CountSignal>,
    pub country_changed: i32,
    /// (weight, fastest believable travel in km/h)
    pub impossible_travel: Option<(i32, u32)>,
}

/// A signal that fires when something counted per client address reaches `at_least`
/// within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountSignal {
    pub weight: i32,
    pub at_least: u32,
    pub window: Duration,
}

/// The GeoIP database named by `risk.geoip`, read when the configuration was built.
#[derive(Clone)]
pub struct GeoDb {
    pub path: PathBuf,
    pub db: Arc<crate::geoip::GeoIp>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GeoDb({})", self.path.display())
    }
}

impl PartialEq for GeoDb {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && Arc::ptr_eq(&self.db, &other.db)
    }
}

/// `risk:`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RiskSpec {
    pub mode: RiskMode,
    pub deny_networks: Vec<IpNet>,
    pub allow_networks: Vec<IpNet>,
    pub weights: SignalWeights,
    pub geoip: Option<GeoDb>,
}

impl RiskSpec {
    /// Signals that read counts per client address from the store (one round trip).
    pub fn reads_address_counts(&self) -> bool {
        let w = &self.weights;
        w.recent_failures != 0 || w.credential_stuffing.is_some() || w.signup_velocity.is_some()
    }
}

/// A route's risk settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteRisk {
    /// Added to every request's score on this route.
    pub sensitivity: i32,
    /// Overrides the gateway's mode for this route.
    pub mode: Option<RiskMode>,
    pub deny_at: Option<i32>,
    pub step_up_at: Option<i32>,
}

impl RouteRisk {
    /// The route makes decisions by risk.
    pub fn decides(&self) -> bool {
        self.deny_at.is_some() || self.step_up_at.is_some()
    }
}

impl Builder<'_> {
    pub(super) fn risk(
        &mut self,
        base: &Path,
        regulation: bool,
        stamps: &mut super::FileStamps,
    ) -> RiskSpec {
        let Some(n) = self.root.get("risk") else {
            return RiskSpec::default();
        };
        if !matches!(n.value, node::Value::Map(_)) {
            self.err("risk", "expected { mode, networks, signals }");
            return RiskSpec::default();
        }
        let Some(raw) = self.decode::<RawRisk>(n, "risk") else {
            return RiskSpec::default();
        };
        let nets = |b: &mut Self, list: &[String], path: &str| -> Vec<IpNet> {
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                match s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(n) => out.push(n),
                    Err(_) => b.err(
                        &format!("{path}[{i}]"),
                        format!("{s:?} is not an address or network (write 203.0.113.0/24 or 2001:db8::/32)"),
                    ),
                }
            }
            out
        };
        let deny_networks = nets(self, &raw.networks.deny, "risk.networks.deny");
        let allow_networks = nets(self, &raw.networks.allow, "risk.networks.allow");
        let s = raw.signals;
        let geoip = raw.geoip.as_deref().and_then(|rel| {
            let path = base.join(rel);
            let stamp = super::file_stamp(&path);
            match crate::geoip::GeoIp::open(&path) {
                Ok(db) => {
                    stamps.entries.push((path.clone(), stamp));
                    Some(GeoDb {
                        path,
                        db: Arc::new(db),
                    })
                }
                Err(e) => {
                    self.err("risk.geoip", format!("{}: {e}", path.display()));
                    None
                }
            }
        });
        if raw.geoip.is_none() {
            for (present, name) in [
                (s.country_changed.is_some(), "country_changed"),
                (s.impossible_travel.is_some(), "impossible_travel"),
            ] {
                if present {
                    self.err(
                        &format!("risk.signals.{name}"),
                        "locates client addresses, which needs risk.geoip (a MaxMind City or Country database)",
                    );
                }
            }
        }
        let count = |b: &mut Self,
                     name: &str,
                     weight: i32,
                     n: Option<u32>,
                     window: &Option<String>,
                     what: &str,
                     defaults: (u32, Duration)| {
            let at_least = n.unwrap_or(defaults.0);
            if at_least < 2 {
                b.err(
                    &format!("risk.signals.{name}.{what}"),
                    format!(
                        "must be at least 2 (one {} is no pattern)",
                        what.trim_end_matches('s')
                    ),
                );
            }
            let window = b.duration(window, &format!("risk.signals.{name}.window"), defaults.1);
            CountSignal {
                weight,
                at_least,
                window,
            }
        };
        let credential_stuffing = s.credential_stuffing.map(|c| {
            count(
                self,
                "credential_stuffing",
                c.weight,
                c.accounts,
                &c.window,
                "accounts",
                (10, Duration::from_secs(600)),
            )
        });
        let signup_velocity = s.signup_velocity.map(|c| {
            count(
                self,
                "signup_velocity",
                c.weight,
                c.signups,
                &c.window,
                "signups",
                (5, Duration::from_secs(3600)),
            )
        });
        let impossible_travel = s.impossible_travel.map(|t| {
            let speed = t.max_speed_kmh.unwrap_or(1000);
            if speed == 0 {
                self.err(
                    "risk.signals.impossible_travel.max_speed_kmh",
                    "must be above 0 (an airliner flies about 900 km/h)",
                );
            }
            (t.weight, speed)
        });
        if s.recent_failures.is_some() && !regulation {
            self.err(
                "risk.signals.recent_failures",
                "counts failed logins from the client's address, which needs login.regulation",
            );
        }
        let auth_age = s.auth_age.map(|a| {
            let after = self.duration(
                &Some(a.after),
                "risk.signals.auth_age.after",
                Duration::from_secs(12 * 3600),
            );
            (a.weight, after)
        });
        RiskSpec {
            mode: raw.mode.map(RiskMode::from).unwrap_or_default(),
            deny_networks,
            allow_networks,
            weights: SignalWeights {
                ip_changed: s.ip_changed.unwrap_or(0),
                user_agent_changed: s.user_agent_changed.unwrap_or(0),
                auth_age,
                network_deny: s.network_deny.unwrap_or(0),
                network_allow: s.network_allow.unwrap_or(0),
                recent_failures: s.recent_failures.unwrap_or(0),
                new_device: s.new_device.unwrap_or(0),
                credential_stuffing,
                signup_velocity,
                country_changed: s.country_changed.unwrap_or(0),
                impossible_travel,
            },
            geoip,
        }
    }
}
