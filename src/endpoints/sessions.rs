//! `sessions`: the signed-in user's own sessions, listed (HTML, or JSON with
//! `Accept: application/json`) and ended one by one or all but the current one.

use super::pages::{self, SessionRow};
use super::{csrf_ok, error, form_value, json, read_form, redirect, wants_json, Outcome, PREFIX};
use crate::auth;
use crate::cookies;
use crate::lifecycle;
use crate::policy::Decision;
use crate::proxy::RequestCtx;
use crate::runtime::Runtime;
use crate::session::{handle, Session as StoredSession, SessionId};
use pingora::proxy::Session;

/// The current session, or the refusal to answer with.
async fn current(rt: &Runtime, session: &Session) -> Result<(SessionId, StoredSession), Outcome> {
    match auth::session_of(rt, &session.req_header().headers).await {
        Ok(a) => match a.session_id {
            Some(id) => Ok((id, a.identity)),
            None => Err(error(401, "user-unauthenticated")),
        },
        Err(Decision::Unavailable { reason }) => Err(error(503, reason)),
        Err(d) => Err(error(401, d.reason().unwrap_or("user-unauthenticated"))),
    }
}

pub async fn list(session: &Session, rt: &Runtime) -> Outcome {
    let (id, me) = match current(rt, session).await {
        Ok(c) => c,
        Err(o) => return o,
    };
    let listed = match rt.sessions.list_user(&me.user_key()).await {
        Ok(l) => l,
        Err(_) => return error(503, "session-store-unavailable"),
    };
    let mine = id.hash();
    let geo = rt.config.risk.geoip.as_ref();
    let location = |s: &crate::session::Session| {
        let ip = s.client_ip.as_deref()?.parse().ok()?;
        geo?.db.country_name(ip)
    };
    if wants_json(session) {
        let items: Vec<serde_json::Value> = listed
            .iter()
            .map(|(hash, s)| {
                serde_json::json!({
                    "id": handle(hash),
                    "device": pages::device_summary(s.user_agent.as_deref()),
                    "location": location(s),
                    "created": pages::time(s.created_ms),
                    "last_seen": pages::time(s.last_seen_ms),
                    "current": *hash == mine,
                })
            })
            .collect();
        return json(
            200,
            serde_json::json!({ "sessions": items, "csrf": me.csrf }),
        );
    }
    let rows: Vec<SessionRow> = listed
        .iter()
        .map(|(hash, s)| SessionRow {
            handle: handle(hash),
            device: pages::device_summary(s.user_agent.as_deref()),
            location: location(s),
            created: pages::time(s.created_ms),
            last_seen: pages::time(s.last_seen_ms),
            current: *hash == mine,
        })
        .collect();
    pages::sessions(&rows, &me.csrf, geo.is_some())
}

/// POST `action=end&session=<id>` or `action=end-others`, with the session's
/// anti-forgery token. Only the user's own sessions can be named.
pub async fn end(session: &mut Session, ctx: &RequestCtx) -> Outcome {
    let rt = &ctx.rt;
    let current = current(rt, session).await;
    let form = match read_form(session).await {
        Ok(f) => f,
        Err((status, reason)) => return error(status, reason),
    };
    let (id, me) = match current {
        Ok(c) => c,
        Err(o) => return o,
    };
    if !csrf_ok(&me, &form) {
        return error(403, "csrf-invalid");
    }
    let mine = id.hash();
    let listed = match rt.sessions.list_user(&me.user_key()).await {
        Ok(l) => l,
        Err(_) => return error(503, "session-store-unavailable"),
    };
    let targets: Vec<&String> = match form_value(&form, "action") {
        Some("end") => {
            let Some(h) = form_value(&form, "session") else {
                return error(400, "session-missing");
            };
            match listed.iter().find(|(hash, _)| handle(hash) == h) {
                Some((hash, _)) => vec![hash],
                None => return error(404, "session-unknown"),
            }
        }
        Some("end-others") => listed
            .iter()
            .map(|(hash, _)| hash)
            .filter(|h| **h != mine)
            .collect(),
        _ => return error(400, "action-invalid"),
    };
    let mut ended = Vec::new();
    for hash in &targets {
        match rt.sessions.destroy_hash(hash).await {
            Ok(Some(s)) => ended.push(s),
            Ok(None) => {}
            Err(_) => return error(503, "session-store-unavailable"),
        }
    }
    lifecycle::sessions_ended(rt, &ended, "revoked");
    let ended_current = targets.iter().any(|h| **h == mine);
    let spec = &rt.config.session;
    let cookies = if ended_current {
        vec![cookies::clear(spec, &spec.cookie_name)]
    } else {
        Vec::new()
    };
    if wants_json(session) {
        let mut out = json(200, serde_json::json!({ "ended": ended.len() }));
        if let Outcome::Reply(r) = &mut out {
            r.headers
                .extend(cookies.into_iter().map(|c| (http::header::SET_COOKIE, c)));
        }
        return out;
    }
    let next = if ended_current {
        format!("{}{}", rt.public_url.origin, rt.config.logout.redirect)
    } else {
        format!("{}{PREFIX}sessions", rt.public_url.origin)
    };
    redirect(303, next, cookies)
}
