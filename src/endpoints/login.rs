//! `login` (with the provider chooser and home-realm discovery) and `callback`.

use super::pages::{self, Choice};
use super::{error, redirect, Outcome};
use crate::config::{AuthMode, ProviderSpec};
use crate::cookies;
use crate::oidc::flow::{self, CallbackParams, Journey, StartOptions, StepUpState};
use crate::policy;
use crate::proxy::RequestCtx;
use crate::regulation::{self, Subject};
use crate::runtime::Runtime;
use crate::session::{SealedTokens, SessionId, TokenKind};
use http::header;
use pingora::proxy::Session;

/// Metric label of what a callback could not be tied to.
const UNKNOWN: &str = "unknown";

/// Longest email accepted for home-realm discovery (RFC 5321 path limit).
const MAX_EMAIL: usize = 254;

/// The login request's parameters (the first of each; repeats are ignored).
#[derive(Default)]
struct LoginParams {
    rd: Option<String>,
    provider: Option<String>,
    route: Option<String>,
    email: Option<String>,
    step_up: Option<String>,
    journey: Option<String>,
    /// Set by the chooser's form: the answer to a journey already counted as started.
    via: Option<String>,
}

impl LoginParams {
    fn parse(query: &str) -> LoginParams {
        let mut p = LoginParams::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "rd" => &mut p.rd,
                "provider" => &mut p.provider,
                "route" => &mut p.route,
                "email" => &mut p.email,
                "step_up" => &mut p.step_up,
                "journey" => &mut p.journey,
                "via" => &mut p.via,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        p
    }
}

