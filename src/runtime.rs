//! The compiled runtime snapshot and its atomic replacement on reload.
//!
//! A [`Runtime`] is everything the request path needs, built once from a validated
//! [`GatewayConfig`]. The [`Gateway`] holds the current one in an `ArcSwap`; each request
//! takes one `Arc` of it in `new_ctx` and keeps it to the end, so a reload that lands
//! mid-request never mixes two configurations.

use crate::clock::Clock;
use crate::config::{self, AuthMode, ConfigErrors, GatewayConfig, PublicUrl, RouteAuth, StoreSpec};
use crate::headers::{HeaderHygiene, TrustedProxies};
use crate::identity_headers::{self, AssertionSigner, HeaderTemplates};
use crate::metrics::{Metrics, RouteMetrics};
use crate::oidc::Provider;
use crate::ratelimit::Limit;
use crate::routing::RouteMatcher;
use crate::session::{
    MemoryStore, Metered, PopulationRules, RedisStore, RedisStoreConfig, Sealer, SealingKey,
    SessionManager, SessionStore, SessionTimeouts,
};
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use http::Method;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub auth: AuthMode,
    pub upstream: Option<Arc<Upstream>>,
    pub metrics: RouteMetrics,
    pub identity: RouteAuth,
    pub headers: HeaderTemplates,
    /// Limits whose keys are known before authentication, then those needing the
    /// session or user.
    pub limits_before_auth: Vec<Arc<Limit>>,
    pub limits_after_auth: Vec<Arc<Limit>>,
}

/// One immutable configuration generation, ready for the request path.
pub struct Runtime {
    pub generation: u64,
    pub config: GatewayConfig,
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub hygiene: HeaderHygiene,
    pub trusted_proxies: TrustedProxies,
    pub public_url: PublicUrl,
    /// Metrics of requests that matched no route.
    pub unmatched: RouteMetrics,
    /// Metrics of requests to the gateway's own endpoints (`/.portcullis/...`).
    pub endpoints: RouteMetrics,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The session store as configured (kept across reloads while its settings stay).
    pub store: Arc<dyn SessionStore>,
    pub sessions: SessionManager,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub signer: Arc<AssertionSigner>,
    /// Seals provider tokens at rest; `None` when tokens cannot be kept (Redis without
    /// `session.encryption_keys`).
    pub sealer: Option<Arc<Sealer>>,
    /// Some route forwards access tokens, so sessions keep access and refresh tokens.
    pub keeps_access_tokens: bool,
    /// For calls to `logout.notify` (no redirects, short timeouts).
    pub http: reqwest::Client,
    /// Every named limit (state kept across reloads while a limit's settings stay).
    pub limits: BTreeMap<String, Arc<Limit>>,
    /// The limits of `/.portcullis/login` and `/.portcullis/callback`.
    pub login_limits: Vec<Arc<Limit>>,
    /// The audit log (kept across reloads while its output stays).
    pub audit: Arc<crate::audit::Audit>,
}

/// Route label of the gateway's own endpoints.
pub const ENDPOINTS_ROUTE: &str = "portcullis-endpoints";

