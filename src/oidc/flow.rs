//! The authorization code flow, both halves: [`start`] makes the authorization request
//! (PKCE S256, `state` and `nonce` of 256 random bits) and keeps its secrets server-side,
//! bound to the browser; [`finish`] checks the callback, redeems the code and checks the
//! ID token (and UserInfo), and returns the session to create. Every failure is a reason
//! code; none creates a session.

use super::{token, Provider, ProviderError};
use crate::session::{keys, Session, SessionStore, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient};
use openidconnect::{
    ClientId, ClientSecret, CsrfToken, Nonce, PkceCodeChallenge, RedirectUrl, Scope,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Random bytes in `state`, `nonce`, the PKCE verifier and the browser binding.
const RANDOM_BYTES: u32 = 32;
/// Longest return path kept; longer ones fall back to `/`.
const MAX_RETURN_PATH: usize = 2048;
/// Longest claim value kept in a session (longer ones are dropped, not cut).
const MAX_CLAIM_BYTES: usize = 4096;

/// A login in progress, stored under the hash of its `state` until the callback takes it.
#[derive(Serialize, Deserialize)]
struct LoginState {
    provider: String,
    nonce: String,
    verifier: String,
    return_to: String,
    /// SHA-256 of the browser-binding cookie's value.
    binding: String,
    started_ms: u64,
    /// The account the user said they are (home-realm discovery's email), for
    /// failed-login regulation.
    #[serde(default)]
    hint: Option<String>,
    /// When this login is a step-up: what it must prove, for which session.
    #[serde(default)]
    step_up: Option<StepUpState>,
    /// Which journey (metrics).
    #[serde(default)]
    journey: Journey,
    /// Its member in the queue of pending logins ([`keys::LOGINS_PENDING`]), taken off
    /// at the callback; what is left when the login times out was abandoned.
    #[serde(default)]
    pending: String,
}

/// What a login is for: signing in, signing up (`prompt=create`) or stepping up. A
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Journey {
    #[default]
    Login,
    Signup,
    StepUp,
}

impl Journey {
    pub fn label(self) -> &'static str {
        match self {
            Journey::Login => "login",
            Journey::Signup => "signup",
            Journey::StepUp => "step-up",
        }
    }

    pub fn from_label(s: &str) -> Option<Journey> {
        match s {
            "login" => Some(Journey::Login),
            "signup" => Some(Journey::Signup),
            "step-up" => Some(Journey::StepUp),
            _ => None,
        }
    }
}

/// A pending login's member in [`keys::LOGINS_PENDING`]: what an abandoned login is
/// counted by, and a unique part. `<unique>|<journey>|<provider>|<step-up route>`.
fn pending_member(unique: &str, journey: Journey, provider: &str, route: &str) -> String {
    format!("{unique}|{}|{provider}|{route}", journey.label())
}

/// A pending login, as read back from its member.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending<'a> {
    pub journey: Journey,
    pub provider: &'a str,
    /// The step-up's route; empty otherwise.
    pub route: &'a str,
}

impl<'a> Pending<'a> {
    pub fn parse(member: &'a str) -> Option<Pending<'a>> {
        let mut p = member.splitn(4, '|');
        let (_, journey, provider, route) = (p.next()?, p.next()?, p.next()?, p.next()?);
        Some(Pending {
            journey: Journey::from_label(journey)?,
            provider,
            route,
        })
    }
}

/// A step-up in progress: the session being elevated and what the provider's answer
/// must show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepUpState {
    /// The route that asked (metrics, audit).
    pub route: String,
    /// Hash of the session's id.
    pub session: String,
    /// `acr` values that meet the route's level at this provider.
    pub accepted: Vec<String>,
    /// Authentication must be at most this old (seconds).
    pub max_age: Option<u64>,
    /// How long the higher level lasts (ms).
    pub elevation_ms: u64,
}

/// Where to send the browser, and the binding cookie to set if it had none.
pub struct Started {
    pub location: String,
    pub new_binding: Option<String>,
}

