//! Assembles and runs the Pingora server: the proxy service on every listener, the admin
//! service, the background tasks, and (for the demo) any extra services.

use crate::admin::AdminApp;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::proxy::PortcullisProxy;
use crate::runtime::Gateway;
use crate::tasks::GatewayTasks;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;
use std::net::SocketAddr;
use std::sync::Arc;

/// Seconds to let in-flight requests finish after SIGTERM before exiting.
const GRACE_SECONDS: u64 = 5;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Build(String),
    #[error("server: {0}")]
    Pingora(String),
}

/// Checks that every address can be bound. Pingora binds inside a service thread and
/// only that thread dies on failure, leaving a process that looks alive but serves
/// nothing; checking first lets us exit with a clear message instead.
pub fn check_binds(addrs: &[SocketAddr]) -> Result<(), StartError> {
    for &addr in addrs {
        std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    }
    Ok(())
}

/// Builds the server for `cfg`. `extra` services (the demo app) are added alongside.
pub fn build(
    cfg: GatewayConfig,
    extra: Vec<Box<dyn ServiceWithDependents>>,
) -> Result<(Server, Arc<Gateway>), StartError> {
    let mut addrs: Vec<SocketAddr> = cfg.listeners.iter().map(|l| l.addr).collect();
    addrs.push(cfg.admin.addr);
    check_binds(&addrs)?;

    let conf = ServerConf {
        threads: cfg.threads,
        grace_period_seconds: Some(GRACE_SECONDS),
        graceful_shutdown_timeout_seconds: Some(GRACE_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let listeners = cfg.listeners.clone();
    let admin_addr = cfg.admin.addr;
    let gateway = Arc::new(Gateway::new(cfg, metrics).map_err(StartError::Build)?);

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        PortcullisProxy {
            gateway: gateway.clone(),
        },
        "portcullis",
    );
    for l in &listeners {
        let addr = l.addr.to_string();
        match &l.tls {
            None => proxy.add_tcp(&addr),
            Some(tls) => proxy
                .add_tls(
                    &addr,
                    &tls.cert.to_string_lossy(),
                    &tls.key.to_string_lossy(),
                )
                .map_err(|e| StartError::Build(format!("TLS listener {addr}: {e}")))?,
        }
    }
    let mut admin = Service::new(
        "portcullis admin".to_string(),
        HttpServer::new_app(AdminApp {
            gateway: gateway.clone(),
        }),
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr.to_string());

    let tasks = background_service(
        "portcullis tasks",
        GatewayTasks {
            gateway: gateway.clone(),
        },
    );
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(tasks);
    for s in extra {
        server.add_boxed_service(s);
    }
    Ok((server, gateway))
}

/// Pingora's signals (`SIGQUIT` upgrade, `SIGTERM` graceful, `SIGINT` fast), with a drain
/// before a graceful stop: on `SIGTERM` the gateway first answers `/readyz` with 503 for
/// `shutdown.drain` while it goes on serving, so load balancers and Kubernetes take it
/// out of rotation before its listeners close. A second `SIGTERM` ends the drain early,
/// `SIGINT` stops at once.
pub struct DrainingShutdown {
    pub gateway: Arc<Gateway>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for signals; no drain on SIGTERM");
            return pingora::server::UnixShutdownSignalWatch.recv().await;
        };
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        let drain = self.gateway.snapshot().config.shutdown_drain;
        if drain.is_zero() {
            return ShutdownSignal::GracefulTerminate;
        }
        self.gateway
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        log::info!(
            "SIGTERM: draining for {} (/readyz answers 503), then shutting down",
            humantime::format_duration(drain)
        );
        tokio::select! {
            _ = tokio::time::sleep(drain) => ShutdownSignal::GracefulTerminate,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Runs `server` until it is stopped, with [`DrainingShutdown`].
pub fn run(server: Server, gateway: Arc<Gateway>) {
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown { gateway }),
    });
}