impl Runtime {
    /// Compiles `cfg`. Upstreams whose settings did not change are carried over from
    /// `previous`, so a reload keeps their health state and pooled connections.
    pub fn build(
        cfg: GatewayConfig,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
        clock: &Arc<dyn Clock>,
        generation: u64,
    ) -> Result<Runtime, String> {
        let mut upstreams = BTreeMap::new();
        for (name, spec) in &cfg.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| &u.spec == spec)
                .cloned();
            let u = match reused {
                Some(u) => u,
                None => Arc::new(Upstream::new(spec)?),
            };
            upstreams.insert(name.clone(), u);
        }
        let mut limits = BTreeMap::new();
        for spec in &cfg.rate_limits {
            let reused = previous
                .and_then(|p| p.limits.get(&spec.name))
                .filter(|l| &l.spec == spec)
                .cloned();
            limits.insert(
                spec.name.clone(),
                reused.unwrap_or_else(|| Arc::new(Limit::new(spec.clone()))),
            );
        }
        let pick = |names: &[String], before: bool| -> Vec<Arc<Limit>> {
            names
                .iter()
                .filter_map(|n| limits.get(n))
                .filter(|l| l.spec.before_auth() == before)
                .cloned()
                .collect()
        };
        let login_limits = pick(&cfg.login.rate_limits, true);
        let routes = cfg
            .routes
            .iter()
            .map(|r| Route {
                limits_before_auth: pick(&r.rate_limits, true),
                limits_after_auth: pick(&r.rate_limits, false),
                name: Arc::from(r.name.as_str()),
                matcher: r.matcher.clone(),
                auth: r.auth,
                upstream: r.upstream.as_ref().and_then(|u| upstreams.get(u).cloned()),
                metrics: metrics.route(&r.name, r.journey.as_ref()),
                headers: identity_headers::compile(&r.identity.headers),
                identity: r.identity.clone(),
            })
            .collect();
        let store = match previous {
            Some(p) if p.config.session.store.same_as(&cfg.session.store) => p.store.clone(),
            _ => new_store(&cfg.session.store, metrics, clock)?,
        };
        let session = &cfg.session;
        let timeouts = |idle: std::time::Duration, absolute| SessionTimeouts {
            idle,
            absolute,
            // last_seen is written back at most this often.
            touch_every: (idle / 10).min(std::time::Duration::from_secs(60)),
        };
        let sealer = build_sealer(&cfg, previous)?;
        let sessions = SessionManager::new(
            store.clone(),
            clock.clone(),
            timeouts(session.idle_timeout, session.absolute_timeout),
        )
        .with_populations(
            cfg.populations
                .iter()
                .map(|p| PopulationRules {
                    name: p.name.clone(),
                    timeouts: timeouts(p.idle_timeout, p.absolute_timeout),
                    max_sessions: p.max_sessions,
                })
                .collect(),
        )
        .with_sealer(sealer.clone());
        let audit = match previous {
            Some(p) if p.audit.output == cfg.audit => p.audit.clone(),
            _ => Arc::new(crate::audit::Audit::new(
                cfg.audit.clone(),
                metrics.clone(),
            )?),
        };
        let http = match previous {
            Some(p) => p.http.clone(),
            None => crate::oidc::http_client()?,
        };
        let redirect_uri = format!("{}/.portcullis/callback", cfg.public_url.origin);
        let mut providers = BTreeMap::new();
        for spec in &cfg.providers {
            let reused = previous
                .and_then(|p| p.providers.get(&spec.id))
                .filter(|p| p.spec.same_as(spec) && p.redirect_uri == redirect_uri)
                .cloned();
            let p = match reused {
                Some(p) => p,
                None => Arc::new(Provider::new(
                    spec.clone(),
                    redirect_uri.clone(),
                    clock.clone(),
                    metrics.clone(),
                )?),
            };
            providers.insert(spec.id.clone(), p);
        }
        let signer = match previous {
            Some(p) if p.signer.matches(&cfg.assertion) => p.signer.clone(),
            _ => Arc::new(AssertionSigner::new(&cfg.assertion)?),
        };
        Ok(Runtime {
            generation,
            hygiene: cfg.hygiene.clone(),
            trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.clone()),
            public_url: cfg.public_url.clone(),
            unmatched: metrics.route(crate::metrics::NO_ROUTE, None),
            endpoints: metrics.route(ENDPOINTS_ROUTE, None),
            clock: clock.clone(),
            metrics: metrics.clone(),
            store,
            sessions,
            providers,
            signer,
            sealer,
            keeps_access_tokens: cfg.routes.iter().any(|r| r.identity.forward_access_token),
            http,
            limits,
            login_limits,
            audit,
            routes,
            upstreams,
            config: cfg,
        })
    }

    /// The population a session was placed in, while it is still configured.
    pub fn population(&self, s: &crate::session::Session) -> Option<&config::PopulationSpec> {
        let name = s.population.as_deref()?;
        self.config.populations.iter().find(|p| p.name == name)
    }

    /// How long a session can live at most: its population's absolute timeout, else
    /// the session default (the session cookie's lifetime).
    pub fn absolute_timeout(&self, s: &crate::session::Session) -> std::time::Duration {
        self.population(s)
            .map_or(self.config.session.absolute_timeout, |p| p.absolute_timeout)
    }

    /// The first route (in precedence order) matching the request.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path, method))
    }
}