/// The outcome of a good callback.
pub struct Finished {
    pub session: Session,
    pub return_to: String,
    pub started_ms: u64,
    /// The token endpoint's answer, for the tokens a session keeps.
    pub tokens: super::TokenResponse,
    /// The account the user said they are at login start (home-realm discovery's
    /// email), for failed-login regulation.
    pub hint: Option<String>,
    /// Set when the login was a step-up.
    pub step_up: Option<StepUpState>,
    pub journey: Journey,
}

/// Optional parameters of an authorization request.
#[derive(Default)]
pub struct StartOptions<'a> {
    /// The user's email or login name, when home-realm discovery found it.
    pub login_hint: Option<&'a str>,
    /// Space-separated `acr` values to request.
    pub acr_values: Option<&'a str>,
    /// `max_age` (seconds) to send.
    pub max_age: Option<u64>,
    /// Send `prompt=login`.
    pub prompt_login: bool,
    /// Send `prompt=create` (a sign-up journey, OpenID Connect Prompt Create 1.0).
    pub prompt_create: bool,
    /// This login is a step-up of an existing session.
    pub step_up: Option<StepUpState>,
}

/// Why a callback failed: the reason code, the status of the error page, and the
/// provider when it is known (for metrics).
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub status: u16,
    pub provider: Option<String>,
    /// The account the login was for, when the user named one.
    pub account: Option<String>,
    /// The login's journey, once the callback was tied to a login.
    pub journey: Option<Journey>,
    /// The route of a step-up that failed.
    pub step_up_route: Option<String>,
}

fn fail(reason: &'static str, status: u16, provider: Option<&str>) -> Failure {
    Failure {
        reason,
        status,
        provider: provider.map(str::to_string),
        account: None,
        journey: None,
        step_up_route: None,
    }
}

/// A fresh random token: 256 bits, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; RANDOM_BYTES as usize];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// True for a value with exactly the shape of our random tokens.
pub fn is_token_shaped(v: &str) -> bool {
    v.len() == 43
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Begins a login at `provider`, returning to `return_to` (already validated) afterwards.
/// `binding` is the browser's binding cookie, if it has a well-formed one.
pub async fn start(
    provider: &Provider,
    store: &dyn SessionStore,
    return_to: &str,
    binding: Option<&str>,
    options: &StartOptions<'_>,
    ttl: Duration,
    now_ms: u64,
) -> Result<Started, Failure> {
    let id = Some(provider.id());
    let d = provider
        .discovered()
        .ok_or_else(|| fail("provider-unavailable", 503, id))?;
    let client = provider
        .spec
        .client
        .as_ref()
        .ok_or_else(|| fail("provider-unavailable", 503, id))?;
    let (new_binding, binding) = match binding {
        Some(b) => (None, b.to_string()),
        None => {
            let b = random_token();
            (Some(b.clone()), b)
        }
    };
    let redirect = RedirectUrl::new(provider.redirect_uri.clone())
        .map_err(|_| fail("internal-error", 500, id))?;
    let oidc = CoreClient::from_provider_metadata(
        d.metadata.clone(),
        ClientId::new(client.client_id.clone()),
        Some(ClientSecret::new(client.client_secret.expose().to_string())),
    )
    .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(RANDOM_BYTES);
    let mut req = oidc
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            || CsrfToken::new_random_len(RANDOM_BYTES),
            || Nonce::new_random_len(RANDOM_BYTES),
        )
        .set_pkce_challenge(challenge);
    for s in provider.spec.scopes.iter().filter(|s| *s != "openid") {
        req = req.add_scope(Scope::new(s.clone()));
    }
    for (k, v) in &provider.spec.auth_params {
        req = req.add_extra_param(k.clone(), v.clone());
    }
    if let Some(hint) = options.login_hint {
        req = req.add_extra_param("login_hint", hint.to_string());
    }
    if let Some(acr) = options.acr_values {
        req = req.add_extra_param("acr_values", acr.to_string());
    }
    if let Some(max_age) = options.max_age {
        req = req.add_extra_param("max_age", max_age.to_string());
    }
    if options.prompt_login {
        req = req.add_extra_param("prompt", "login");
    } else if options.prompt_create {
        req = req.add_extra_param("prompt", "create");
    }
    let (url, state, nonce) = req.url();
    let state_hash = keys::sha256_hex(state.secret().as_bytes());
    let journey = if options.step_up.is_some() {
        Journey::StepUp
    } else if options.prompt_create {
        Journey::Signup
    } else {
        Journey::Login
    };
    let pending = pending_member(
        &state_hash[..16],
        journey,
        provider.id(),
        options.step_up.as_ref().map_or("", |s| s.route.as_str()),
    );
    let record = LoginState {
        provider: provider.id().to_string(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        return_to: return_to.to_string(),
        binding: keys::sha256_hex(binding.as_bytes()),
        started_ms: now_ms,
        hint: options.login_hint.map(str::to_string),
        step_up: options.step_up.clone(),
        journey,
        pending,
    };
    let bytes = serde_json::to_vec(&record).map_err(|_| fail("internal-error", 500, id))?;
    let stored = store
        .put_if_absent(&keys::login_state(&state_hash), &bytes, ttl)
        .await
        .map_err(|e| store_failure(e, id))?;
    if !stored {
        // 256 random bits collided: something is badly wrong with randomness.
        return Err(fail("internal-error", 500, id));
    }
    let due = now_ms.saturating_add(ttl.as_millis() as u64);
    if let Err(e) = store
        .queue_add(keys::LOGINS_PENDING, &record.pending, due)
        .await
    {
        // Only the abandoned-login count misses it; the login itself goes on.
        log::warn!("cannot queue a pending login: {e}");
    }
    Ok(Started {
        location: url.to_string(),
        new_binding,
    })
}

/// The callback's query parameters.
#[derive(Default, Debug)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub iss: Option<String>,
}

