//! Prometheus metrics: one [`Metrics`] struct whose methods are the only way to record, so
//! names and labels are defined once and cardinality stays bounded (labels are route and
//! upstream names from config, status classes and fixed reason codes; never paths, hosts
//! or user data).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from a cache-hit-fast 1 ms to a slow 30 s upstream.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Route label for requests that matched no route (or were refused before matching).
pub const NO_ROUTE: &str = "none";

/// All of Portcullis's metrics, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    rejected: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_healthy: IntGaugeVec,
    config_reloads: IntCounterVec,
    config_last_success: IntGauge,
    config_last_ok: IntGauge,
    journey_steps: IntCounterVec,
    log_dropped: IntCounter,
    identity: IdentityMetrics,
    /// Every metric's name, whether it has series yet or not.
    names: Vec<String>,
}

/// Login, session, provider and store metrics.
struct IdentityMetrics {
    login_started: IntCounterVec,
    login_sent: IntCounterVec,
    login_callbacks: IntCounterVec,
    login_completed: IntCounterVec,
    login_failures: IntCounterVec,
    login_abandoned: IntCounterVec,
    login_duration: HistogramVec,
    auth_refusals: IntCounterVec,
    store_errors: IntCounterVec,
    store_up: IntGauge,
    provider_up: IntGaugeVec,
    provider_errors: IntCounterVec,
    provider_duration: HistogramVec,
    store_duration: HistogramVec,
    jwks_fetches: IntCounterVec,
    sessions_created: IntCounterVec,
    sessions_ended: IntCounterVec,
    sessions_active: IntGauge,
    backchannel: IntCounterVec,
    refreshes: IntCounterVec,
    logout_notifications: IntCounterVec,
    rate_limited: IntCounterVec,
    rate_limit_fallbacks: IntCounterVec,
    login_regulation: IntCounterVec,
    audit_dropped: IntCounter,
    step_ups: IntCounterVec,
    risk_decisions: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    must(IntCounterVec::new(Opts::new(name, help), labels))
}

/// Per-route handles resolved once per config load, so recording a request is a few
/// atomic adds with no label lookup.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 5],
    duration: Histogram,
    /// The route's journey step, by status class.
    journey: Option<[IntCounter; 5]>,
}