/// The domain of a plausible email address, lower case.
fn email_domain(email: &str) -> Option<String> {
    if email.len() > MAX_EMAIL || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let (local, domain) = email.rsplit_once('@')?;
    (!local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.'))
    .then(|| domain.to_ascii_lowercase())
}

pub async fn login(session: &Session, ctx: &RequestCtx, query: &str) -> Outcome {
    let rt = &ctx.rt;
    let params = LoginParams::parse(query);
    // `journey=signup` asks the provider for its registration page (`prompt=create`).
    let signup = match params.journey.as_deref() {
        None => false,
        Some("signup") => true,
        Some(_) => return error(400, "journey-unknown"),
    };
    let return_to = flow::safe_return_path(params.rd.as_deref().unwrap_or("/"));
    // The providers that may satisfy the route the user was sent from, in its order;
    // without a (known) route, every provider with a client, in gateway.yaml's order.
    let route = params.route.as_deref().and_then(|name| {
        rt.routes.iter().find(|r| {
            &*r.name == name && matches!(r.auth, AuthMode::Login | AuthMode::LoginOrBearer)
        })
    });
    let candidates: Vec<&ProviderSpec> = match route {
        Some(r) => r
            .identity
            .providers
            .iter()
            .filter_map(|id| rt.config.providers.iter().find(|p| &p.id == id))
            .filter(|p| p.client.is_some())
            .collect(),
        None => rt
            .config
            .providers
            .iter()
            .filter(|p| p.client.is_some())
            .collect(),
    };
    if candidates.is_empty() {
        return error(404, "no-login-provider");
    }
    let chooser = |notice: Option<&str>| {
        let choices: Vec<Choice<'_>> = candidates
            .iter()
            .map(|p| Choice {
                id: &p.id,
                name: &p.display_name,
            })
            .collect();
        pages::chooser(
            &choices,
            candidates.iter().any(|p| !p.domains.is_empty()),
            &return_to,
            route.map(|r| &*r.name),
            signup,
            notice,
        )
    };
    // A step-up goes back to the provider of the session it elevates, asking for the
    // route's level. Without a session it is an ordinary login for the route.
    let mut step: Option<(StepUpState, String, bool)> = None;
    let mut step_user: Option<String> = None;
    if let Some(name) = params.step_up.as_deref() {
        let Some(step_spec) = rt
            .routes
            .iter()
            .find(|r| &*r.name == name)
            .and_then(|r| r.identity.step_up.as_ref())
        else {
            return error(400, "step-up-invalid");
        };
        match crate::auth::session_of(rt, &session.req_header().headers).await {
            Ok(a) => {
                let p = &a.identity.provider;
                let accepted = step_spec.acr.accepted.iter().find(|(id, _)| id == p);
                if let (Some(id), Some((_, accepted))) = (&a.session_id, accepted) {
                    step_user = Some(a.identity.namespaced_user());
                    step = Some((
                        StepUpState {
                            route: name.to_string(),
                            session: id.hash(),
                            accepted: accepted.clone(),
                            max_age: step_spec.max_age.map(|d| d.as_secs()),
                            elevation_ms: step_spec.elevation.as_millis() as u64,
                        },
                        p.clone(),
                        step_spec.prompt_login,
                    ));
                }
            }
            Err(crate::policy::Decision::Unavailable { reason }) => return error(503, reason),
            Err(_) => {}
        }
    }
    let journey = if step.is_some() {
        Journey::StepUp
    } else if signup {
        Journey::Signup
    } else {
        Journey::Login
    };
    if params.via.as_deref() != Some("chooser") {
        rt.metrics.login_started(journey.label());
    }
    let pinned = step
        .as_ref()
        .and_then(|(_, p, _)| candidates.iter().find(|c| &c.id == p).copied());
    let mut hint = None;
    let chosen: &ProviderSpec = if let Some(p) = pinned {
        p
    } else if let Some(id) = &params.provider {
        // A provider named outright (a link, or the chooser's button) must be one the
        // route accepts.
        match candidates.iter().find(|p| &p.id == id) {
            Some(p) => p,
            None => return error(400, "provider-unknown"),
        }
    } else if let Some(email) = params.email.as_deref().map(str::trim) {
        let Some(domain) = email_domain(email) else {
            return chooser(Some("Enter a valid email address, or choose below."));
        };
        hint = Some(email);
        let by_domain = candidates.iter().find(|p| p.domains.contains(&domain));
        let general: Vec<&&ProviderSpec> =
            candidates.iter().filter(|p| p.domains.is_empty()).collect();
        match (by_domain, general.as_slice()) {
            (Some(p), _) => p,
            // No organisation claims the domain: the one general provider takes it.
            (None, [only]) => only,
            (None, _) => {
                return chooser(Some(
                    "We could not tell where addresses at that domain sign in. Choose below.",
                ))
            }
        }
    } else {
        match candidates.as_slice() {
            [only] => only,
            _ => return chooser(None),
        }
    };
    let Some(provider) = rt.providers.get(&chosen.id) else {
        return error(400, "provider-unknown");
    };
    if let Some(spec) = &rt.config.login.regulation {
        let mut subjects = Vec::with_capacity(2);
        if let Some(ip) = ctx.client_ip {
            subjects.push(Subject::Ip(ip));
        }
        if let Some(h) = hint {
            subjects.push(Subject::Account(h));
        }
        // A step-up knows who the user is: failed step-ups hold their account.
        if let Some(user) = &step_user {
            subjects.push(Subject::Account(user));
        }
        match regulation::check(rt.store.as_ref(), spec, &subjects, rt.clock.now_ms()).await {
            Ok(None) => {}
            Ok(Some(held)) => {
                rt.metrics.login_regulated(held.action, held.kind);
                rt.audit.emit(
                    "login-held",
                    serde_json::json!({
                        "request_id": ctx.request_id.as_str(),
                        "action": held.action,
                        "kind": held.kind,
                        "retry_after": crate::ratelimit::retry_after_secs(held.wait),
                    }),
                );
                if super::wants_json(session) {
                    let mut out = super::json(
                        429,
                        serde_json::json!({
                            "status": 429,
                            "error": "login-regulated",
                            "request_id": ctx.request_id.as_str(),
                        }),
                    );
                    if let Outcome::Reply(r) = &mut out {
                        r.headers.push((
                            http::header::RETRY_AFTER,
                            crate::ratelimit::retry_after_secs(held.wait).to_string(),
                        ));
                    }
                    return out;
                }
                return pages::too_many_attempts(held.wait);
            }
            Err(_) => return error(503, "session-store-unavailable"),
        }
    }
    note_address(ctx, hint, signup).await;
    if provider.discovered().is_none() {
        // Not yet discovered (a provider that just came up): one more try now, within
        // the same back-off as the background task.
        provider.refresh().await;
    }
    let step = step.filter(|_| pinned.is_some());
    let acr_values = match &step {
        Some((st, _, _)) => Some(st.accepted.join(" ")),
        None => population_acr_values(rt, &chosen.id),
    };
    let spec = &rt.config.session;
    let binding = cookies::find(&session.req_header().headers, &spec.login_cookie_name)
        .filter(|v| flow::is_token_shaped(v));
    let now = rt.clock.now_ms();
    let options = StartOptions {
        login_hint: hint,
        acr_values: acr_values.as_deref(),
        max_age: step.as_ref().and_then(|(st, _, _)| st.max_age),
        prompt_login: step.as_ref().is_some_and(|(_, _, prompt)| *prompt),
        prompt_create: signup && step.is_none(),
        step_up: step.map(|(st, _, _)| st),
    };
    match flow::start(
        provider,
        rt.store.as_ref(),
        &return_to,
        binding,
        &options,
        spec.login_timeout,
        now,
    )
    .await
    {
        Ok(started) => {
            rt.metrics.login_sent(journey.label(), provider.id());
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
            redirect(302, started.location, vec![cookie])
        }
        Err(f) => {
            rt.metrics
                .login_failed(journey.label(), provider.id(), f.reason);
            error(f.status, f.reason)
        }
    }
}

/// Most abandoned logins counted per sweep (the rest wait for the next one).
const ABANDONED_PER_SWEEP: usize = 1000;

/// Counts the logins whose callback never came before they timed out: takes them off
/// the store's queue of pending logins (each is taken by one gateway of a fleet) and
/// counts each as abandoned, a step-up also for its route. Returns how many.
pub async fn count_abandoned(rt: &Runtime) -> Result<usize, crate::session::StoreError> {
    let taken = rt
        .store
        .queue_take_due(
            crate::session::keys::LOGINS_PENDING,
            rt.clock.now_ms(),
            ABANDONED_PER_SWEEP,
        )
        .await?;
    for member in &taken {
        let Some(p) = flow::Pending::parse(member) else {
            continue;
        };
        rt.metrics.login_abandoned(p.journey.label(), p.provider);
        if p.journey == Journey::StepUp && !p.route.is_empty() {
            rt.metrics.step_up(p.route, "abandoned", "timed-out");
        }
    }
    Ok(taken.len())
}

/// Counts, per client address, what the `credential_stuffing` and `signup_velocity`
/// risk signals look for: the account a login names and sign-ups started. Best effort:
/// a store outage loses a count, never the login.
async fn note_address(ctx: &RequestCtx, account: Option<&str>, signup: bool) {
    let rt = &ctx.rt;
    let Some(ip) = ctx.client_ip else { return };
    let w = &rt.config.risk.weights;
    let now = rt.clock.now_ms();
    let store = rt.store.as_ref();
    if let (Some(c), Some(account)) = (w.credential_stuffing, account) {
        if let Err(e) = regulation::note_account(store, ip, account, c.window, now).await {
            log::warn!("risk: cannot count an account for credential stuffing: {e}");
        }
    }
    if let (Some(c), true) = (w.signup_velocity, signup) {
        if let Err(e) = regulation::note_signup(store, ip, c.window, now).await {
            log::warn!("risk: cannot count a sign-up: {e}");
        }
    }
}

/// The `acr_values` to request at `provider`: when every population that signs in there
/// has a minimum level, the values meeting the lowest of them (any of which will do).
fn population_acr_values(rt: &Runtime, provider: &str) -> Option<String> {
    let mut widest: Option<&Vec<String>> = None;
    for p in rt
        .config
        .populations
        .iter()
        .filter(|p| p.providers.iter().any(|id| id == provider))
    {
        let values = p
            .acr
            .as_ref()?
            .accepted
            .iter()
            .find(|(id, _)| id == provider)
            .map(|(_, v)| v)?;
        if widest.is_none_or(|w| values.len() > w.len()) {
            widest = Some(values);
        }
    }
    widest.map(|v| v.join(" "))
}

pub async fn callback(session: &Session, ctx: &RequestCtx, query: &str) -> Outcome {
    let rt = &ctx.rt;
    let metrics = &rt.metrics;
    let req = session.req_header();
    let params = match CallbackParams::parse(query) {
        Ok(p) => p,
        // Counted against the address like every other 4xx callback failure.
        Err(reason) => {
            metrics.login_callback(UNKNOWN, UNKNOWN);
            return failed(ctx, UNKNOWN, UNKNOWN, reason, 400, None).await;
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
    let mut done = match finished {
        Ok(done) => {
            metrics.login_callback(done.journey.label(), &done.session.provider);
            done
        }
        Err(f) => {
            let provider = f.provider.as_deref().unwrap_or(UNKNOWN);
            let journey = f.journey.map_or(UNKNOWN, Journey::label);
            metrics.login_callback(journey, provider);
            if let Some(route) = &f.step_up_route {
                metrics.step_up(route, "failed", f.reason);
            }
            return failed(
                ctx,
                journey,
                provider,
                f.reason,
                f.status,
                f.account.as_deref(),
            )
            .await;
        }
    };
    if let Some(step) = done.step_up.take() {
        return finish_step_up(session, ctx, done, step, now).await;
    }
    let provider = done.session.provider.clone();
    // A refusal for who the user turned out to be counts against the account they
    // named at login start (the one checked there), else against provider:sub.
    let user = done
        .hint
        .clone()
        .unwrap_or_else(|| done.session.namespaced_user());
    note_address(ctx, Some(&user), false).await;
    let journey = done.journey.label();
    let fail = |reason: &'static str, status: u16| {
        failed(ctx, journey, &provider, reason, status, Some(&user))
    };
    // The population decides the session's rules; with populations configured, a user
    // in none of them does not get a session.
    if !rt.config.populations.is_empty() {
        let Some(pop) = policy::population_of(&rt.config.populations, &done.session) else {
            return fail("population-unmatched", 403).await;
        };
        if let Some(min) = &pop.acr {
            if !policy::meets_acr(min, &done.session) {
                return fail("acr-insufficient", 403).await;
            }
        }
        done.session.population = Some(pop.name.clone());
    }
    keep_tokens(rt, &mut done.session, &done.tokens, now);
    let new_device_cookie = note_device(rt, &req.headers, &mut done.session, now).await;
    // A session the browser already had ends here: login always starts a new one under
    // a new id, so an id planted before login never becomes valid.
    if let Some(old) = cookies::find(&req.headers, &spec.cookie_name).and_then(SessionId::parse) {
        match rt.sessions.destroy(&old).await {
            Ok(Some(_)) => metrics.sessions_ended("replaced", 1),
            Ok(None) => {}
            Err(e) => log::warn!("could not end the previous session at login: {e}"),
        }
    }
    let created = match rt.sessions.create(done.session).await {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "request {}: cannot store the new session: {e}",
                ctx.request_id
            );
            return fail("session-store-unavailable", 503).await;
        }
    };
    crate::lifecycle::sessions_ended(rt, &created.evicted, "evicted");
    metrics.session_created(created.session.population.as_deref());
    metrics.login_completed(
        journey,
        &provider,
        now.saturating_sub(done.started_ms) as f64 / 1000.0,
    );
    // The cookie lives as long as the session can: its population's absolute timeout.
    let lifetime = rt.absolute_timeout(&created.session);
    let mut cookies = vec![
        cookies::set(
            spec,
            &spec.cookie_name,
            created.id.as_cookie_value(),
            lifetime.as_secs(),
        ),
        cookies::clear(spec, &spec.login_cookie_name),
    ];
    if let Some(device) = new_device_cookie {
        cookies.push(cookies::set(
            spec,
            &spec.device_cookie_name,
            &device,
            DEVICE_LIFETIME.as_secs(),
        ));
    }
    redirect(
        302,
        format!("{}{}", rt.public_url.origin, done.return_to),
        cookies,
    )
}