impl CallbackParams {
    /// Parses a query string; a parameter given twice makes the request invalid.
    pub fn parse(query: &str) -> Result<CallbackParams, &'static str> {
        let mut p = CallbackParams::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "state" => &mut p.state,
                "code" => &mut p.code,
                "error" => &mut p.error,
                "iss" => &mut p.iss,
                _ => continue,
            };
            if slot.is_some() {
                return Err("callback-invalid");
            }
            *slot = Some(v.into_owned());
        }
        Ok(p)
    }
}

/// Who the user is at login: where they came from and with what.
pub struct Client<'a> {
    pub ip: Option<String>,
    pub user_agent: Option<&'a str>,
}

/// Completes a login from its callback. `binding` is the browser's binding cookie.
/// The login state is taken (single use) before anything else is checked, so a failed
/// or replayed callback can never be retried with the same `state`.
pub async fn finish<'p>(
    find_provider: impl Fn(&str) -> Option<&'p Provider>,
    store: &dyn SessionStore,
    params: &CallbackParams,
    binding: Option<&str>,
    client: Client<'_>,
    now_ms: u64,
) -> Result<Finished, Failure> {
    let state = params
        .state
        .as_deref()
        .ok_or_else(|| fail("state-missing", 400, None))?;
    if state.is_empty() || state.len() > 512 {
        return Err(fail("state-mismatch", 400, None));
    }
    let taken = store
        .take(&keys::login_state(&keys::sha256_hex(state.as_bytes())))
        .await
        .map_err(|e| store_failure(e, None))?;
    // Unknown, altered, expired or already used: all look the same from here.
    let bytes = taken.ok_or_else(|| fail("state-mismatch", 400, None))?;
    let login: LoginState =
        serde_json::from_slice(&bytes).map_err(|_| fail("state-mismatch", 400, None))?;
    if !login.pending.is_empty() {
        // The callback came: whatever its outcome, the login was not abandoned.
        if let Err(e) = store
            .queue_remove(keys::LOGINS_PENDING, &login.pending)
            .await
        {
            log::warn!("cannot dequeue a pending login: {e}");
        }
    }
    let account = login.hint.clone();
    let journey = login.journey;
    let step_up_route = login.step_up.as_ref().map(|s| s.route.clone());
    finish_login(find_provider, login, params, binding, client, now_ms)
        .await
        .map_err(|mut f| {
            f.account = account;
            f.journey = Some(journey);
            f.step_up_route = step_up_route;
            f
        })
}

