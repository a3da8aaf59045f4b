//! `logout` (RP-initiated) and `backchannel-logout` (provider-initiated).

use super::{
    csrf_ok, error, form_value, json, pages, read_form, redirect, wants_json, Outcome, Reply,
};
use crate::auth;
use crate::cookies;
use crate::lifecycle;
use crate::oidc::token;
use crate::oidc::Provider;
use crate::policy::Decision;
use crate::proxy::RequestCtx;
use crate::runtime::Runtime;
use crate::session::{keys, user_key, TokenKind};
use bytes::Bytes;
use http::header;
use pingora::proxy::Session;
use std::time::Duration;

/// GET: a confirmation page whose form carries the session's anti-forgery token, so
/// that no link or image elsewhere can sign a user out.
pub async fn confirm(session: &Session, rt: &Runtime) -> Outcome {
    match auth::session_of(rt, &session.req_header().headers).await {
        Ok(a) => {
            let s = &a.identity;
            let who = s
                .claims
                .get("email")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| s.namespaced_user());
            pages::confirm_logout(&s.csrf, &who)
        }
        Err(Decision::Unavailable { reason }) => error(503, reason),
        Err(_) => pages::signed_out(&rt.config.logout.redirect),
    }
}

/// POST: ends the session (store, user index, cookie), tells the upstream, then sends
/// the browser to the provider's `end_session_endpoint` (RP-Initiated Logout 1.0) with
/// `id_token_hint`, `client_id` and our registered `post_logout_redirect_uri`.
pub async fn logout(session: &mut Session, ctx: &RequestCtx) -> Outcome {
    let rt = &ctx.rt;
    let spec = &rt.config.session;
    let after = format!("{}{}", rt.public_url.origin, rt.config.logout.redirect);
    let clear = vec![cookies::clear(spec, &spec.cookie_name)];
    let json_reply = wants_json(session);
    let current = auth::session_of(rt, &session.req_header().headers).await;
    let form = match read_form(session).await {
        Ok(f) => f,
        Err((status, reason)) => return error(status, reason),
    };
    let (id, s) = match current {
        Ok(a) => match a.session_id {
            Some(id) => (id, a.identity),
            None => return error(400, "session-unknown"),
        },
        Err(Decision::Unavailable { reason }) => return error(503, reason),
        // Nothing to end (expired, or signed out in another tab): clear the cookie and
        // land where a logout lands.
        Err(_) => return finish(json_reply, after, clear),
    };
    if !csrf_ok(&s, &form) {
        return error(403, "csrf-invalid");
    }
    let ended = match rt.sessions.destroy(&id).await {
        Ok(e) => e,
        Err(e) => {
            log::warn!("request {}: logout: {e}", ctx.request_id);
            return error(503, "session-store-unavailable");
        }
    };
    if let Some(ended) = &ended {
        lifecycle::sessions_ended(rt, std::slice::from_ref(ended), "logout");
    }
    let provider = rt.providers.get(&s.provider);
    let location = provider
        .and_then(|p| end_session_url(rt, p, &s, &after))
        .unwrap_or(after);
    finish(json_reply, location, clear)
}

fn finish(json_reply: bool, location: String, set_cookies: Vec<String>) -> Outcome {
    if json_reply {
        let mut headers: Vec<(header::HeaderName, String)> = set_cookies
            .into_iter()
            .map(|c| (header::SET_COOKIE, c))
            .collect();
        headers.push((header::CACHE_CONTROL, "no-store".into()));
        return Outcome::Reply(Reply {
            status: 200,
            headers,
            content_type: "application/json",
            body: Bytes::from(
                serde_json::json!({ "result": "signed-out", "location": location }).to_string(),
            ),
        });
    }
    // 303: the browser follows a POST's answer with a GET.
    redirect(303, location, set_cookies)
}

/// The provider's logout URL for this session, when it advertises one.
fn end_session_url(
    rt: &Runtime,
    p: &Provider,
    s: &crate::session::Session,
    after: &str,
) -> Option<String> {
    let d = p.discovered()?;
    let mut url = url::Url::parse(d.end_session_endpoint.as_deref()?).ok()?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(hint) = rt.sessions.token(s, TokenKind::Id) {
            q.append_pair("id_token_hint", &hint);
        }
        if let Some(c) = &p.spec.client {
            q.append_pair("client_id", &c.client_id);
        }
        q.append_pair("post_logout_redirect_uri", after);
    }
    Some(url.into())
}

