//! `rate_limits:` (named limits in `gateway.yaml`), `login.rate_limits` and each route's
//! `rate_limits`. Validated here; enforced by `crate::ratelimit`.

use super::raw::*;
use super::{AuthMode, Builder, SessionSpec, StoreSpec};
use std::time::Duration;

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address (from `X-Forwarded-For` only behind `trusted_proxies`).
    ClientIp,
    /// The session (its id's hash).
    Session,
    /// The signed-in user (`provider:sub`).
    User,
    /// The route's name.
    Route,
    /// A request header's value (lower-case name).
    Header(http::HeaderName),
}

impl KeyPart {
    /// Known before authentication (so the limit protects the store and the IdP too).
    pub fn before_auth(&self) -> bool {
        !matches!(self, KeyPart::Session | KeyPart::User)
    }
}

/// A named limit, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSpec {
    pub name: String,
    pub key: Vec<KeyPart>,
    /// Time to earn one request.
    pub period: Duration,
    /// Requests allowed at once.
    pub burst: u32,
    /// Counted in the session store's Redis, for the whole fleet.
    pub shared: bool,
    /// When the shared store cannot be reached: refuse (503) instead of counting locally.
    pub fail_closed: bool,
}

impl RateLimitSpec {
    /// Known before authentication: every part of the key.
    pub fn before_auth(&self) -> bool {
        self.key.iter().all(KeyPart::before_auth)
    }
}

/// `login:`: what applies to the login endpoints.
#[derive(Debug, Clone, Default)]
pub struct LoginSpec {
    /// Limits applied to `/.portcullis/login` and `/.portcullis/callback`.
    pub rate_limits: Vec<String>,
    /// Failed-login regulation, when configured.
    pub regulation: Option<RegulationSpec>,
}

/// `login.regulation`: failed logins counted per account and per client address, in
/// the session store (so across the fleet); past a threshold each new login waits
/// (back-off), past the maximum it is refused for `ban`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegulationSpec {
    pub window: Duration,
    pub max_failures: u32,
    pub max_failures_per_ip: u32,
    pub backoff_after: u32,
    pub backoff: Duration,
    pub ban: Duration,
}

/// `"50/s"`, `"10/min"`, `"100/h"`, `"1000/day"`: (count, unit).
fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let unit = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        _ => return None,
    };
    Some((n, unit))
}