/// The callback of a step-up: the provider's answer must be about the same user, at
/// one of the route's `acr` values, and fresh enough; then the session takes the higher
/// level (until its elevation lapses) under a new id.
async fn finish_step_up(
    session: &Session,
    ctx: &RequestCtx,
    done: flow::Finished,
    step: StepUpState,
    now: u64,
) -> Outcome {
    let rt = &ctx.rt;
    let spec = &rt.config.session;
    let provider = done.session.provider.clone();
    let user = done.session.namespaced_user();
    let fail = |reason: &'static str, status: u16| {
        rt.metrics.step_up(&step.route, "failed", reason);
        audit_step_up(ctx, &step.route, &done.session, "failed", reason);
        failed(
            ctx,
            Journey::StepUp.label(),
            &provider,
            reason,
            status,
            done.hint.as_deref().or(Some(&user)),
        )
    };
    let id = cookies::find(&session.req_header().headers, &spec.cookie_name)
        .and_then(SessionId::parse)
        .filter(|id| {
            use subtle::ConstantTimeEq;
            bool::from(id.hash().as_bytes().ct_eq(step.session.as_bytes()))
        });
    let Some(id) = id else {
        return fail("step-up-session-changed", 400).await;
    };
    let mut s = match rt.sessions.load(&id).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return fail("session-unknown", 400).await,
        Err(_) => return fail("session-store-unavailable", 503).await,
    };
    if s.issuer != done.session.issuer || s.subject != done.session.subject {
        return fail("step-up-user-mismatch", 403).await;
    }
    if !done
        .session
        .acr
        .as_ref()
        .is_some_and(|a| step.accepted.contains(a))
    {
        return fail("step-up-acr-insufficient", 403).await;
    }
    if let Some(max_age) = step.max_age {
        let now_s = now / 1000;
        let fresh = done.session.auth_time.is_some_and(|t| {
            t <= now_s + flow_leeway() && now_s.saturating_sub(t) <= max_age + flow_leeway()
        });
        if !fresh {
            return fail("step-up-authentication-too-old", 403).await;
        }
    }
    // The level to fall back to is the one before any step-up.
    let base = s.elevation.take().unwrap_or(crate::session::Elevation {
        base_acr: s.acr.clone(),
        base_amr: s.amr.clone(),
        base_auth_time: s.auth_time,
        until_ms: 0,
    });
    s.elevation = Some(crate::session::Elevation {
        until_ms: now.saturating_add(step.elevation_ms),
        ..base
    });
    s.acr = done.session.acr.clone();
    s.amr = done.session.amr.clone();
    s.auth_time = done.session.auth_time;
    // More proof from this browser: it no longer counts as a new device.
    s.new_device = false;
    // A privilege change: the id changes with it.
    let new_id = match rt.sessions.update(&id, &s).await {
        Ok(()) => rt.sessions.rotate(&id).await,
        Err(e) => Err(e),
    };
    let new_id = match new_id {
        Ok(Some(n)) => n,
        Ok(None) => return fail("session-unknown", 400).await,
        Err(_) => return fail("session-store-unavailable", 503).await,
    };
    rt.metrics.step_up(&step.route, "completed", "ok");
    rt.metrics.login_completed(
        Journey::StepUp.label(),
        &provider,
        now.saturating_sub(done.started_ms) as f64 / 1000.0,
    );
    audit_step_up(ctx, &step.route, &s, "completed", "ok");
    let lifetime = rt.absolute_timeout(&s);
    let elapsed = now.saturating_sub(s.created_ms) / 1000;
    redirect(
        302,
        format!("{}{}", rt.public_url.origin, done.return_to),
        vec![
            cookies::set(
                spec,
                &spec.cookie_name,
                new_id.as_cookie_value(),
                lifetime.as_secs().saturating_sub(elapsed),
            ),
            cookies::clear(spec, &spec.login_cookie_name),
        ],
    )
}

