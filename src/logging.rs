//! Logs: the gateway's own log lines (through `log` and `env_logger`, to stderr) and the
//! access log (one line per request), both in the format `logging.format` names: `text`
//! for people at a terminal, `json` (one object per line) for log pipelines.
//!
//! The access log never blocks the request path: its lines go through a bounded queue
//! to a writer thread (see [`crate::audit::LineQueue`]); when the queue is full a line
//! is dropped and counted (`portcullis_log_lines_dropped_total`). It carries the request
//! id, route, method, status, latency, the decision and its reason code, the client
//! address and the user's pseudonym; never the path or query (they can hold codes and
//! tokens), cookies, tokens or secrets.

use crate::audit::LineQueue;
use std::io::Write;
use std::sync::OnceLock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `logging:` in `gateway.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSpec {
    /// The gateway's own lines at this level and above (`RUST_LOG` overrides).
    pub level: log::LevelFilter,
    pub format: LogFormat,
    /// One line per request.
    pub access_log: bool,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        LoggingSpec {
            level: log::LevelFilter::Info,
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// The libraries' own chatter, kept at warnings whatever our level.
const QUIET: &str = "pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=warn";

/// Installs the logger: `spec`'s level (or `RUST_LOG` when set) and format. Called once,
/// before anything logs; later calls change nothing.
pub fn init(spec: &LoggingSpec) {
    let format = *FORMAT.get_or_init(|| spec.format);
    let default = format!("{},{QUIET}", spec.level.to_string().to_ascii_lowercase());
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": crate::audit::now_rfc3339(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let _ = b.try_init();
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();
static ACCESS: OnceLock<Option<LineQueue>> = OnceLock::new();

/// One request, as the access log tells it.
pub struct Access<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub seconds: f64,
    /// `allow`, `login`, `step-up`, `deny`, `unauthorized`, `unavailable`,
    /// `rate-limited`, `rejected`, `no-route`, `endpoint`.
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub client_ip: Option<std::net::IpAddr>,
    /// The user's pseudonym ([`crate::audit::pseudonym`]).
    pub user: Option<&'a str>,
}

impl Access<'_> {
    /// The line, in `format`, ending in a newline.
    pub fn line(&self, format: LogFormat) -> String {
        let ms = (self.seconds * 1000.0 * 1000.0).round() / 1000.0;
        match format {
            LogFormat::Json => {
                let mut line = serde_json::json!({
                    "ts": crate::audit::now_rfc3339(),
                    "log": "access",
                    "request_id": self.request_id,
                    "method": self.method,
                    "route": self.route,
                    "status": self.status,
                    "duration_ms": ms,
                    "decision": self.decision,
                    "reason": self.reason,
                    "client_ip": self.client_ip.map(|i| i.to_string()),
                    "user": self.user,
                })
                .to_string();
                line.push('\n');
                line
            }
            LogFormat::Text => {
                let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
                format!(
                    "{} access {} {} route={} status={} {ms}ms decision={} reason={} client={} user={}\n",
                    crate::audit::now_rfc3339(),
                    self.request_id,
                    self.method,
                    self.route,
                    self.status,
                    self.decision,
                    dash(self.reason),
                    self.client_ip.map_or_else(|| "-".to_string(), |i| i.to_string()),
                    dash(self.user),
                )
            }
        }
    }
}

/// Writes `a` to the access log (stderr, with the other log lines). False when the line
/// was dropped (the writer fell behind).
pub fn access(a: &Access<'_>) -> bool {
    let queue = ACCESS.get_or_init(|| {
        LineQueue::start(Box::new(std::io::stderr()), "portcullis-access")
            .map_err(|e| log::error!("no access log: {e}"))
            .ok()
    });
    match queue {
        Some(q) => q.send(a.line(FORMAT.get().copied().unwrap_or_default())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Access<'static> {
        Access {
            request_id: "r-1",
            method: "GET",
            route: "account",
            status: 302,
            seconds: 0.001_234_5,
            decision: "login",
            reason: Some("user-unauthenticated"),
            client_ip: Some("192.0.2.7".parse().unwrap()),
            user: None,
        }
    }

    #[test]
    fn access_lines_are_json_objects_or_key_value_text() {
        let j: serde_json::Value =
            serde_json::from_str(sample().line(LogFormat::Json).trim_end()).unwrap();
        assert_eq!(j["log"], "access");
        assert_eq!(j["request_id"], "r-1");
        assert_eq!(j["route"], "account");
        assert_eq!(j["status"], 302);
        assert_eq!(j["duration_ms"], 1.235);
        assert_eq!(j["decision"], "login");
        assert_eq!(j["reason"], "user-unauthenticated");
        assert_eq!(j["client_ip"], "192.0.2.7");
        assert!(j["user"].is_null());
        let t = sample().line(LogFormat::Text);
        assert!(t.ends_with('\n') && t.lines().count() == 1, "{t}");
        assert!(
            t.contains(" access r-1 GET route=account status=302 1.235ms decision=login reason=user-unauthenticated client=192.0.2.7 user=-"),
            "{t}"
        );
    }
}
