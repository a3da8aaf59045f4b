//! `risk:` in `gateway.yaml` and each route's `sensitivity`, `risk_mode`,
//! `deny_when_risk_at_least` and `step_up.when_risk_at_least`. Enforced by
//! `crate::risk`.

use super::node;
use super::raw::*;
use super::Builder;
use ipnet::IpNet;
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
}

/// `risk:`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RiskSpec {
    pub mode: RiskMode,
    pub deny_networks: Vec<IpNet>,
    pub allow_networks: Vec<IpNet>,
    pub weights: SignalWeights,
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
    pub(super) fn risk(&mut self, regulation: bool) -> RiskSpec {
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
        self.refuse_present(
            "risk.signals",
            &[
                (s.credential_stuffing.is_some(), "credential_stuffing"),
                (s.signup_velocity.is_some(), "signup_velocity"),
                (s.country_changed.is_some(), "country_changed"),
                (s.impossible_travel.is_some(), "impossible_travel"),
            ],
            "is not available in this version yet",
        );
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
            },
        }
    }
}
