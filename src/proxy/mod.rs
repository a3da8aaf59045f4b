//! The Pingora `ProxyHttp` implementation. It only puts stages in order; each stage lives
//! in its own module.
//!
//! ```text
//! new_ctx                  take one snapshot of the runtime for this request
//! early_request_filter     request id, client address, normalise target and host, match route
//! request_filter           refuse what could not be normalised (400); serve the
//!                          gateway's endpoints (/.portcullis/...); no route (404);
//!                          authenticate (session or bearer token) and decide: login
//!                          (302 or 401), 401, 403 or 503; otherwise go on
//! upstream_peer            choose a healthy target of the route's upstream
//! upstream_request_filter  strip identity headers and our cookies, inject the verified
//!                          identity, set forwarding headers and request id, forward
//!                          exactly the normalised target
//! response_filter          request id on every response; upstreams cannot set our
//!                          cookies
//! fail_to_proxy            the one place errors become responses (502, 504, ...)
//! logging                  metrics, the access log
//! ```

mod stages;

use crate::runtime::{Gateway, Runtime};
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use stages::{
    check_method, route_request, send_error_with, write_response, RequestTarget, Routed,
};

/// Per-request state, created by `new_ctx`.
pub struct RequestCtx {
    /// The configuration this request runs under, start to end.
    pub rt: Arc<Runtime>,
    pub started: Instant,
    pub request_id: String,
    /// The TCP peer's address.
    pub peer_ip: Option<IpAddr>,
    /// The client's address: the peer, or what trusted proxies say it is.
    pub client_ip: Option<IpAddr>,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    pub tls: bool,
    pub target: Option<RequestTarget>,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    /// Set when the request was refused before routing: the reason code for the 400.
    pub rejected: Option<&'static str>,
    /// The status we answered ourselves, when we did.
    pub responded: Option<u16>,
    /// Who the request is from, on protected routes that let it through.
    pub identity: Option<crate::auth::Authenticated>,
    /// The request was for one of the gateway's own endpoints.
    pub endpoint: bool,
    /// What was decided, for the access log (see [`crate::logging::Access`]).
    pub decision: &'static str,
    /// The reason code of the response we gave, if we answered with an error.
    pub reason: Option<&'static str>,
    /// The pseudonym of the signed-in user, for the access log.
    pub user: Option<String>,
}

/// The gateway's proxy logic.
pub struct PortcullisProxy {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl ProxyHttp for PortcullisProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            rt: self.gateway.snapshot(),
            started: Instant::now(),
            request_id: String::new(),
            peer_ip: None,
            client_ip: None,
            peer_trusted: false,
            tls: false,
            target: None,
            route: None,
            rejected: None,
            responded: None,
            identity: None,
            endpoint: false,
            decision: "allow",
            reason: None,
            user: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        stages::identify(session, ctx);
        stages::normalise_and_route(session, ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        stages::refuse_or_pass(session, ctx, &self.gateway.metrics).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        stages::choose_peer(ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        stages::prepare_upstream_request(session, upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        stages::prepare_response(upstream_response, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        stages::rescue(session, e, ctx, &self.gateway.metrics).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // A client that goes away mid-request is not a gateway error worth an ERROR line.
        matches!(e.etype(), ReadError | WriteError | ConnectionClosed)
            && e.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        stages::record(session, ctx);
    }
}
