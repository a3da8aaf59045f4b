//! The gateway's own endpoints under `/.portcullis/` on the main listener:
//!
//! | path | method | what |
//! |---|---|---|
//! | `login` | GET | start a login (`rd` = where to return; `provider`, `route` or `email` choose the IdP, else a chooser page; `journey=signup` asks for registration) |
//! | `callback` | GET | the provider's redirect back; creates the session |
//! | `logout` | GET, POST | GET: a confirmation page; POST (with its CSRF token): end the session, then RP-initiated logout at the provider |
//! | `backchannel-logout` | POST | OpenID Connect Back-Channel Logout: the provider ends sessions |
//! | `sessions` | GET, POST | the signed-in user's sessions; POST ends one or all others |
//! | `userinfo` | GET, HEAD | the signed-in user as JSON, for single-page apps |
//! | `jwks.json` | GET, HEAD | the public key of identity assertions |
//!
//! They are answered before route matching, so no route can shadow them.

mod login;
mod logout;

pub use login::count_abandoned;
mod pages;
mod sessions;

use crate::auth;
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
/// Largest form body read by an endpoint (a logout token is a few kilobytes).
const MAX_FORM_BYTES: usize = 64 * 1024;

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

fn redirect(status: u16, location: String, set_cookies: Vec<String>) -> Outcome {
    let mut headers = vec![(header::LOCATION, location)];
    headers.extend(set_cookies.into_iter().map(|c| (header::SET_COOKIE, c)));
    Outcome::Reply(Reply {
        status,
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

/// True when the request asked for JSON.
fn wants_json(session: &Session) -> bool {
    crate::responses::wants_json(session.req_header().headers.get(header::ACCEPT))
}

/// Serves `path` (starting with [`PREFIX`]).
pub async fn serve(session: &mut Session, ctx: &RequestCtx, path: &str, query: &str) -> Outcome {
    let rt = &ctx.rt;
    let method = session.req_header().method.clone();
    let name = &path[PREFIX.len()..];
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    let readable = get || method == http::Method::HEAD;
    match name {
        // Login and callback change state (a login state stored, one taken): GET only.
        "login" | "callback" if !get => error(405, "method-not-allowed"),
        "userinfo" | "jwks.json" if !readable => error(405, "method-not-allowed"),
        "logout" | "sessions" if !(get || post) => error(405, "method-not-allowed"),
        "backchannel-logout" if !post => error(405, "method-not-allowed"),
        "login" => login::login(session, ctx, query).await,
        "callback" => login::callback(session, ctx, query).await,
        "logout" if get => logout::confirm(session, rt).await,
        "logout" => logout::logout(session, ctx).await,
        "backchannel-logout" => logout::backchannel(session, ctx).await,
        "sessions" if get => sessions::list(session, rt).await,
        "sessions" => sessions::end(session, ctx).await,
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
/// origin, with the request's own path as the place to come back to, and the provider
/// when the route has one (else the route, whose providers the chooser offers).
pub fn login_url(rt: &Runtime, route: &crate::runtime::Route, return_to: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("rd", return_to);
    match route.identity.providers.as_slice() {
        [one] => {
            q.append_pair("provider", one);
        }
        _ => {
            q.append_pair("route", &route.name);
        }
    }
    format!("{}{PREFIX}login?{}", rt.public_url.origin, q.finish())
}

/// Where a browser is sent to step up for `route`: our login endpoint, which finds the
/// session's provider and asks it for the route's level.
pub fn step_up_url(rt: &Runtime, route: &crate::runtime::Route, return_to: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("rd", return_to);
    q.append_pair("step_up", &route.name);
    format!("{}{PREFIX}login?{}", rt.public_url.origin, q.finish())
}

/// Reads an `application/x-www-form-urlencoded` body of at most [`MAX_FORM_BYTES`].
async fn read_form(session: &mut Session) -> Result<Vec<(String, String)>, (u16, &'static str)> {
    let h = session.req_header();
    let ctype = h
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err((415, "form-expected"));
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_FORM_BYTES {
                    return Err((413, "body-too-large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err((400, "body-invalid")),
        }
    }
    Ok(url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// The one value of `name` in a form; `None` when absent or given twice.
fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut it = form.iter().filter(|(k, _)| k == name);
    match (it.next(), it.next()) {
        (Some((_, v)), None) => Some(v.as_str()),
        _ => None,
    }
}

/// The session's anti-forgery token matches the form's, in constant time.
fn csrf_ok(s: &crate::session::Session, form: &[(String, String)]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = form_value(form, "csrf") else {
        return false;
    };
    !s.csrf.is_empty() && bool::from(given.as_bytes().ct_eq(s.csrf.as_bytes()))
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
                    "user": s.namespaced_user(),
                    "population": s.population,
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
            let mut h = ResponseHeader::build(r.status, Some(r.headers.len() + 7))?;
            h.insert_header(header::CONTENT_TYPE, r.content_type)?;
            h.insert_header(header::CONTENT_LENGTH, r.body.len().to_string())?;
            if !r.headers.iter().any(|(n, _)| n == header::CACHE_CONTROL) {
                h.insert_header(header::CACHE_CONTROL, "no-store")?;
            }
            if r.content_type.starts_with("text/html") {
                // Our pages have no script and load nothing; forms may submit anywhere
                // (a chooser's form leads on to the provider).
                h.insert_header(
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
                )?;
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
