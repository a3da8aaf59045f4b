//! Background work of a running gateway: upstream health checks, provider discovery
//! and key refresh, the session count, abandoned logins, reload on `SIGHUP`, and (when `watch_config` is on) reload when a
//! config file changes.

use crate::config::FileStamps;
use crate::runtime::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the task loop wakes up; health-check intervals are rounded up to it.
const TICK: Duration = Duration::from_millis(500);
/// How often watched files are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub struct GatewayTasks {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for GatewayTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        spawn_sighup_reloader(self.gateway.clone());
        spawn_provider_refresher(self.gateway.clone());
        spawn_session_counter(self.gateway.clone());
        spawn_abandoned_counter(self.gateway.clone());
        let mut last_check: HashMap<String, Instant> = HashMap::new();
        let mut failed: Option<FileStamps> = None;
        let mut last_watch = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let rt = self.gateway.snapshot();
            for (name, up) in &rt.upstreams {
                let Some(hc) = &up.spec.health_check else {
                    self.gateway
                        .metrics
                        .upstream_healthy_targets(name, up.spec.targets.len());
                    continue;
                };
                let due = last_check
                    .get(name)
                    .is_none_or(|t| t.elapsed() >= hc.interval);
                if due {
                    last_check.insert(name.clone(), Instant::now());
                    up.check_health().await;
                    self.gateway
                        .metrics
                        .upstream_healthy_targets(name, up.healthy_targets());
                }
            }
            if rt.config.watch_config && last_watch.elapsed() >= WATCH_EVERY {
                last_watch = Instant::now();
                let rt2 = rt.clone();
                let Ok(now) =
                    tokio::task::spawn_blocking(move || rt2.config.current_stamps()).await
                else {
                    continue;
                };
                // Compared with the stamps taken when the running config was read, so a
                // change made at any time after that load is seen; a failed reload is not
                // retried until the files change again.
                if now != rt.config.stamps && failed.as_ref() != Some(&now) {
                    log::info!("a configuration file changed; reloading");
                    let gw = self.gateway.clone();
                    let ok = matches!(
                        tokio::task::spawn_blocking(move || gw.reload()).await,
                        Ok(Ok(_))
                    );
                    failed = (!ok).then_some(now);
                }
            }
        }
    }
}

/// Keeps every provider's discovery metadata and keys fresh, each on its own task so
/// that a slow provider delays no other (and no health check).
fn spawn_provider_refresher(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tick.tick().await;
            let rt = gateway.snapshot();
            running.retain(|_, h| !h.is_finished());
            for (id, p) in &rt.providers {
                if running.contains_key(id) {
                    continue;
                }
                let p = p.clone();
                running.insert(id.clone(), tokio::spawn(async move { p.refresh().await }));
            }
        }
    });
}

/// How often the number of sessions in the store is sampled.
const COUNT_SESSIONS_EVERY: Duration = Duration::from_secs(10);

/// Samples `portcullis_sessions_active` (counting also prunes lapsed sessions from the
/// store's index of all sessions) and prunes the local rate limiters.
fn spawn_session_counter(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNT_SESSIONS_EVERY);
        loop {
            tick.tick().await;
            let rt = gateway.snapshot();
            if let Ok(n) = rt.sessions.count_active().await {
                rt.metrics.sessions_active(n);
            }
            // Local limiters forget keys whose budget is full again.
            for l in rt.limits.values() {
                l.prune();
            }
        }
    });
}

/// How often timed-out logins are counted as abandoned.
const COUNT_ABANDONED_EVERY: Duration = Duration::from_secs(5);

/// Counts logins that timed out with no callback (`portcullis_login_abandoned_total`).
fn spawn_abandoned_counter(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNT_ABANDONED_EVERY);
        loop {
            tick.tick().await;
            let rt = gateway.snapshot();
            if let Err(e) = crate::endpoints::count_abandoned(&rt).await {
                log::debug!("cannot count abandoned logins now: {e}");
            }
        }
    });
}

/// Reloads on every `SIGHUP`. Installing the handler also stops `SIGHUP` from killing the
/// process, which is its default action.
fn spawn_sighup_reloader(gateway: Arc<Gateway>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            log::info!("SIGHUP received; reloading configuration");
            let gw = gateway.clone();
            let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
        }
    });
}