fn flow_leeway() -> u64 {
    crate::oidc::token::LEEWAY_SECS
}

fn audit_step_up(
    ctx: &RequestCtx,
    route: &str,
    s: &crate::session::Session,
    outcome: &str,
    reason: &str,
) {
    ctx.rt.audit.emit(
        "step-up",
        serde_json::json!({
            "request_id": ctx.request_id.as_str(),
            "route": route,
            "user": crate::audit::pseudonym(&s.user_key()),
            "outcome": outcome,
            "reason": reason,
            "acr": s.acr,
        }),
    );
}

/// How long a browser is remembered as a user's device.
const DEVICE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(400 * 86_400);

/// With the `new_device` risk signal on: marks the session as from a new device when
/// the browser's device cookie is not among the user's known devices (kept in the
/// store, `u:{<user>}:devices`), and remembers it. Returns a device cookie value to set
/// when the browser had no valid one. The cookie is 256 random bits signed with the
/// session keys (`<id>.<HMAC>`), so a made-up or altered cookie is refused before the
/// store is asked and the browser gets a new one; the store holds only the id's hash.
async fn note_device(
    rt: &Runtime,
    headers: &http::HeaderMap,
    s: &mut crate::session::Session,
    now: u64,
) -> Option<String> {
    if rt.config.risk.weights.new_device == 0 {
        return None;
    }
    // Config requires keys for this signal with Redis; the memory store has its own.
    let Some(sealer) = rt.sealer.as_deref() else {
        s.new_device = true;
        return None;
    };
    let spec = &rt.config.session;
    let presented = cookies::find(headers, &spec.device_cookie_name)
        .and_then(|v| sealer.verify(v, DEVICE_CONTEXT))
        .filter(|v| flow::is_token_shaped(v))
        .map(str::to_string);
    let (device, new_cookie) = match presented {
        Some(d) => (d, None),
        None => {
            let d = flow::random_token();
            let signed = sealer.sign(&d, DEVICE_CONTEXT);
            (d, Some(signed))
        }
    };
    let hash = crate::session::keys::sha256_hex(device.as_bytes());
    let key = crate::session::keys::user_key(&s.user_key(), "devices");
    // Unknown when the store cannot say: a new device (the signal errs on the safe side).
    s.new_device = !rt
        .store
        .index_members(&key, now)
        .await
        .is_ok_and(|known| known.contains(&hash));
    let until = now.saturating_add(DEVICE_LIFETIME.as_millis() as u64);
    if let Err(e) = rt.store.index_add(&key, &hash, until).await {
        log::warn!("cannot remember a device: {e}");
    }
    new_cookie
}

