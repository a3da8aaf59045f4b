//! The gateway's own endpoints under `/.portcullis/` on the main listener:
//!
//! | path | method | what |
//! |---|---|---|
//! | `login` | GET | start a login (`rd` = where to return, `provider` = which IdP) |
//! | `callback` | GET | the provider's redirect back; creates the session |
//! | `userinfo` | GET, HEAD | the signed-in user as JSON, for single-page apps |
//! | `jwks.json` | GET, HEAD | the public key of identity assertions |
//!
//! They are answered before route matching, so no route can shadow them.

use crate::auth;
use crate::cookies;
use crate::oidc::flow::{self, CallbackParams};
use crate::policy::Decision;
use crate::proxy::RequestCtx;
use crate::runtime::Runtime;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// The prefix of every endpoint.
pub const PREFIX: &str = "/.portcullis/";

/// A response to send, built by an endpoint.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(header::HeaderName, String)>,
    pub content_type: &'static str,
    pub body: Bytes,
}

/// What an endpoint decided: a reply, or an error page with a reason code.
pub enum Outcome {
    Reply(Reply),
    Error {
        status: u16,
        reason: &'static str,
        set_cookies: Vec<String>,
    },
}

fn redirect(location: String, set_cookies: Vec<String>) -> Outcome {
    let mut headers = vec![(header::LOCATION, location)];
    headers.extend(set_cookies.into_iter().map(|c| (header::SET_COOKIE, c)));
    Outcome::Reply(Reply {
        status: 302,
        headers,
        content_type: "text/plain; charset=utf-8",
        body: Bytes::new(),
    })
}

fn json(status: u16, v: serde_json::Value) -> Outcome {
    Outcome::Reply(Reply {
        status,
        headers: Vec::new(),
        content_type: "application/json",
        body: Bytes::from(v.to_string()),
    })
}

fn error(status: u16, reason: &'static str) -> Outcome {
    Outcome::Error {
        status,
        reason,
        set_cookies: Vec::new(),
    }
}

/// Serves `path` (starting with [`PREFIX`]).
pub async fn serve(session: &Session, ctx: &RequestCtx, path: &str, query: &str) -> Outcome {
    let rt = &ctx.rt;
    let method = &session.req_header().method;
    let name = &path[PREFIX.len()..];
    let get = method == http::Method::GET;
    let readable = get || method == http::Method::HEAD;
    match name {
        // Login and callback change state (a login state stored, one taken): GET only.
        "login" | "callback" if !get => error(405, "method-not-allowed"),
        "userinfo" | "jwks.json" if !readable => error(405, "method-not-allowed"),
        "login" => login(session, rt, query).await,
        "callback" => callback(session, ctx, query).await,
        "userinfo" => userinfo(session, rt).await,
        "jwks.json" => Outcome::Reply(Reply {
            status: 200,
            headers: vec![(header::CACHE_CONTROL, "public, max-age=300".into())],
            content_type: "application/jwk-set+json",
            body: Bytes::from(rt.signer.jwks_json().to_string()),
        }),
        _ => error(404, "no-route"),
    }
}

/// The login URL for a request to a protected route: our login endpoint on the public
/// origin, with the request's own path as the place to come back to.
pub fn login_url(rt: &Runtime, provider: Option<&str>, return_to: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("rd", return_to);
    if let Some(p) = provider {
        q.append_pair("provider", p);
    }
    format!("{}{PREFIX}login?{}", rt.public_url.origin, q.finish())
}

async fn login(session: &Session, rt: &Runtime, query: &str) -> Outcome {
    let mut rd = None;
    let mut provider_id = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "rd" if rd.is_none() => rd = Some(v.into_owned()),
            "provider" if provider_id.is_none() => provider_id = Some(v.into_owned()),
            _ => {}
        }
    }
    let return_to = flow::safe_return_path(rd.as_deref().unwrap_or("/"));
    let provider = match &provider_id {
        Some(id) => rt.providers.get(id).filter(|p| p.spec.client.is_some()),
        // The first provider with a client, in the order gateway.yaml lists them.
        None => rt
            .config
            .providers
            .iter()
            .filter(|p| p.client.is_some())
            .find_map(|p| rt.providers.get(&p.id)),
    };
    let Some(provider) = provider else {
        let reason = if provider_id.is_some() {
            "provider-unknown"
        } else {
            "no-login-provider"
        };
        return error(if provider_id.is_some() { 400 } else { 404 }, reason);
    };
    if provider.discovered().is_none() {
        // Not yet discovered (a provider that just came up): one more try now, within
        // the same back-off as the background task.
        provider.refresh().await;
    }
    let spec = &rt.config.session;
    let binding = cookies::find(&session.req_header().headers, &spec.login_cookie_name)
        .filter(|v| flow::is_token_shaped(v));
    let now = rt.clock.now_ms();
    match flow::start(
        provider,
        rt.store.as_ref(),
        &return_to,
        binding,
        spec.login_timeout,
        now,
    )
    .await
    {
        Ok(started) => {
            rt.metrics.login_started(provider.id());
            // The binding cookie lives as long as a login may take; an existing one is
            // renewed so that parallel logins in several tabs all stay bound.
            let value = started
                .new_binding
                .as_deref()
                .or(binding)
                .unwrap_or_default();
            let cookie = cookies::set(
                spec,
                &spec.login_cookie_name,
                value,
                spec.login_timeout.as_secs(),
            );
            redirect(started.location, vec![cookie])
        }
        Err(f) => {
            rt.metrics.login_failed(provider.id(), f.reason);
            error(f.status, f.reason)
        }
    }
}

