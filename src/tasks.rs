//! Background work of a running gateway: upstream health checks, reload on `SIGHUP`,
//! and (when `watch_config` is on) reload when a config file changes.

use crate::runtime::Gateway;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
        let mut last_check: HashMap<String, Instant> = HashMap::new();
        let mut watched = FileStamps::default();
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
                let files = rt.config.files.clone();
                if watched.changed(&files) {
                    let gw = self.gateway.clone();
                    log::info!("a configuration file changed; reloading");
                    let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
                    // Take the stamps again so a failed reload is not retried until the
                    // files change once more.
                    watched.changed(&files);
                }
            }
        }
    }
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

/// Modification times and sizes of the watched files (and the policy directory listing).
#[derive(Default)]
struct FileStamps {
    stamps: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
    dir_listing: Vec<PathBuf>,
}

impl FileStamps {
    /// True when anything differs from the last call (the first call records only).
    fn changed(&mut self, files: &[PathBuf]) -> bool {
        let stamps: Vec<_> = files
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok();
                (
                    f.clone(),
                    m.and_then(|m| Some((m.modified().ok()?, m.len()))),
                )
            })
            .collect();
        // New policy files appear in the directory of the policy files already read.
        let mut listing: Vec<PathBuf> = files
            .iter()
            .skip(1)
            .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .flat_map(|dir| {
                std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.path()))
            })
            .collect();
        listing.sort();
        let first = self.stamps.is_empty();
        let changed = stamps != self.stamps || listing != self.dir_listing;
        self.stamps = stamps;
        self.dir_listing = listing;
        changed && !first
    }
}