impl RouteMetrics {
    /// Called once per request from the logging phase.
    pub fn record(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
        if let Some(j) = &self.journey {
            j[class].inc();
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants; a failure here is a programming error caught by
    // the unit tests, not something a config or request can cause.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut names = Vec::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests answered, by route and status class.",
            ),
            &["route", "status_class"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request start to the end of the response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ));
        let rejected = must(IntCounterVec::new(
            Opts::new(
                "portcullis_requests_rejected_total",
                "Requests refused by the gateway itself, by reason code.",
            ),
            &["reason"],
        ));
        let upstream_errors = must(IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Failures talking to an upstream, by upstream and kind.",
            ),
            &["upstream", "kind"],
        ));
        let upstream_healthy = must(IntGaugeVec::new(
            Opts::new(
                "portcullis_upstream_healthy_targets",
                "Targets of an upstream that passed their last health check.",
            ),
            &["upstream"],
        ));
        let config_reloads = must(IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads, by result (success or error).",
            ),
            &["result"],
        ));
        let config_last_success = must(IntGauge::new(
            "portcullis_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        ));
        let config_last_ok = must(IntGauge::new(
            "portcullis_config_last_reload_successful",
            "1 when the last configuration load succeeded, 0 while the last attempt failed (the previous configuration keeps running).",
        ));
        config_last_ok.set(1);
        let journey_steps = counter(
            "portcullis_journey_steps_total",
            "Requests to routes that are a step of a named journey (journey: { name, step } in a policy), by journey, step and status class.",
            &["journey", "step", "status_class"],
        );
        let log_dropped = must(IntCounter::new(
            "portcullis_log_lines_dropped_total",
            "Access log lines dropped because the writer fell behind (the queue was full).",
        ));
        let identity = IdentityMetrics {
            login_started: counter(
                "portcullis_login_started_total",
                "Login journeys begun at /.portcullis/login (a chooser's answer is not a new one), by journey (login, signup, step-up).",
                &["journey"],
            ),
            login_sent: counter(
                "portcullis_login_sent_total",
                "Browsers sent to a provider to authenticate, by journey and provider.",
                &["journey", "provider"],
            ),
            login_callbacks: counter(
                "portcullis_login_callbacks_total",
                "Callbacks received from a provider, by journey and provider (both \"unknown\" when the callback matches no pending login).",
                &["journey", "provider"],
            ),
            login_completed: counter(
                "portcullis_login_completed_total",
                "Logins that created (or, for step-up, elevated) a session, by journey and provider.",
                &["journey", "provider"],
            ),
            login_failures: counter(
                "portcullis_login_failures_total",
                "Logins that failed (at start or at the callback) and created no session, by journey, provider and reason code.",
                &["journey", "provider", "reason"],
            ),
            login_abandoned: counter(
                "portcullis_login_abandoned_total",
                "Logins whose callback never came before they timed out (session.login_timeout), counted when they time out, by journey and provider.",
                &["journey", "provider"],
            ),
            login_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_login_duration_seconds",
                    "Time from sending the browser to the provider to the session, by journey and provider.",
                )
                .buckets(vec![1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
                &["journey", "provider"],
            )),
            auth_refusals: counter(
                "portcullis_auth_refusals_total",
                "Requests to protected routes not let through (login, 401, 403, 503), by route and reason code.",
                &["route", "reason"],
            ),
            store_errors: counter(
                "portcullis_session_store_errors_total",
                "Session store operations that failed (store unreachable or slow).",
                &["operation"],
            ),
            store_up: must(IntGauge::new(
                "portcullis_session_store_up",
                "1 when the last session store operation succeeded, else 0.",
            )),
            provider_up: must(IntGaugeVec::new(
                Opts::new(
                    "portcullis_provider_up",
                    "1 when the provider is usable (discovery metadata and signing keys loaded), else 0.",
                ),
                &["provider"],
            )),
            provider_errors: counter(
                "portcullis_provider_errors_total",
                "Failed requests to a provider, by provider, operation and kind.",
                &["provider", "operation", "kind"],
            ),
            provider_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_provider_request_duration_seconds",
                    "Time of requests to a provider, by provider and operation (discovery, jwks, token, refresh, userinfo).",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["provider", "operation"],
            )),
            store_duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_session_store_duration_seconds",
                    "Time of session store operations, by operation.",
                )
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
                &["operation"],
            )),
            jwks_fetches: counter(
                "portcullis_jwks_fetches_total",
                "Fetches of a provider's signing keys, by provider and result.",
                &["provider", "result"],
            ),
            sessions_created: counter(
                "portcullis_sessions_created_total",
                "Sessions created at login, by population (\"none\" without populations).",
                &["population"],
            ),
            sessions_ended: counter(
                "portcullis_sessions_ended_total",
                "Sessions ended, by reason: logout, back-channel, revoked (admin or the user's own sessions page), evicted (over a population's max_sessions), refresh-failed, replaced (a new login in the same browser), expired-idle, expired-absolute.",
                &["reason"],
            ),
            sessions_active: must(IntGauge::new(
                "portcullis_sessions_active",
                "Sessions in the store (shared by every gateway using it), sampled every few seconds.",
            )),
            backchannel: counter(
                "portcullis_backchannel_logouts_total",
                "Back-channel logout requests, by provider (\"unknown\" when the token names none) and result (success or a reason code).",
                &["provider", "result"],
            ),
            refreshes: counter(
                "portcullis_token_refreshes_total",
                "Refresh-token grants, by provider and result (success, rejected, unavailable).",
                &["provider", "result"],
            ),
            logout_notifications: counter(
                "portcullis_logout_notifications_total",
                "Calls to logout.notify, by result (success or error).",
                &["result"],
            ),
            rate_limited: counter(
                "portcullis_rate_limited_total",
                "Requests refused by a rate limit (429, or 503 when a shared limit fails closed), by limit and route.",
                &["limit", "route"],
            ),
            risk_decisions: counter(
                "portcullis_risk_decisions_total",
                "Risk decisions on routes that decide by risk, by route, outcome (allow, step-up, deny), mode (enforce, shadow: reported, not taken) and the signal that added the most.",
                &["route", "outcome", "mode", "top_signal"],
            ),
            step_ups: counter(
                "portcullis_step_ups_total",
                "Step-up authentication, by route, outcome (challenged, completed, failed, abandoned) and reason code.",
                &["route", "outcome", "reason"],
            ),
            audit_dropped: must(IntCounter::new(
                "portcullis_audit_events_dropped_total",
                "Audit events dropped because the writer fell behind (the queue was full).",
            )),
            login_regulation: counter(
                "portcullis_login_regulation_total",
                "Failed-login regulation: logins held back (action backoff or ban, at login start) and bans begun (action ban-started, at a failure), by what was counted (ip or account).",
                &["action", "kind"],
            ),
            rate_limit_fallbacks: counter(
                "portcullis_rate_limit_fallbacks_total",
                "Checks of a shared limit that could not reach the store, by limit and what was done (local or deny).",
                &["limit", "action"],
            ),
        };
        identity.store_up.set(1);
        for c in [
            Box::new(identity.login_started.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(identity.login_sent.clone()),
            Box::new(identity.login_callbacks.clone()),
            Box::new(identity.login_completed.clone()),
            Box::new(identity.login_failures.clone()),
            Box::new(identity.login_abandoned.clone()),
            Box::new(identity.login_duration.clone()),
            Box::new(identity.auth_refusals.clone()),
            Box::new(identity.store_errors.clone()),
            Box::new(identity.store_up.clone()),
            Box::new(identity.provider_up.clone()),
            Box::new(identity.provider_errors.clone()),
            Box::new(identity.jwks_fetches.clone()),
            Box::new(identity.provider_duration.clone()),
            Box::new(identity.store_duration.clone()),
            Box::new(identity.sessions_created.clone()),
            Box::new(identity.sessions_ended.clone()),
            Box::new(identity.sessions_active.clone()),
            Box::new(identity.backchannel.clone()),
            Box::new(identity.refreshes.clone()),
            Box::new(identity.logout_notifications.clone()),
            Box::new(identity.rate_limited.clone()),
            Box::new(identity.rate_limit_fallbacks.clone()),
            Box::new(identity.login_regulation.clone()),
            Box::new(identity.audit_dropped.clone()),
            Box::new(identity.step_ups.clone()),
            Box::new(identity.risk_decisions.clone()),
        ] {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            must(registry.register(c));
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(rejected.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_success.clone()),
            Box::new(config_last_ok.clone()),
            Box::new(journey_steps.clone()),
            Box::new(log_dropped.clone()),
        ] {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            must(registry.register(c));
        }
        // Both results exist from the start, so `rate()` and alerts see a zero, not a gap.
        config_reloads.with_label_values(&["success"]);
        config_reloads.with_label_values(&["error"]);
        Metrics {
            registry,
            requests,
            duration,
            rejected,
            upstream_errors,
            upstream_healthy,
            config_reloads,
            config_last_success,
            config_last_ok,
            journey_steps,
            log_dropped,
            identity,
            names,
        }
    }

    /// A login journey began at the login endpoint.
    pub fn login_started(&self, journey: &'static str) {
        self.identity
            .login_started
            .with_label_values(&[journey])
            .inc();
    }

    /// A browser was sent to `provider` to authenticate.
    pub fn login_sent(&self, journey: &'static str, provider: &str) {
        self.identity
            .login_sent
            .with_label_values(&[journey, provider])
            .inc();
    }

    /// A callback arrived (`unknown` for both when it matched no pending login).
    pub fn login_callback(&self, journey: &'static str, provider: &str) {
        self.identity
            .login_callbacks
            .with_label_values(&[journey, provider])
            .inc();
    }

    /// A login created or elevated a session, `seconds` after the browser was sent.
    pub fn login_completed(&self, journey: &'static str, provider: &str, seconds: f64) {
        self.identity
            .login_completed
            .with_label_values(&[journey, provider])
            .inc();
        self.identity
            .login_duration
            .with_label_values(&[journey, provider])
            .observe(seconds);
    }

    /// A login (start or callback) that created no session. `provider` is `unknown`
    /// when the callback could not be tied to a login.
    pub fn login_failed(&self, journey: &'static str, provider: &str, reason: &'static str) {
        self.identity
            .login_failures
            .with_label_values(&[journey, provider, reason])
            .inc();
    }

    /// A login timed out with no callback.
    pub fn login_abandoned(&self, journey: &'static str, provider: &str) {
        self.identity
            .login_abandoned
            .with_label_values(&[journey, provider])
            .inc();
    }

    /// A request to a protected route that was not let through.
    pub fn auth_refused(&self, route: &str, reason: &'static str) {
        self.identity
            .auth_refusals
            .with_label_values(&[route, reason])
            .inc();
    }

    /// The outcome of a session store operation.
    pub fn store_result(&self, operation: &'static str, ok: bool) {
        if !ok {
            self.identity
                .store_errors
                .with_label_values(&[operation])
                .inc();
        }
        self.identity.store_up.set(ok as i64);
    }

    pub fn provider_up(&self, provider: &str, up: bool) {
        self.identity
            .provider_up
            .with_label_values(&[provider])
            .set(up as i64);
    }

    /// A request to a provider took `seconds`.
    pub fn provider_request(&self, provider: &str, operation: &'static str, seconds: f64) {
        self.identity
            .provider_duration
            .with_label_values(&[provider, operation])
            .observe(seconds);
    }

    /// A session store operation took `seconds`.
    pub fn store_duration(&self, operation: &'static str, seconds: f64) {
        self.identity
            .store_duration
            .with_label_values(&[operation])
            .observe(seconds);
    }

    pub fn provider_error(&self, provider: &str, operation: &'static str, kind: &'static str) {
        self.identity
            .provider_errors
            .with_label_values(&[provider, operation, kind])
            .inc();
    }

    pub fn jwks_fetch(&self, provider: &str, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.identity
            .jwks_fetches
            .with_label_values(&[provider, result])
            .inc();
    }

    pub fn session_created(&self, population: Option<&str>) {
        self.identity
            .sessions_created
            .with_label_values(&[population.unwrap_or("none")])
            .inc();
    }

    /// `n` sessions ended for `reason` (a fixed code).
    pub fn sessions_ended(&self, reason: &'static str, n: usize) {
        if n > 0 {
            self.identity
                .sessions_ended
                .with_label_values(&[reason])
                .inc_by(n as u64);
        }
    }

    pub fn sessions_active(&self, n: u64) {
        self.identity.sessions_active.set(n as i64);
    }

    pub fn backchannel_logout(&self, provider: &str, result: &'static str) {
        self.identity
            .backchannel
            .with_label_values(&[provider, result])
            .inc();
    }

    pub fn token_refresh(&self, provider: &str, result: &'static str) {
        self.identity
            .refreshes
            .with_label_values(&[provider, result])
            .inc();
    }

    pub fn logout_notification(&self, ok: bool) {
        self.identity
            .logout_notifications
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    pub fn rate_limited(&self, limit: &str, route: &str) {
        self.identity
            .rate_limited
            .with_label_values(&[limit, route])
            .inc();
    }

    pub fn risk_decision(&self, route: &str, outcome: &str, mode: &str, top_signal: &str) {
        self.identity
            .risk_decisions
            .with_label_values(&[route, outcome, mode, top_signal])
            .inc();
    }

    pub fn step_up_challenged(&self, route: &str, reason: &'static str) {
        self.step_up(route, "challenged", reason);
    }

    /// A step-up's outcome: `completed` or `failed` at the callback, or `abandoned`
    /// (reason `timed-out`) when its callback never came.
    pub fn step_up(&self, route: &str, outcome: &'static str, reason: &'static str) {
        self.identity
            .step_ups
            .with_label_values(&[route, outcome, reason])
            .inc();
    }

    pub fn log_line_dropped(&self) {
        self.log_dropped.inc();
    }

    pub fn audit_dropped(&self) {
        self.identity.audit_dropped.inc();
    }

    pub fn login_regulated(&self, action: &'static str, kind: &'static str) {
        self.identity
            .login_regulation
            .with_label_values(&[action, kind])
            .inc();
    }

    pub fn rate_limit_fallback(&self, limit: &str, fail_closed: bool) {
        self.identity
            .rate_limit_fallbacks
            .with_label_values(&[limit, if fail_closed { "deny" } else { "local" }])
            .inc();
    }

    /// Drops the series of a provider that a reload removed.
    pub fn forget_provider(&self, provider: &str) {
        let _ = self.identity.provider_up.remove_label_values(&[provider]);
    }

    /// Handles for one route's request counters and latency histogram.
    pub fn route(&self, route: &str, journey: Option<&crate::config::JourneyStep>) -> RouteMetrics {
        RouteMetrics {
            by_class: STATUS_CLASSES.map(|c| self.requests.with_label_values(&[route, c])),
            duration: self.duration.with_label_values(&[route]),
            journey: journey.map(|j| {
                STATUS_CLASSES.map(|c| {
                    self.journey_steps
                        .with_label_values(&[j.name.as_str(), j.step.as_str(), c])
                })
            }),
        }
    }

    /// Drops the series of a route that a reload removed, so dashboards do not show a
    /// route that no longer exists.
    pub fn forget_route(&self, route: &str) {
        for c in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[route, c]);
        }
        let _ = self.duration.remove_label_values(&[route]);
    }

    /// Drops the series of a journey step that no route declares any more.
    pub fn forget_journey_step(&self, step: &crate::config::JourneyStep) {
        for c in STATUS_CLASSES {
            let _ = self.journey_steps.remove_label_values(&[
                step.name.as_str(),
                step.step.as_str(),
                c,
            ]);
        }
    }

    /// Drops the health gauge of an upstream that a reload removed.
    pub fn forget_upstream(&self, upstream: &str) {
        let _ = self.upstream_healthy.remove_label_values(&[upstream]);
    }

    /// A request refused before it reached a route's policy (bad path, bad host, ...).
    pub fn request_rejected(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// A failed attempt to reach an upstream. `kind` is one of a fixed set
    /// (`connect-refused`, `connect-timeout`, `timeout`, `tls`, `other`).
    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .with_label_values(&[upstream, kind])
            .inc();
    }

    pub fn upstream_healthy_targets(&self, upstream: &str, n: usize) {
        self.upstream_healthy
            .with_label_values(&[upstream])
            .set(n as i64);
    }

    /// The outcome of loading the configuration (at start and on each reload).
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_ok.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            self.config_last_success.set(now);
        }
    }

    /// Prometheus text exposition of everything.
    /// The name of every metric Portcullis exports (a histogram's series add `_bucket`,
    /// `_sum` and `_count`), for checking dashboards and alert rules against.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_even_before_it_has_a_series() {
        let m = Metrics::new();
        let names = m.names();
        for n in [
            "portcullis_requests_total",
            "portcullis_login_abandoned_total",
            "portcullis_journey_steps_total",
            "portcullis_session_store_duration_seconds",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(!String::from_utf8(m.render())
            .unwrap()
            .contains("portcullis_login_abandoned_total"));
        assert!(names.iter().all(|n| n.starts_with("portcullis_")));
    }

    #[test]
    fn route_handles_count_by_status_class() {
        let m = Metrics::new();
        let r = m.route("shop", None);
        r.record(200, 0.01);
        r.record(404, 0.01);
        r.record(503, 0.5);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"portcullis_requests_total{route="shop",status_class="2xx"} 1"#));
        assert!(text.contains(r#"portcullis_requests_total{route="shop",status_class="5xx"} 1"#));
        assert!(text.contains(r#"portcullis_request_duration_seconds_count{route="shop"} 3"#));
        assert!(text.contains(r#"portcullis_config_reloads_total{result="error"} 0"#));
    }
}