/// The configured sealing keys; without any, a key generated for this process when
/// sessions are in memory (kept across reloads with the store), else none.
fn build_sealer(
    cfg: &GatewayConfig,
    previous: Option<&Runtime>,
) -> Result<Option<Arc<Sealer>>, String> {
    let keys = &cfg.session.encryption_keys;
    if !keys.is_empty() {
        let parsed = keys
            .iter()
            .map(|k| SealingKey::parse(k.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Sealer::new(parsed).map(Arc::new));
    }
    if !matches!(cfg.session.store, StoreSpec::Memory) {
        return Ok(None);
    }
    let reused = previous.filter(|p| {
        p.config.session.encryption_keys.is_empty()
            && matches!(p.config.session.store, StoreSpec::Memory)
    });
    Ok(match reused.and_then(|p| p.sealer.clone()) {
        Some(s) => Some(s),
        None => Sealer::new(vec![SealingKey::generate()]).map(Arc::new),
    })
}

fn new_store(
    spec: &StoreSpec,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<Arc<dyn SessionStore>, String> {
    let inner: Arc<dyn SessionStore> = match spec {
        StoreSpec::Memory => Arc::new(MemoryStore::with_clock(clock.clone())),
        StoreSpec::Redis {
            url,
            key_prefix,
            connect_timeout,
            response_timeout,
            ca_pem,
        } => Arc::new(RedisStore::new(RedisStoreConfig {
            url: url.expose().to_string(),
            key_prefix: key_prefix.clone(),
            connect_timeout: *connect_timeout,
            response_timeout: *response_timeout,
            ca_pem: ca_pem.clone(),
        })?),
    };
    Ok(Arc::new(Metered::new(inner, metrics.clone())))
}

/// Why a reload did not happen.
#[derive(Debug)]
pub enum ReloadError {
    Invalid(ConfigErrors),
    Build(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Build(e) => write!(f, "error: {e}"),
        }
    }
}

/// The running gateway's shared state: the current runtime and the metrics.
pub struct Gateway {
    current: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    config_path: PathBuf,
    generation: AtomicU64,
    /// Serialises reloads (SIGHUP and the file watcher may race).
    reload_lock: std::sync::Mutex<()>,
    /// Set on `SIGTERM` while `shutdown.drain` runs: `/readyz` answers 503 so that load
    /// balancers stop sending new requests before the listeners close.
    pub draining: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// Builds the first runtime from an already loaded configuration.
    pub fn new(cfg: GatewayConfig, metrics: Arc<Metrics>) -> Result<Gateway, String> {
        let path = cfg.source.clone();
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let rt = Runtime::build(cfg, None, &metrics, &clock, 1)?;
        metrics.config_reload(true);
        Ok(Gateway {
            current: ArcSwap::from_pointee(rt),
            metrics,
            clock,
            config_path: path,
            generation: AtomicU64::new(1),
            reload_lock: std::sync::Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads and validates every file, then swaps atomically. On any error the running
    /// configuration stays, every error is logged, and the error counter moves. This does
    /// blocking file and DNS I/O: call it off the request path.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload();
        match &result {
            Ok(g) => {
                self.metrics.config_reload(true);
                log::info!("configuration reloaded (generation {g})");
            }
            Err(e) => {
                self.metrics.config_reload(false);
                log::error!("configuration reload failed; keeping the running configuration:\n{e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<u64, ReloadError> {
        let cfg = config::load(&self.config_path).map_err(ReloadError::Invalid)?;
        for w in &cfg.warnings {
            log::warn!("{w}");
        }
        let old = self.snapshot();
        if cfg.listeners != old.config.listeners || cfg.admin.addr != old.config.admin.addr {
            log::warn!("listener or admin address changes take effect only after a restart");
        }
        if cfg.threads != old.config.threads {
            log::warn!("`threads` changes take effect only after a restart");
        }
        let (new_log, old_log) = (&cfg.logging, &old.config.logging);
        if (new_log.level, new_log.format) != (old_log.level, old_log.format) {
            log::warn!("logging.level and logging.format changes take effect only after a restart (logging.access_log applies now)");
        }
        // The admin listener keeps the address it was started with, so the token rule is
        // checked against that address: a reload must not strip the token off an admin
        // port that is still open to the network.
        if !old.config.admin.addr.ip().is_loopback() && cfg.admin.token.is_none() {
            return Err(ReloadError::Build(format!(
                "admin.token: the running admin listener is on {}, not loopback, so it keeps needing a token",
                old.config.admin.addr
            )));
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let rt = Runtime::build(cfg, Some(&old), &self.metrics, &self.clock, generation)
            .map_err(ReloadError::Build)?;
        for id in old.providers.keys() {
            if !rt.providers.contains_key(id) {
                self.metrics.forget_provider(id);
            }
        }
        for r in &old.routes {
            if !rt.routes.iter().any(|n| n.name == r.name) {
                self.metrics.forget_route(&r.name);
            }
        }
        // A step is dropped only when no route declares it any more: routes may share one.
        for step in old.config.routes.iter().filter_map(|r| r.journey.as_ref()) {
            if !rt
                .config
                .routes
                .iter()
                .any(|r| r.journey.as_ref() == Some(step))
            {
                self.metrics.forget_journey_step(step);
            }
        }
        for name in old.upstreams.keys() {
            if !rt.upstreams.contains_key(name) {
                self.metrics.forget_upstream(name);
            }
        }
        self.current.store(Arc::new(rt));
        Ok(generation)
    }
}
