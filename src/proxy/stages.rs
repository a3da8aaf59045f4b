//! The single-purpose stages the proxy calls, in request order.

use super::RequestCtx;
use crate::headers;
use crate::metrics::Metrics;
use crate::policy::{self, Decision};
use crate::responses;
use crate::routing::normalize_host;
use crate::routing::path::{normalize_target, NormalizedTarget};
use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

/// The request target after normalisation: what is matched and what is forwarded.
pub struct RequestTarget {
    pub normalized: NormalizedTarget,
    /// For absolute-form targets (`GET http://host/path`), the authority they named.
    pub authority: Option<String>,
}

/// Request id, client address, TLS.
pub fn identify(session: &Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    ctx.request_id = headers::request_id(req.headers.get(&headers::names::X_REQUEST_ID));
    ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    ctx.peer_ip = peer;
    if let Some(peer) = peer {
        ctx.peer_trusted = ctx.rt.trusted_proxies.contains(peer);
        ctx.client_ip = Some(
            ctx.rt
                .trusted_proxies
                .client_ip(peer, req.headers.get_all(headers::X_FORWARDED_FOR).iter()),
        );
    }
}

/// Normalises the target and host, then finds the route. Anything that cannot be
/// normalised safely is marked for a 400 (answered in `refuse_or_pass`).
pub fn normalise_and_route(session: &Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    // Methods are case-sensitive, but many frameworks upper-case them before routing, so
    // `get` would reach a GET handler while missing a rule written for GET.
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        ctx.rejected = Some("bad-method");
        return;
    }
    if req.headers.contains_key(header::TRANSFER_ENCODING) && sent_content_length(session) {
        ctx.rejected = Some("conflicting-framing");
        return;
    }
    let target = match split_target(req.raw_path()) {
        Ok(t) => t,
        Err(reason) => {
            ctx.rejected = Some(reason);
            return;
        }
    };
    let host = match host_of(req, target.authority.as_deref()) {
        Ok(h) => h,
        Err(reason) => {
            ctx.rejected = Some(reason);
            return;
        }
    };
    let match_path = target.normalized.match_path();
    ctx.route = ctx
        .rt
        .routes
        .iter()
        .position(|r| r.matcher.matches(host.as_deref(), &match_path, &req.method));
    drop(match_path);
    ctx.host = host;
    ctx.target = Some(target);
}

/// True when the client sent `Content-Length` as well. Pingora drops it when
/// `Transfer-Encoding` is present (RFC 9112 allows that), but a request framed two ways
/// is the shape of request smuggling, so we refuse it outright. Only requests with
/// `Transfer-Encoding` pay for re-reading the raw header block.
fn sent_content_length(session: &Session) -> bool {
    use pingora::protocols::http::ServerSession;
    let ServerSession::H1(h1) = session.as_downstream() else {
        return false;
    };
    let raw = h1.get_headers_raw_bytes();
    let mut headers = vec![httparse::EMPTY_HEADER; session.req_header().headers.len() + 16];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&raw) {
        Ok(_) => req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length")),
        // Pingora parsed it already; if we cannot, refuse rather than guess.
        Err(_) => true,
    }
}

/// Splits origin-form and absolute-form targets and normalises the path. On failure, the
/// reason code of the 400.
pub fn split_target(raw: &[u8]) -> Result<RequestTarget, &'static str> {
    let (authority, rest) = match absolute_form(raw) {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, raw),
    };
    let rest: &[u8] = if rest.is_empty() { b"/" } else { rest };
    let rest_owned;
    let rest = if rest.first() == Some(&b'?') {
        rest_owned = [b"/".as_slice(), rest].concat();
        rest_owned.as_slice()
    } else {
        rest
    };
    let normalized = normalize_target(rest).map_err(|e| e.reason())?;
    Ok(RequestTarget {
        normalized,
        authority,
    })
}

/// `http://authority/rest` → (authority, `/rest`).
fn absolute_form(raw: &[u8]) -> Option<(String, &[u8])> {
    let lower_starts = |p: &[u8]| raw.len() >= p.len() && raw[..p.len()].eq_ignore_ascii_case(p);
    let skip = if lower_starts(b"http://") {
        7
    } else if lower_starts(b"https://") {
        8
    } else {
        return None;
    };
    let after = &raw[skip..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let authority = String::from_utf8_lossy(&after[..end]).into_owned();
    Some((authority, &after[end..]))
}

/// The request's host: the absolute-form authority if there was one, else the single
/// `Host` header. One is required, HTTP/1.0 included: a request without a host would
/// skip every host-limited rule. Several are refused (smuggling and cache poisoning hide
/// behind duplicates).
fn host_of(req: &RequestHeader, authority: Option<&str>) -> Result<Option<String>, &'static str> {
    if let Some(a) = authority {
        if a.contains('@') {
            return Err("bad-host");
        }
        return normalize_host(a.as_bytes())
            .map(|h| Some(h.into_owned()))
            .ok_or("bad-host");
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        // HTTP/2 carries the host in the URI authority rather than a header.
        (None, _) => match req.uri.authority() {
            Some(a) => normalize_host(a.as_str().as_bytes())
                .map(|h| Some(h.into_owned()))
                .ok_or("bad-host"),
            None => Err("missing-host"),
        },
        (Some(_), Some(_)) => Err("duplicate-host"),
        (Some(h), None) => normalize_host(h.as_bytes())
            .map(|h| Some(h.into_owned()))
            .ok_or("bad-host"),
    }
}

