//! Upstream pools: round-robin over healthy targets, with TCP (or TLS) health checks run
//! in the background, and the per-request `HttpPeer` carrying timeouts and TLS settings.

use crate::config::{UpstreamSpec, UpstreamTls};
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::sync::Arc;

/// How many targets round robin may skip over looking for a healthy one.
const MAX_SELECT_ITERATIONS: usize = 256;

/// A live upstream: its spec, its load balancer and health state.
pub struct Upstream {
    pub spec: UpstreamSpec,
    lb: LoadBalancer<RoundRobin>,
    ca: Option<Arc<[WrappedX509]>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish()
    }
}

impl Upstream {
    /// Builds the pool. Fails only when a configured CA file cannot be parsed.
    pub fn new(spec: &UpstreamSpec) -> Result<Upstream, String> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(spec.targets.iter().copied())
            .map_err(|e| format!("upstream {}: {e}", spec.name))?;
        let ca = match spec.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            Some(path) => Some(load_ca(path)?),
            None => None,
        };
        if let Some(hc) = &spec.health_check {
            let mut check = match &spec.tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout);
            o.total_connection_timeout = Some(hc.timeout);
            // A TLS check must trust exactly what requests trust, or a private-CA upstream
            // is reported down while it serves fine.
            if let Some(t) = &spec.tls {
                o.verify_cert = t.verify;
                o.verify_hostname = t.verify;
                o.ca = ca.clone();
            }
            // Two failures in a row before a target is taken out, so one dropped SYN does not
            // empty a single-target pool.
            check.consecutive_failure = 2;
            check.consecutive_success = 1;
            lb.set_health_check(check);
        }
        Ok(Upstream {
            spec: spec.clone(),
            lb,
            ca,
        })
    }

    /// Chooses the next target and describes how to reach it. When every target is marked
    /// unhealthy we still try one in turn: a health check can be wrong, and a refused
    /// connection then gives the same 502 that skipping would.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        let backend = self
            .lb
            .select(b"", MAX_SELECT_ITERATIONS)
            .or_else(|| self.lb.select_with(b"", MAX_SELECT_ITERATIONS, |_, _| true))?;
        let addr = backend.addr.as_inet()?;
        let (tls, sni) = match &self.spec.tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = Box::new(HttpPeer::new(*addr, tls, sni));
        let o = &mut peer.options;
        o.connection_timeout = Some(self.spec.connect_timeout);
        o.total_connection_timeout = Some(self.spec.connect_timeout);
        o.read_timeout = Some(self.spec.read_timeout);
        o.write_timeout = Some(self.spec.write_timeout);
        if let Some(UpstreamTls { verify, .. }) = &self.spec.tls {
            o.verify_cert = *verify;
            o.verify_hostname = *verify;
            o.ca = self.ca.clone();
        }
        Some(peer)
    }

    /// Runs one round of health checks (called by the background health service).
    pub async fn check_health(&self) {
        if self.spec.health_check.is_some() {
            self.lb.backends().run_health_check(true).await;
        }
    }

    /// Number of targets currently considered healthy.
    pub fn healthy_targets(&self) -> usize {
        let backends = self.lb.backends().get_backend();
        backends
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count()
    }
}

/// Reads a PEM bundle of CA certificates for verifying one upstream (also used by config
/// validation, so a bad bundle is reported with its file and YAML path).
pub fn load_ca(path: &std::path::Path) -> Result<Arc<[WrappedX509]>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut out = Vec::new();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    for cert in iter {
        let der = cert.map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
        // Checked here because pingora's wrapper panics on a certificate it cannot parse.
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("invalid certificate in {}: {e}", path.display()))?;
        out.push(WrappedX509::new(der.as_ref().to_vec(), |raw| {
            parse_x509(raw)
        }));
    }
    if out.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(out.into())
}
