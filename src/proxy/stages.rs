//! The single-purpose stages the proxy calls, in request order.

use super::RequestCtx;
use crate::headers;
use crate::metrics::Metrics;
use crate::policy::Decision;
use crate::responses;
use crate::routing::normalize_host;
use crate::routing::path::{normalize_target, NormalizedTarget};
use crate::runtime::Runtime;
use crate::{auth, cookies, endpoints};
use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::http::ResponseHeader;
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
        ctx.client_ip = Some(ctx.rt.trusted_proxies.client_ip(
            peer,
            req.headers.get_all(&headers::names::X_FORWARDED_FOR).iter(),
        ));
    }
}

/// Normalises the target and host, then finds the route. Anything that cannot be
/// normalised safely is marked for a 400 (answered in `refuse_or_pass`).
pub fn normalise_and_route(session: &Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    let routed = check_method(&req.method)
        .and_then(|()| {
            if req.headers.contains_key(header::TRANSFER_ENCODING) && sent_content_length(session) {
                return Err("conflicting-framing");
            }
            Ok(())
        })
        .and_then(|()| {
            route_request(
                &ctx.rt,
                &req.method,
                req.raw_path(),
                req.headers
                    .get_all(header::HOST)
                    .iter()
                    .map(|v| v.as_bytes()),
                req.uri.authority().map(|a| a.as_str()),
            )
        });
    match routed {
        Ok(r) => {
            ctx.route = r.route;
            ctx.target = Some(r.target);
        }
        Err(reason) => ctx.rejected = Some(reason),
    }
}

/// Methods are case-sensitive, but many frameworks upper-case them before routing, so
/// `get` would reach a GET handler while missing a rule written for GET: refused.
pub fn check_method(method: &http::Method) -> std::result::Result<(), &'static str> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("bad-method");
    }
    Ok(())
}

/// Where a request goes, decided from its target and host.
pub struct Routed {
    pub target: RequestTarget,
    /// The normalised host (lower case, no port).
    pub host: String,
    /// Index into the runtime's routes; `None` for 404.
    pub route: Option<usize>,
}

/// The routing decision: normalise the target and the host, then find the first matching
/// route. Shared by the request path and `portcullis check --request`, so what `check`
/// says is what the gateway does. `host_headers` are the values of every `Host` header;
/// `uri_authority` is the HTTP/2 `:authority`. On failure, the reason code of the 400.
pub fn route_request<'a>(
    rt: &Runtime,
    method: &http::Method,
    raw_target: &[u8],
    host_headers: impl Iterator<Item = &'a [u8]>,
    uri_authority: Option<&str>,
) -> std::result::Result<Routed, &'static str> {
    let target = split_target(raw_target)?;
    let host = resolve_host(target.authority.as_deref(), host_headers, uri_authority)?;
    let match_path = target.normalized.match_path();
    let route = rt
        .routes
        .iter()
        .position(|r| r.matcher.matches(Some(&host), &match_path, method));
    drop(match_path);
    Ok(Routed {
        target,
        host,
        route,
    })
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
fn split_target(raw: &[u8]) -> Result<RequestTarget, &'static str> {
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
/// `Host` header (or, for HTTP/2, the URI authority). One is required, HTTP/1.0
/// included: a request without a host would skip every host-limited rule. Several are
/// refused (smuggling and cache poisoning hide behind duplicates).
fn resolve_host<'a>(
    authority: Option<&str>,
    mut host_headers: impl Iterator<Item = &'a [u8]>,
    uri_authority: Option<&str>,
) -> std::result::Result<String, &'static str> {
    let normalized = |h: &[u8]| normalize_host(h).map(|h| h.into_owned()).ok_or("bad-host");
    if let Some(a) = authority {
        if a.contains('@') {
            return Err("bad-host");
        }
        return normalized(a.as_bytes());
    }
    match (host_headers.next(), host_headers.next()) {
        (None, _) => match uri_authority {
            Some(a) => normalized(a.as_bytes()),
            None => Err("missing-host"),
        },
        (Some(_), Some(_)) => Err("duplicate-host"),
        (Some(h), None) => normalized(h),
    }
}