/// Answers requests that end here: unparseable (400), unrouted (404), denied (403).
/// Returns `Ok(true)` when a response was sent.
pub async fn refuse_or_pass(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<bool> {
    if let Some(reason) = ctx.rejected {
        metrics.request_rejected(reason);
        send_error(session, ctx, 400, reason).await?;
        return Ok(true);
    }
    let Some(idx) = ctx.route else {
        send_error(session, ctx, 404, "no-route").await?;
        return Ok(true);
    };
    let route = &ctx.rt.routes[idx];
    match policy::decide(route.auth) {
        Decision::Allow => Ok(false),
        Decision::Deny { reason } => {
            send_error(session, ctx, 403, reason).await?;
            Ok(true)
        }
    }
}

/// Writes one of our own error responses.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    reason: &str,
) -> Result<()> {
    let json = responses::wants_json(session.req_header().headers.get(header::ACCEPT));
    let (h, body) = responses::error_response(status, reason, &ctx.request_id, json)?;
    ctx.responded = Some(status);
    // Keep the connection only for benign refusals of body-less requests: after a 400 the
    // stream may be out of step, and an unread body would have to be drained first.
    let req = session.req_header();
    let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    session.set_keepalive(if status == 400 || has_body {
        None
    } else {
        Some(60)
    });
    session.write_response_header(Box::new(h), false).await?;
    let end = session.req_header().method == http::Method::HEAD;
    session
        .write_response_body(if end { None } else { Some(body) }, true)
        .await?;
    Ok(())
}

/// The route's upstream target for this request.
pub fn choose_peer(ctx: &RequestCtx) -> Result<Box<HttpPeer>> {
    let upstream = ctx
        .route
        .and_then(|i| ctx.rt.routes[i].upstream.as_ref())
        .ok_or_else(|| Error::explain(HTTPStatus(502), "route has no upstream"))?;
    upstream
        .peer()
        .ok_or_else(|| Error::explain(ConnectNoRoute, "no target available"))
}

/// Strip, then inject: identity headers out, forwarding headers and request id in, and
/// the target replaced by exactly the normalised one.
pub fn prepare_upstream_request(
    session: &Session,
    up: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    ctx.rt.hygiene.strip(up);
    let authority = ctx.target.as_ref().and_then(|t| t.authority.as_deref());
    let host = match authority {
        Some(a) => http::HeaderValue::from_str(a).ok(),
        None => session.req_header().headers.get(header::HOST).cloned(),
    };
    headers::set_forwarding(up, ctx.peer_ip, ctx.peer_trusted, ctx.tls, host.clone())?;
    up.insert_header(
        headers::names::X_REQUEST_ID.clone(),
        ctx.request_id.as_str(),
    )?;
    if let Some(t) = &ctx.target {
        if t.authority.is_some() || !t.normalized.is_target(up.raw_path()) {
            up.set_raw_path(t.normalized.forward_target().as_bytes())?;
        }
        if let (Some(_), Some(h)) = (authority, host) {
            up.insert_header(header::HOST, h)?;
        }
    }
    Ok(())
}

/// The one rescue point: maps an error to a status and our error page.
pub async fn rescue(
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> FailToProxy {
    let (status, reason) = classify(e);
    if e.esource() == &ErrorSource::Upstream || matches!(e.etype(), ConnectNoRoute) {
        if let Some(up) = ctx.route.and_then(|i| ctx.rt.routes[i].upstream.as_ref()) {
            metrics.upstream_error(&up.spec.name, upstream_error_kind(e));
        }
    }
    // Once the upstream's response has started, a page of our own cannot follow it: the
    // connection is closed and the client sees a truncated response.
    if status == 0 || session.response_written().is_some() {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    if let Err(write_err) = send_error(session, ctx, status, reason).await {
        log::debug!(
            "request {}: could not send error page: {write_err}",
            ctx.request_id
        );
    }
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}

/// Status and reason code for an error. 0 means the client is gone: send nothing.
fn classify(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        HTTPStatus(code) => (*code, "gateway-error"),
        ConnectTimedout | TLSHandshakeTimedout => (504, "upstream-connect-timeout"),
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            (504, "upstream-timeout")
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError => {
            (502, "upstream-unreachable")
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => {
            (502, "upstream-tls-failed")
        }
        InvalidHTTPHeader if e.esource() == &ErrorSource::Downstream => (400, "bad-request"),
        InvalidHTTPHeader if e.esource() == &ErrorSource::Upstream => {
            (502, "upstream-bad-response")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream-failed"),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => (0, "client-gone"),
                _ => (400, "bad-request"),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, "internal-error"),
        },
    }
}

fn upstream_error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ConnectRefused | ConnectNoRoute => "connect-refused",
        ConnectTimedout => "connect-timeout",
        ReadTimedout | WriteTimedout => "timeout",
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSHandshakeTimedout => "tls",
        _ => "other",
    }
}

/// Metrics for the finished request.
pub fn record(session: &Session, ctx: &RequestCtx) {
    let status = ctx
        .responded
        .unwrap_or_else(|| session.response_written().map_or(0, |r| r.status.as_u16()));
    let elapsed = ctx.started.elapsed().as_secs_f64();
    let metrics = match ctx.route {
        Some(i) => &ctx.rt.routes[i].metrics,
        None => &ctx.rt.unmatched,
    };
    if status > 0 {
        metrics.record(status, elapsed);
    }
}