/// The rest of [`finish`], once the login state is taken.
async fn finish_login<'p>(
    find_provider: impl Fn(&str) -> Option<&'p Provider>,
    login: LoginState,
    params: &CallbackParams,
    binding: Option<&str>,
    client: Client<'_>,
    now_ms: u64,
) -> Result<Finished, Failure> {
    let id = Some(login.provider.as_str());
    let bound = binding.is_some_and(|b| {
        use subtle::ConstantTimeEq;
        bool::from(
            keys::sha256_hex(b.as_bytes())
                .as_bytes()
                .ct_eq(login.binding.as_bytes()),
        )
    });
    if !bound {
        return Err(fail("browser-mismatch", 400, id));
    }
    let provider =
        find_provider(&login.provider).ok_or_else(|| fail("provider-unknown", 400, id))?;
    let d = provider
        .discovered()
        .ok_or_else(|| fail("provider-unavailable", 503, id))?;
    // RFC 9207: with `iss` on the response, a mix-up between providers shows.
    match params.iss.as_deref() {
        Some(iss) if iss != provider.spec.issuer => return Err(fail("issuer-mismatch", 400, id)),
        None if d.iss_parameter_supported => return Err(fail("issuer-mismatch", 400, id)),
        _ => {}
    }
    if let Some(e) = params.error.as_deref() {
        let reason = match e {
            "access_denied" => "access-denied",
            "login_required" | "interaction_required" | "consent_required" => "login-required",
            _ => "idp-error",
        };
        return Err(fail(reason, 400, id));
    }
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| fail("code-missing", 400, id))?;
    let tokens = provider
        .exchange_code(&d, code, &login.verifier)
        .await
        .map_err(|e| match e {
            ProviderError::Status {
                status: 400,
                ref detail,
            } if detail == "invalid_grant" => fail("code-rejected", 400, id),
            ProviderError::Unreachable(_) => fail("provider-unreachable", 502, id),
            _ => fail("token-exchange-failed", 502, id),
        })?;
    let raw_id_token = tokens
        .id_token
        .as_deref()
        .ok_or_else(|| fail("id-token-missing", 502, id))?;
    let now_s = now_ms / 1000;
    let mut claims = token::validate_id_token(provider, raw_id_token, &login.nonce, now_s)
        .await
        .map_err(|reason| {
            let status = if reason == "provider-unavailable" {
                503
            } else {
                400
            };
            fail(reason, status, id)
        })?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if provider.spec.userinfo && d.userinfo_endpoint.is_some() {
        let access = tokens
            .access_token
            .as_deref()
            .ok_or_else(|| fail("userinfo-failed", 502, id))?;
        let info = provider
            .userinfo(&d, access)
            .await
            .map_err(|_| fail("userinfo-failed", 502, id))?;
        // OpenID Connect Core §5.3.2: the UserInfo `sub` must be the ID token's, or the
        // response is about someone else and must not be used.
        if info.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
            return Err(fail("userinfo-sub-mismatch", 400, id));
        }
        for (k, v) in info {
            // The ID token's own protocol claims are not overridden by UserInfo.
            if !matches!(
                k.as_str(),
                "iss" | "aud" | "exp" | "iat" | "nonce" | "azp" | "acr" | "amr" | "auth_time"
            ) {
                claims.insert(k, v);
            }
        }
    }
    let mut session = identity(provider, &claims);
    session.client_ip = client.ip;
    session.user_agent = client.user_agent.map(|u| u.chars().take(512).collect());
    session.sid = claims
        .get("sid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 512)
        .map(str::to_string);
    Ok(Finished {
        session,
        return_to: login.return_to,
        started_ms: login.started_ms,
        tokens,
        hint: login.hint,
        step_up: login.step_up,
        journey: login.journey,
    })
}

/// Who a verified token (ID token, or access token on a bearer route) says the user
/// is, as a session without times or client details.
pub fn identity(provider: &Provider, claims: &token::Claims) -> Session {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Session {
        provider: provider.id().to_string(),
        issuer: provider.spec.issuer.clone(),
        subject: claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        claims: map_claims(provider, claims),
        acr: claims
            .get("acr")
            .and_then(Value::as_str)
            .map(str::to_string),
        amr: claims.get("amr").map(strings).unwrap_or_default(),
        auth_time: claims.get("auth_time").and_then(Value::as_u64),
        ..Session::default()
    }
}