/// Answers requests that end here: unparseable (400), the gateway's endpoints, unrouted
/// (404), and whatever the route's policy refuses. Returns `Ok(true)` when a response
/// was sent.
pub async fn refuse_or_pass(
    session: &mut Session,
    ctx: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<bool> {
    if let Some(reason) = ctx.rejected {
        ctx.decision = "rejected";
        metrics.request_rejected(reason);
        send_error(session, ctx, 400, reason).await?;
        return Ok(true);
    }
    if let Some((path, query)) = endpoint_target(ctx) {
        ctx.endpoint = true;
        ctx.decision = "endpoint";
        // Logins are limited before any state is stored or any provider is called.
        if matches!(&path[endpoints::PREFIX.len()..], "login" | "callback") {
            let rt = ctx.rt.clone();
            if limited(
                session,
                ctx,
                &rt.login_limits,
                crate::runtime::ENDPOINTS_ROUTE,
                None,
            )
            .await?
            {
                return Ok(true);
            }
        }
        let outcome = endpoints::serve(session, ctx, &path, &query).await;
        endpoints::send(session, ctx, outcome).await?;
        return Ok(true);
    }
    let Some(idx) = ctx.route else {
        ctx.decision = "no-route";
        send_error(session, ctx, 404, "no-route").await?;
        return Ok(true);
    };
    let rt = ctx.rt.clone();
    let route = &rt.routes[idx];
    if limited(session, ctx, &route.limits_before_auth, &route.name, None).await? {
        return Ok(true);
    }
    let (decision, identity) =
        auth::authorize_from(&rt, route, &session.req_header().headers, ctx.client_ip).await;
    ctx.decision = decision.label();
    ctx.reason = decision.reason();
    // The pseudonym is a hash: computed only when the access log will print it.
    if rt.config.logging.access_log {
        ctx.user = identity
            .as_ref()
            .map(|a| crate::audit::pseudonym(&a.identity.user_key()));
    }
    if decision == Decision::Allow {
        if limited(
            session,
            ctx,
            &route.limits_after_auth,
            &route.name,
            identity.as_ref(),
        )
        .await?
        {
            return Ok(true);
        }
        ctx.identity = identity;
        return Ok(false);
    }
    if let Some(reason) = decision.reason() {
        if route.auth != crate::config::AuthMode::Deny {
            metrics.auth_refused(&route.name, reason);
        }
    }
    // A signed-in user refused by policy is a decision someone may ask about.
    if let (Decision::Deny { reason }, Some(a)) = (&decision, &identity) {
        rt.audit.emit(
            "access-denied",
            serde_json::json!({
                "request_id": ctx.request_id.as_str(),
                "route": &*route.name,
                "reason": reason,
                "user": crate::audit::pseudonym(&a.identity.user_key()),
                "outcome": "deny",
            }),
        );
    }
    answer(session, ctx, route, decision, identity.as_ref()).await?;
    Ok(true)
}

/// Spends one request of each limit; answers 429 (with `Retry-After`) or 503 and
/// returns true when one refuses.
async fn limited(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limits: &[std::sync::Arc<crate::ratelimit::Limit>],
    route: &str,
    identity: Option<&auth::Authenticated>,
) -> Result<bool> {
    use crate::ratelimit::{self, Refusal};
    if limits.is_empty() {
        return Ok(false);
    }
    let rt = ctx.rt.clone();
    let session_hash = identity
        .and_then(|a| a.session_id.as_ref())
        .map(|id| id.hash());
    let user = identity.map(|a| a.identity.namespaced_user());
    let input = ratelimit::KeyInput {
        client_ip: ctx.client_ip,
        session: session_hash.as_deref(),
        user: user.as_deref(),
        route,
        headers: &session.req_header().headers,
    };
    for limit in limits {
        let (result, fell_back) = ratelimit::check(limit, rt.store.as_ref(), &input).await;
        if fell_back {
            rt.metrics
                .rate_limit_fallback(&limit.spec.name, limit.spec.fail_closed);
        }
        let Err(refusal) = result else {
            continue;
        };
        rt.metrics.rate_limited(&limit.spec.name, route);
        ctx.decision = "rate-limited";
        match refusal {
            Refusal::Limited(wait) => {
                let secs = ratelimit::retry_after_secs(wait).to_string();
                send_error_with_headers(
                    session,
                    ctx,
                    429,
                    "rate-limited",
                    &[(header::RETRY_AFTER, secs)],
                )
                .await?;
            }
            Refusal::Unavailable => {
                send_error(session, ctx, 503, "rate-limit-unavailable").await?;
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// The path and query of a request for one of our endpoints.
fn endpoint_target(ctx: &RequestCtx) -> Option<(String, String)> {
    let t = ctx.target.as_ref()?;
    let path = t.normalized.match_path();
    if !path.starts_with(endpoints::PREFIX) {
        return None;
    }
    let full = t.normalized.forward_target();
    let query = full.split_once('?').map_or("", |(_, q)| q).to_string();
    Some((path.into_owned(), query))
}

/// The one place a refusing decision becomes a response. In order of precedence the
/// decision was reached by `auth::authorize`: route denies, identity missing or
/// invalid, dependency down, requirement unmet.
async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &crate::runtime::Route,
    decision: Decision,
    identity: Option<&auth::Authenticated>,
) -> Result<()> {
    match decision {
        Decision::StepUp { reason } => step_up(session, ctx, route, reason, identity).await,
        Decision::Allow => Ok(()),
        Decision::Deny { reason } => send_error(session, ctx, 403, reason).await,
        Decision::Unavailable { reason } => send_error(session, ctx, 503, reason).await,
        Decision::Login { reason } => {
            let req = session.req_header();
            if route.identity.api || !auth::is_navigation(&req.method, &req.headers) {
                let challenge = format!(
                    "Portcullis realm=\"{}\", login_url=\"{}{}login\"",
                    ctx.rt.public_url.origin,
                    ctx.rt.public_url.origin,
                    endpoints::PREFIX
                );
                return send_error_with_headers(
                    session,
                    ctx,
                    401,
                    reason,
                    &[(header::WWW_AUTHENTICATE, challenge)],
                )
                .await;
            }
            let location = endpoints::login_url(&ctx.rt, route, &return_path(ctx));
            redirect_to(session, ctx, location).await
        }
        Decision::Unauthorized { reason, error } => {
            // RFC 6750 §3: a challenge naming the realm, plus the error when a token was
            // presented and found wanting.
            let mut challenge = format!("Bearer realm=\"{}\"", ctx.rt.public_url.origin);
            if let Some(e) = error {
                challenge.push_str(&format!(", error=\"{e}\", error_description=\"{reason}\""));
            }
            send_error_with_headers(
                session,
                ctx,
                401,
                reason,
                &[(header::WWW_AUTHENTICATE, challenge)],
            )
            .await
        }
    }
}

/// Asks for more proof. A browser on a session goes back to the provider (through our
/// login endpoint, which sends `acr_values` and `max_age`); anything else gets 401
/// with an RFC 9470 challenge naming what would do.
async fn step_up(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &crate::runtime::Route,
    reason: &'static str,
    identity: Option<&auth::Authenticated>,
) -> Result<()> {
    let Some(step) = &route.identity.step_up else {
        return send_error(session, ctx, 403, reason).await;
    };
    ctx.rt.metrics.step_up_challenged(&route.name, reason);
    let from_session = identity.is_some_and(|a| a.session_id.is_some());
    let req = session.req_header();
    if from_session && !route.identity.api && auth::is_navigation(&req.method, &req.headers) {
        let location = endpoints::step_up_url(&ctx.rt, route, &return_path(ctx));
        return redirect_to(session, ctx, location).await;
    }
    let provider = identity.map(|a| a.identity.provider.as_str()).unwrap_or("");
    let values = step
        .acr
        .accepted
        .iter()
        .find(|(p, _)| p == provider)
        .map(|(_, v)| v.join(" "))
        .unwrap_or_default();
    let scheme = if from_session { "Portcullis" } else { "Bearer" };
    let mut challenge = format!(
        "{scheme} realm=\"{}\", error=\"insufficient_user_authentication\", error_description=\"{reason}\", acr_values=\"{values}\"",
        ctx.rt.public_url.origin
    );
    if let Some(max) = step.max_age {
        challenge.push_str(&format!(", max_age={}", max.as_secs()));
    }
    send_error_with_headers(
        session,
        ctx,
        401,
        reason,
        &[(header::WWW_AUTHENTICATE, challenge)],
    )
    .await
}

/// Where to come back to after a login: the request's own normalised target.
fn return_path(ctx: &RequestCtx) -> String {
    ctx.target
        .as_ref()
        .map(|t| t.normalized.forward_target())
        .unwrap_or_else(|| "/".into())
}

/// A 302 of our own (to the login endpoint).
async fn redirect_to(session: &mut Session, ctx: &mut RequestCtx, location: String) -> Result<()> {
    let mut h = ResponseHeader::build(302, Some(6))?;
    h.insert_header(header::LOCATION, location)?;
    h.insert_header(header::CONTENT_LENGTH, "0")?;
    h.insert_header(header::CACHE_CONTROL, "no-store")?;
    h.insert_header(crate::headers::X_REQUEST_ID, ctx.request_id.as_str())?;
    write_response(session, ctx, h, Bytes::new()).await
}

/// Writes one of our own error responses.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    reason: &'static str,
) -> Result<()> {
    send_error_with_headers(session, ctx, status, reason, &[]).await
}

/// An error page that also sets (or clears) cookies.
pub async fn send_error_with(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    reason: &'static str,
    set_cookies: &[String],
) -> Result<()> {
    let headers: Vec<(http::HeaderName, String)> = set_cookies
        .iter()
        .map(|c| (header::SET_COOKIE, c.clone()))
        .collect();
    send_error_with_headers(session, ctx, status, reason, &headers).await
}

async fn send_error_with_headers(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    reason: &'static str,
    extra: &[(http::HeaderName, String)],
) -> Result<()> {
    ctx.reason = Some(reason);
    let json = responses::wants_json(session.req_header().headers.get(header::ACCEPT));
    let (mut h, body) = responses::error_response(status, reason, &ctx.request_id, json)?;
    for (n, v) in extra {
        h.append_header(n.clone(), v.as_str())?;
    }
    write_response(session, ctx, h, body).await
}

/// Writes a complete response of our own (header and body) and records its status.
pub async fn write_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    h: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let status = h.status.as_u16();
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
    cookies::strip_ours(up, ctx.rt.config.session.cookie_names());
    if let (Some(a), Some(idx)) = (&ctx.identity, ctx.route) {
        inject_identity(up, ctx, &ctx.rt.routes[idx], a)?;
    }
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

/// The upstream's response on its way out: our request id, and none of our cookies.
pub fn prepare_response(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    resp.insert_header(
        crate::headers::names::X_REQUEST_ID.clone(),
        ctx.request_id.as_str(),
    )?;
    cookies::strip_upstream_set_cookie(resp, ctx.rt.config.session.cookie_names());
    Ok(())
}

/// The verified identity, after stripping: the route's headers and, when asked for, a
/// signed assertion.
fn inject_identity(
    up: &mut RequestHeader,
    ctx: &RequestCtx,
    route: &crate::runtime::Route,
    a: &crate::auth::Authenticated,
) -> Result<()> {
    let id = &a.identity;
    for (name, template) in &route.headers {
        if let Some(v) = template.render(id) {
            up.insert_header(name.clone(), v)?;
        }
    }
    // A request that authenticated with its own bearer token (login_or_bearer) keeps it.
    if route.identity.forward_access_token && a.session_id.is_some() {
        // The client's own Authorization never reaches an upstream that expects ours.
        up.remove_header(&header::AUTHORIZATION);
        if let Some(t) = ctx.rt.sessions.token(id, crate::session::TokenKind::Access) {
            up.insert_header(header::AUTHORIZATION, format!("Bearer {t}"))?;
        }
    }
    if route.identity.assertion {
        let now = ctx.rt.clock.now_ms() / 1000;
        let jwt = ctx
            .rt
            .signer
            .sign(id, &ctx.rt.public_url.origin, &route.name, now)
            .ok_or_else(|| Error::explain(InternalError, "cannot sign the identity assertion"))?;
        up.insert_header(crate::identity_headers::ASSERTION_HEADER, jwt)?;
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
    let (metrics, route) = match ctx.route {
        _ if ctx.endpoint => (&ctx.rt.endpoints, crate::runtime::ENDPOINTS_ROUTE),
        Some(i) => (&ctx.rt.routes[i].metrics, &*ctx.rt.routes[i].name),
        None => (&ctx.rt.unmatched, crate::metrics::NO_ROUTE),
    };
    if status > 0 {
        metrics.record(status, elapsed);
    }
    if ctx.rt.config.logging.access_log {
        let line = crate::logging::Access {
            request_id: &ctx.request_id,
            method: session.req_header().method.as_str(),
            route,
            status,
            seconds: elapsed,
            decision: ctx.decision,
            reason: ctx.reason,
            client_ip: ctx.client_ip,
            user: ctx.user.as_deref(),
        };
        if !crate::logging::access(&line) {
            ctx.rt.metrics.log_line_dropped();
        }
    }
}
