//! The compiled runtime snapshot and its atomic replacement on reload.
//!
//! A [`Runtime`] is everything the request path needs, built once from a validated
//! [`GatewayConfig`]. The [`Gateway`] holds the current one in an `ArcSwap`; each request
//! takes one `Arc` of it in `new_ctx` and keeps it to the end, so a reload that lands
//! mid-request never mixes two configurations.

use crate::config::{self, AuthMode, ConfigErrors, GatewayConfig, PublicUrl};
use crate::headers::{HeaderHygiene, TrustedProxies};
use crate::metrics::{Metrics, RouteMetrics};
use crate::routing::RouteMatcher;
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
}

impl Runtime {
    /// Compiles `cfg`. Upstreams whose settings did not change are carried over from
    /// `previous`, so a reload keeps their health state and pooled connections.
    pub fn build(
        cfg: GatewayConfig,
        previous: Option<&Runtime>,
        metrics: &Metrics,
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
        let routes = cfg
            .routes
            .iter()
            .map(|r| Route {
                name: Arc::from(r.name.as_str()),
                matcher: r.matcher.clone(),
                auth: r.auth,
                upstream: r.upstream.as_ref().and_then(|u| upstreams.get(u).cloned()),
                metrics: metrics.route(&r.name),
            })
            .collect();
        Ok(Runtime {
            generation,
            hygiene: cfg.hygiene.clone(),
            trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.clone()),
            public_url: cfg.public_url.clone(),
            unmatched: metrics.route(crate::metrics::NO_ROUTE),
            routes,
            upstreams,
            config: cfg,
        })
    }

    /// The first route (in precedence order) matching the request.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path, method))
    }
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
    config_path: PathBuf,
    generation: AtomicU64,
    /// Serialises reloads (SIGHUP and the file watcher may race).
    reload_lock: std::sync::Mutex<()>,
}

impl Gateway {
    /// Builds the first runtime from an already loaded configuration.
    pub fn new(cfg: GatewayConfig, metrics: Arc<Metrics>) -> Result<Gateway, String> {
        let path = cfg.source.clone();
        let rt = Runtime::build(cfg, None, &metrics, 1)?;
        metrics.config_reload(true);
        Ok(Gateway {
            current: ArcSwap::from_pointee(rt),
            metrics,
            config_path: path,
            generation: AtomicU64::new(1),
            reload_lock: std::sync::Mutex::new(()),
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
        let rt = Runtime::build(cfg, Some(&old), &self.metrics, generation)
            .map_err(ReloadError::Build)?;
        for r in &old.routes {
            if !rt.routes.iter().any(|n| n.name == r.name) {
                self.metrics.forget_route(&r.name);
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