async fn callback(session: &Session, ctx: &RequestCtx, query: &str) -> Outcome {
    let rt = &ctx.rt;
    let metrics = &rt.metrics;
    let req = session.req_header();
    let params = match CallbackParams::parse(query) {
        Ok(p) => p,
        Err(reason) => {
            metrics.login_failed("unknown", reason);
            return error(400, reason);
        }
    };
    let spec = &rt.config.session;
    let binding = cookies::find(&req.headers, &spec.login_cookie_name);
    let client = flow::Client {
        ip: ctx.client_ip.map(|ip| ip.to_string()),
        user_agent: req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    };
    let now = rt.clock.now_ms();
    let finished = flow::finish(
        |id| rt.providers.get(id).map(|p| p.as_ref()),
        rt.store.as_ref(),
        &params,
        binding,
        client,
        now,
    )
    .await;
    let done = match finished {
        Ok(done) => done,
        Err(f) => {
            let provider = f.provider.as_deref().unwrap_or("unknown");
            metrics.login_failed(provider, f.reason);
            log::info!(
                "request {}: login failed at callback: {} (provider {provider})",
                ctx.request_id,
                f.reason
            );
            return error(f.status, f.reason);
        }
    };
    // A session the browser already had ends here: login always starts a new one under
    // a new id, so an id planted before login never becomes valid.
    if let Some(old) =
        cookies::find(&req.headers, &spec.cookie_name).and_then(crate::session::SessionId::parse)
    {
        if let Err(e) = rt.sessions.destroy(&old).await {
            log::warn!("could not end the previous session at login: {e}");
        }
    }
    let provider = done.session.provider.clone();
    let (id, _) = match rt.sessions.create(done.session).await {
        Ok(s) => s,
        Err(e) => {
            log::warn!(
                "request {}: cannot store the new session: {e}",
                ctx.request_id
            );
            metrics.login_failed(&provider, "session-store-unavailable");
            return error(503, "session-store-unavailable");
        }
    };
    metrics.login_completed(
        &provider,
        now.saturating_sub(done.started_ms) as f64 / 1000.0,
    );
    let cookies = vec![
        cookies::set(
            spec,
            &spec.cookie_name,
            id.as_cookie_value(),
            spec.absolute_timeout.as_secs(),
        ),
        cookies::clear(spec, &spec.login_cookie_name),
    ];
    redirect(
        format!("{}{}", rt.public_url.origin, done.return_to),
        cookies,
    )
}

async fn userinfo(session: &Session, rt: &Runtime) -> Outcome {
    match auth::session_of(rt, &session.req_header().headers).await {
        Ok(a) => {
            let s = a.identity;
            json(
                200,
                serde_json::json!({
                    "sub": s.subject,
                    "iss": s.issuer,
                    "provider": s.provider,
                    "acr": s.acr,
                    "amr": s.amr,
                    "auth_time": s.auth_time,
                    "claims": s.claims,
                }),
            )
        }
        Err(Decision::Unavailable { reason }) => error(503, reason),
        Err(d) => error(401, d.reason().unwrap_or("user-unauthenticated")),
    }
}

/// Writes an endpoint's outcome.
pub async fn send(session: &mut Session, ctx: &mut RequestCtx, outcome: Outcome) -> Result<()> {
    match outcome {
        Outcome::Reply(r) => {
            let mut h = ResponseHeader::build(r.status, Some(r.headers.len() + 6))?;
            h.insert_header(header::CONTENT_TYPE, r.content_type)?;
            h.insert_header(header::CONTENT_LENGTH, r.body.len().to_string())?;
            if !r.headers.iter().any(|(n, _)| n == header::CACHE_CONTROL) {
                h.insert_header(header::CACHE_CONTROL, "no-store")?;
            }
            h.insert_header("x-content-type-options", "nosniff")?;
            h.insert_header("referrer-policy", "no-referrer")?;
            h.insert_header(crate::headers::X_REQUEST_ID, ctx.request_id.as_str())?;
            for (n, v) in r.headers {
                h.append_header(n, v)?;
            }
            crate::proxy::write_response(session, ctx, h, r.body).await
        }
        Outcome::Error {
            status,
            reason,
            set_cookies,
        } => crate::proxy::send_error_with(session, ctx, status, reason, &set_cookies).await,
    }
}