/// The claims a session keeps: the standard identity claims under their own names,
/// then the provider's mapping (`ours: theirs`, where `theirs` may be a dotted path
/// into nested objects, as in Keycloak's `realm_access.roles`).
pub fn map_claims(provider: &Provider, claims: &token::Claims) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for name in [
        "email",
        "email_verified",
        "name",
        "preferred_username",
        "groups",
    ] {
        if let Some(v) = claims.get(name) {
            out.insert(name.to_string(), v.clone());
        }
    }
    for (ours, theirs) in &provider.spec.claims {
        match lookup(claims, theirs) {
            Some(v) => {
                out.insert(ours.clone(), v.clone());
            }
            None => {
                out.remove(ours);
            }
        }
    }
    out.retain(|_, v| serde_json::to_string(v).is_ok_and(|s| s.len() <= MAX_CLAIM_BYTES));
    out
}

fn lookup<'a>(claims: &'a token::Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn store_failure(e: StoreError, provider: Option<&str>) -> Failure {
    log::warn!("login: {e}");
    fail("session-store-unavailable", 503, provider)
}

/// The path to return to after login, if `raw` is a safe same-origin relative
/// reference; otherwise `/`. Refused: anything not starting with a single `/` (so
/// `//evil`, `https:evil`, `@evil`), any backslash (browsers read `/\evil` as
/// `//evil`), control characters and spaces, raw or percent-encoded (`/%09/evil`
/// becomes `//evil` once a browser drops the tab), encoded slashes at the start, and
/// our own endpoints.
pub fn safe_return_path(raw: &str) -> String {
    if is_safe_return_path(raw) {
        raw.to_string()
    } else {
        "/".to_string()
    }
}

fn is_safe_return_path(raw: &str) -> bool {
    if raw.is_empty() || raw.len() > MAX_RETURN_PATH || !raw.starts_with('/') {
        return false;
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return false;
    }
    // Decode repeatedly (up to a bound) so that double encoding hides nothing: once
    // decoded, still no control characters, no backslashes, no `//` at the start.
    let mut cur = raw.as_bytes().to_vec();
    for _ in 0..3 {
        let decoded: Vec<u8> = percent_encoding::percent_decode(&cur).collect();
        if decoded.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\')
            || decoded.starts_with(b"//")
        {
            return false;
        }
        if decoded == cur {
            break;
        }
        cur = decoded;
    }
    let path_end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..path_end];
    !(path == "/.portcullis" || path.starts_with("/.portcullis/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_redirect_corpus_falls_back_to_root() {
        for bad in [
            "",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "/%09/evil.example",
            "/%2F/evil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "/%255Cevil.example",
            "/%252F%252Fevil.example",
            "https:evil.example",
            "https://evil.example",
            "http:/evil.example",
            "@evil.example",
            "evil.example",
            "javascript:alert(1)",
            "/\tevil",
            "/\r\nLocation: https://evil.example",
            "/%0d%0aSet-Cookie:x=y",
            "/ /evil",
            "/caf\u{e9}",
            "/.portcullis/login?rd=//evil",
            "/.portcullis/callback",
            "/.portcullis",
            "/%00",
            "\u{3000}/evil",
        ] {
            assert_eq!(
                safe_return_path(bad),
                "/",
                "{bad:?} must not be a return path"
            );
        }
    }

    #[test]
    fn ordinary_paths_are_kept() {
        for good in [
            "/",
            "/account",
            "/account/orders?page=2&sort=desc",
            "/search?q=a%20b",
            "/a/b#frag",
            "/files/%7Euser/",
            "/x@y",
            "/.well-known/thing",
        ] {
            assert_eq!(safe_return_path(good), good);
        }
        assert_eq!(safe_return_path(&format!("/{}", "a".repeat(3000))), "/");
    }

    #[test]
    fn callback_parameters_are_single_valued() {
        let p = CallbackParams::parse("code=abc&state=xyz&iss=https%3A%2F%2Fid.example").unwrap();
        assert_eq!(p.code.as_deref(), Some("abc"));
        assert_eq!(p.iss.as_deref(), Some("https://id.example"));
        assert!(CallbackParams::parse("state=a&state=b").is_err());
    }

    #[test]
    fn random_tokens_have_256_bits_and_our_shape() {
        let a = random_token();
        assert!(is_token_shaped(&a));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_token());
        assert!(!is_token_shaped("short"));
    }
}