impl Builder<'_> {
    /// `rate_limits:` in document order.
    pub(super) fn rate_limits(&mut self, session: &SessionSpec) -> Vec<RateLimitSpec> {
        let mut out = Vec::new();
        let entries = self.named_entries::<RawRateLimit>(
            "rate_limits",
            "expected a mapping of limit name to { key, rate, burst }",
            "limit names are strings",
            |name| format!("{name:?}: limit names use lower-case letters, digits, '-' and '_' (they become metric labels)"),
        );
        for (name, path, raw) in entries {
            let mut key = Vec::new();
            let parts = raw.key.into_vec();
            if parts.is_empty() {
                self.err(&format!("{path}.key"), "name at least one key part");
            }
            for (i, part) in parts.iter().enumerate() {
                let kp = match part.as_str() {
                    "client_ip" => Some(KeyPart::ClientIp),
                    "session" => Some(KeyPart::Session),
                    "user" => Some(KeyPart::User),
                    "route" => Some(KeyPart::Route),
                    h => h
                        .strip_prefix("header:")
                        .and_then(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
                        .map(KeyPart::Header),
                };
                match kp {
                    Some(kp) if !key.contains(&kp) => key.push(kp),
                    Some(_) => self.err(
                        &format!("{path}.key[{i}]"),
                        format!("{part:?} is listed twice"),
                    ),
                    None => self.err(
                        &format!("{path}.key[{i}]"),
                        format!("{part:?}: a key part is client_ip, session, user, route or header:<Name>"),
                    ),
                }
            }
            let Some((count, unit)) = parse_rate(&raw.rate) else {
                self.err(
                    &format!("{path}.rate"),
                    format!(
                        "{:?}: write a count per unit, e.g. 50/s, 10/min, 100/h, 1000/day",
                        raw.rate
                    ),
                );
                continue;
            };
            let burst = raw.burst.unwrap_or(count);
            if burst == 0 {
                self.err(&format!("{path}.burst"), "must be at least 1");
            }
            let shared = raw.store == Some(RawLimitStore::Shared);
            if shared && matches!(session.store, StoreSpec::Memory) {
                self.err(
                    &format!("{path}.store"),
                    "shared limits are counted in Redis: set session.store to redis (or use store: local)",
                );
            }
            if raw.on_store_error.is_some() && !shared {
                self.err(
                    &format!("{path}.on_store_error"),
                    "applies only to limits with store: shared",
                );
            }
            out.push(RateLimitSpec {
                name,
                key,
                period: unit / count,
                burst: burst.max(1),
                shared,
                fail_closed: raw.on_store_error == Some(RawOnStoreError::Deny),
            });
        }
        out
    }

    /// `login:`.
    pub(super) fn login(&mut self, limits: &[RateLimitSpec]) -> LoginSpec {
        let raw: RawLogin = match self.root.get("login") {
            None => RawLogin::default(),
            Some(n) => self.decode(n, "login").unwrap_or_default(),
        };
        for (i, name) in raw.rate_limits.iter().enumerate() {
            let path = format!("login.rate_limits[{i}]");
            match limits.iter().find(|l| &l.name == name) {
                None => self.unknown_limit(&path, name, limits),
                Some(l) if !l.before_auth() => self.err(
                    &path,
                    format!("limit {name:?} is keyed by session or user, which a login does not have yet"),
                ),
                Some(_) => {}
            }
        }
        let regulation = raw.regulation.map(|r| {
            let p = |k: &str| format!("login.regulation.{k}");
            let spec = RegulationSpec {
                window: self.duration(&r.window, &p("window"), Duration::from_secs(600)),
                max_failures: r.max_failures.unwrap_or(5),
                max_failures_per_ip: r.max_failures_per_ip.unwrap_or(50),
                backoff_after: r.backoff_after.unwrap_or(3),
                backoff: self.duration(&r.backoff, &p("backoff"), Duration::from_secs(1)),
                ban: self.duration(&r.ban, &p("ban"), Duration::from_secs(900)),
            };
            if spec.max_failures == 0 || spec.max_failures_per_ip == 0 {
                self.err(&p("max_failures"), "thresholds are at least 1");
            }
            if spec.backoff_after >= spec.max_failures.min(spec.max_failures_per_ip) {
                self.warn(
                    &p("backoff_after"),
                    "is not below max_failures, so logins are banned before any back-off",
                );
            }
            spec
        });
        LoginSpec {
            rate_limits: raw.rate_limits,
            regulation,
        }
    }

    /// `audit:`: `output: stdout` (default), `output: off`, or `file: <path>`.
    pub(super) fn audit(&mut self, base: &std::path::Path) -> crate::audit::AuditOutput {
        use crate::audit::AuditOutput;
        let raw: RawAudit = match self.root.get("audit") {
            None => RawAudit::default(),
            Some(n) => self.decode(n, "audit").unwrap_or_default(),
        };
        match (raw.output.as_deref(), raw.file) {
            (None, Some(f)) => AuditOutput::File(base.join(f)),
            (Some("stdout") | None, None) => AuditOutput::Stdout,
            (Some("off"), None) => AuditOutput::Off,
            (Some(_), Some(_)) => {
                self.err("audit", "give either `output` or `file`, not both");
                AuditOutput::Off
            }
            (Some(o), None) => {
                self.err(
                    "audit.output",
                    format!("{o:?}: stdout or off (or `file: <path>` instead)"),
                );
                AuditOutput::Off
            }
        }
    }

    pub(super) fn shutdown_drain(&mut self) -> Duration {
        let raw: RawShutdown = match self.root.get("shutdown") {
            None => RawShutdown::default(),
            Some(n) => self.decode(n, "shutdown").unwrap_or_default(),
        };
        let drain = self.duration(&raw.drain, "shutdown.drain", Duration::ZERO);
        if drain > Duration::from_secs(300) {
            self.err(
                "shutdown.drain",
                "at most 5m (load balancers notice a failing readiness probe in seconds)",
            );
        }
        drain
    }

    pub(super) fn logging(&mut self) -> crate::logging::LoggingSpec {
        use crate::logging::{LogFormat, LoggingSpec};
        let raw: RawLogging = match self.root.get("logging") {
            None => RawLogging::default(),
            Some(n) => self.decode(n, "logging").unwrap_or_default(),
        };
        let mut spec = LoggingSpec::default();
        if let Some(l) = raw.level {
            match l.parse::<log::LevelFilter>() {
                Ok(level) => spec.level = level,
                Err(_) => self.err(
                    "logging.level",
                    format!("{l:?}: error, warn, info, debug, trace or off"),
                ),
            }
        }
        match raw.format.as_deref() {
            None | Some("text") => {}
            Some("json") => spec.format = LogFormat::Json,
            Some(f) => self.err("logging.format", format!("{f:?}: text or json")),
        }
        if let Some(a) = raw.access_log {
            spec.access_log = a;
        }
        spec
    }

    /// A route's `rate_limits`: names of defined limits; session and user keys only on
    /// routes that have an identity.
    pub(super) fn route_limits(
        &mut self,
        names: Option<Vec<String>>,
        auth: AuthMode,
        path: &str,
        limits: &[RateLimitSpec],
    ) -> Vec<String> {
        let names = names.unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let p = format!("{path}.rate_limits[{i}]");
            match limits.iter().find(|l| &l.name == name) {
                None => self.unknown_limit(&p, name, limits),
                Some(l) if !l.before_auth() && matches!(auth, AuthMode::Public | AuthMode::Deny) => {
                    self.err(
                        &p,
                        format!("limit {name:?} is keyed by session or user, which a route with auth public or deny never has"),
                    )
                }
                // A bearer token carries a user but no session: the limit would never
                // apply, silently.
                Some(l) if auth == AuthMode::Bearer && l.key.contains(&KeyPart::Session) => {
                    self.err(
                        &p,
                        format!("limit {name:?} is keyed by session, which a route with auth bearer never has (key it by user)"),
                    )
                }
                Some(_) => {}
            }
        }
        names
    }

    fn unknown_limit(&mut self, path: &str, name: &str, limits: &[RateLimitSpec]) {
        let known: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
        self.err(
            path,
            format!(
                "unknown limit {name:?} (defined under `rate_limits:` in gateway.yaml: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_a_count_per_unit() {
        assert_eq!(parse_rate("50/s"), Some((50, Duration::from_secs(1))));
        assert_eq!(
            parse_rate(" 10 / min "),
            Some((10, Duration::from_secs(60)))
        );
        assert_eq!(
            parse_rate("1000/day"),
            Some((1000, Duration::from_secs(86_400)))
        );
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("5/fortnight"), None);
        assert_eq!(parse_rate("fast"), None);
    }
}
