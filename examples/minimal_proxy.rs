//! The smallest Pingora reverse proxy: every request to one upstream, no filters.
//! `bench/run.sh` measures it beside Portcullis so the cost of the gateway's own work
//! (normalising, matching, header hygiene, metrics) is a same-run ratio against the
//! framework it is built on.
//!
//! Usage: `minimal_proxy LISTEN_ADDR UPSTREAM_ADDR THREADS`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;
use std::time::Duration;

/// The same allocator as the `portcullis` binary, so the comparison isolates the
/// gateway's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Minimal {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        // The timeouts any production proxy sets (Portcullis's defaults), so the
        // comparison is about the gateway's work, not about timer bookkeeping.
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(60));
        peer.options.write_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: minimal_proxy LISTEN_ADDR UPSTREAM_ADDR THREADS");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: threads.parse().expect("threads"),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Minimal {
            upstream: upstream.parse().expect("upstream address"),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