/// What device cookies are signed for (no other signed value can pass as one).
const DEVICE_CONTEXT: &str = "device-cookie";

/// A login that failed at the callback: counted, logged, and regulated (4xx failures
/// count against the client's address; the user's own against their account too).
async fn failed(
    ctx: &RequestCtx,
    journey: &'static str,
    provider: &str,
    reason: &'static str,
    status: u16,
    account: Option<&str>,
) -> Outcome {
    let rt = &ctx.rt;
    rt.metrics.login_failed(journey, provider, reason);
    log::info!(
        "request {}: login failed at callback: {reason} (provider {provider})",
        ctx.request_id
    );
    rt.audit.emit(
        "login-failed",
        serde_json::json!({
            "request_id": ctx.request_id.as_str(),
            "journey": journey,
            "provider": provider,
            "reason": reason,
            "status": status,
        }),
    );
    if let Some(spec) = &rt.config.login.regulation {
        if (400..500).contains(&status) {
            let mut subjects = Vec::with_capacity(2);
            if let Some(ip) = ctx.client_ip {
                subjects.push(Subject::Ip(ip));
            }
            if let Some(a) = account.filter(|_| regulation::counts_against_account(reason)) {
                subjects.push(Subject::Account(a));
            }
            match regulation::record_failure(rt.store.as_ref(), spec, &subjects, rt.clock.now_ms())
                .await
            {
                Ok(banned) => {
                    for kind in banned {
                        rt.metrics.login_regulated("ban-started", kind);
                        rt.audit.emit(
                            "login-banned",
                            serde_json::json!({
                                "request_id": ctx.request_id.as_str(),
                                "kind": kind,
                                "ban_seconds": spec.ban.as_secs(),
                            }),
                        );
                    }
                }
                Err(e) => log::warn!("login regulation: cannot count a failure: {e}"),
            }
        }
    }
    error(status, reason)
}