/// OpenID Connect Back-Channel Logout 1.0: a provider posts a `logout_token`; every
/// session it names ends, on every gateway sharing the store. 200 when done, 400 for
/// a token that is not a valid logout token, 503 when the store is down (the provider
/// retries).
pub async fn backchannel(session: &mut Session, ctx: &RequestCtx) -> Outcome {
    let rt = &ctx.rt;
    let form = match read_form(session).await {
        Ok(f) => f,
        Err((status, reason)) => return bc_error(rt, "unknown", status, reason),
    };
    let Some(raw) = form_value(&form, "logout_token").filter(|t| t.len() <= 16 * 1024) else {
        return bc_error(rt, "unknown", 400, "logout-token-missing");
    };
    let providers: Vec<&Provider> = rt.providers.values().map(|p| p.as_ref()).collect();
    let now_s = rt.clock.now_ms() / 1000;
    let (provider, claims) = match token::validate_logout_token(&providers, raw, now_s).await {
        Ok(v) => v,
        Err(reason) => {
            let status = if reason == "provider-unavailable" {
                503
            } else {
                400
            };
            log::info!(
                "request {}: back-channel logout refused: {reason}",
                ctx.request_id
            );
            return bc_error(rt, "unknown", status, reason);
        }
    };
    let id = provider.id();
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str());
    let issuer = &provider.spec.issuer;
    // Replay: a `jti` is accepted once, for as long as its token could be accepted.
    let jti_key = keys::used_token(&keys::sha256_hex(
        format!(
            "{}:{issuer}|{}",
            issuer.len(),
            text("jti").unwrap_or_default()
        )
        .as_bytes(),
    ));
    let remember = Duration::from_secs(token::LOGOUT_TOKEN_MAX_AGE_SECS + 2 * token::LEEWAY_SECS);
    match rt.store.put_if_absent(&jti_key, b"1", remember).await {
        Ok(true) => {}
        Ok(false) => return bc_error(rt, id, 400, "logout-token-replayed"),
        Err(e) => {
            // A timed-out write may still land when the store catches up; take it back
            // (best effort: on one connection the delete lands after it), so the
            // provider's retry of this token is not refused as a replay.
            let _ = rt.store.delete(&jti_key).await;
            log::warn!("back-channel logout: {e}");
            return bc_error(rt, id, 503, "session-store-unavailable");
        }
    }
    let result = match text("sid") {
        Some(sid) => {
            rt.sessions
                .destroy_provider_session(issuer, sid, text("sub"))
                .await
        }
        None => match text("sub") {
            Some(sub) => rt.sessions.destroy_user(&user_key(issuer, sub)).await,
            None => Ok(Vec::new()),
        },
    };
    match result {
        Ok(ended) => {
            rt.metrics.backchannel_logout(id, "success");
            lifecycle::sessions_ended(rt, &ended, "back-channel");
            log::info!(
                "request {}: back-channel logout from {id} ended {} session(s)",
                ctx.request_id,
                ended.len()
            );
            Outcome::Reply(Reply {
                status: 200,
                headers: vec![(header::CACHE_CONTROL, "no-store".into())],
                content_type: "text/plain; charset=utf-8",
                body: Bytes::new(),
            })
        }
        Err(e) => {
            // Forget the jti, so the provider's retry is not taken for a replay.
            let _ = rt.store.delete(&jti_key).await;
            log::warn!("back-channel logout: {e}");
            bc_error(rt, id, 503, "session-store-unavailable")
        }
    }
}

/// A refusal of a back-channel request: JSON in the shape of OAuth errors, counted.
fn bc_error(rt: &Runtime, provider: &str, status: u16, reason: &'static str) -> Outcome {
    rt.metrics.backchannel_logout(provider, reason);
    json(
        status,
        serde_json::json!({
            "error": if status < 500 { "invalid_request" } else { "temporarily_unavailable" },
            "error_description": reason,
        }),
    )
}