/// Seals the tokens the session needs: the ID token (the `id_token_hint` of logout)
/// whenever tokens can be kept, and the access and refresh tokens when a route forwards
/// access tokens or the population keeps sessions alive with the provider.
fn keep_tokens(
    rt: &Runtime,
    s: &mut crate::session::Session,
    tokens: &crate::oidc::TokenResponse,
    now_ms: u64,
) {
    if !rt.sessions.can_keep_tokens() {
        return;
    }
    let refreshing = rt.population(s).is_some_and(|p| p.refresh_tokens);
    let mut kept = SealedTokens::default();
    let seal = |kind, t: &Option<String>| t.as_deref().and_then(|t| rt.sessions.seal(s, kind, t));
    kept.id_token = seal(TokenKind::Id, &tokens.id_token);
    if refreshing || rt.keeps_access_tokens {
        kept.access_token = seal(TokenKind::Access, &tokens.access_token);
        kept.refresh_token = seal(TokenKind::Refresh, &tokens.refresh_token);
        kept.access_expires_ms = tokens
            .expires_in
            .map(|secs| now_ms.saturating_add(secs.saturating_mul(1000)));
        kept.access_issued_ms = Some(now_ms);
    }
    s.tokens = Some(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_domains_are_found_only_in_plausible_addresses() {
        assert_eq!(
            email_domain("Ann@ACME.example").as_deref(),
            Some("acme.example")
        );
        assert_eq!(
            email_domain("a@b@acme.example").as_deref(),
            Some("acme.example")
        );
        assert_eq!(email_domain("@acme.example"), None);
        assert_eq!(email_domain("ann@localhost"), None);
        assert_eq!(email_domain("ann @acme.example"), None);
        assert_eq!(
            email_domain(&format!("{}@acme.example", "a".repeat(300))),
            None
        );
    }
}
