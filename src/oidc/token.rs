//! Checking ID tokens and JWT access tokens. `jsonwebtoken` verifies the signature with
//! an algorithm from an allow-list (asymmetric only, so an HMAC "signed" with a public
//! key is refused, and `none` is not an algorithm at all) and checks `iss` and `aud`;
//! times are checked here against the injected clock with a small leeway. Each failure
//! has its own reason code, used in responses, logs and metrics.

use super::jwks::KeyError;
use super::Provider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

/// Clock skew tolerated between us and a provider, in seconds, for `exp`, `nbf` and
/// `iat`.
pub const LEEWAY_SECS: u64 = 60;

pub type Claims = Map<String, Value>;

/// What an access token must be.
pub struct AccessTokenRules<'a> {
    pub audience: &'a str,
    pub require_at_jwt: bool,
}

/// Checks an ID token from `provider`'s token endpoint, for the login that sent
/// `nonce`. On success, the token's claims.
pub async fn validate_id_token(
    provider: &Provider,
    raw: &str,
    nonce: &str,
    now_s: u64,
) -> Result<Claims, &'static str> {
    let claims = check_id_token(provider, raw, now_s).await?;
    match claims.get("nonce").and_then(Value::as_str) {
        Some(n) if constant_time_eq(n, nonce) => {}
        _ => return Err("nonce-mismatch"),
    }
    Ok(claims)
}

/// Checks an ID token returned by a refresh (OpenID Connect Core §12.2): as at login,
/// and about the same `sub` as the session's.
pub async fn validate_refreshed_id_token(
    provider: &Provider,
    raw: &str,
    subject: &str,
    now_s: u64,
) -> Result<Claims, &'static str> {
    let claims = check_id_token(provider, raw, now_s).await?;
    if claims.get("sub").and_then(Value::as_str) != Some(subject) {
        return Err("token-subject-changed");
    }
    Ok(claims)
}

/// What every ID token from `provider` must pass: signature, `iss`, `aud` = our client,
/// times, and `azp`.
async fn check_id_token(
    provider: &Provider,
    raw: &str,
    now_s: u64,
) -> Result<Claims, &'static str> {
    let d = provider.discovered().ok_or("provider-unavailable")?;
    let client_id = provider
        .spec
        .client
        .as_ref()
        .map(|c| c.client_id.as_str())
        .ok_or("provider-unavailable")?;
    let header = jsonwebtoken::decode_header(raw).map_err(|_| malformed_reason(raw))?;
    let claims = verify(
        provider,
        raw,
        &header,
        &d.id_token_algorithms,
        client_id,
        TOKEN_CLAIMS,
    )
    .await?;
    check_times(&claims, now_s, true)?;
    // OpenID Connect Core §3.1.3.7 (4, 5): with several audiences the token must say who
    // it was issued to, and `azp`, when present, must be us.
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != client_id => return Err("token-azp-mismatch"),
        None if several => return Err("token-azp-mismatch"),
        _ => {}
    }
    Ok(claims)
}

/// Checks a JWT access token presented to a bearer route, against whichever of
/// `providers` issued it. On success, the provider and the claims.
pub async fn validate_access_token<'p>(
    providers: &[&'p Provider],
    raw: &str,
    rules: &AccessTokenRules<'_>,
    now_s: u64,
) -> Result<(&'p Provider, Claims), &'static str> {
    let header = jsonwebtoken::decode_header(raw).map_err(|_| malformed_reason(raw))?;
    if rules.require_at_jwt {
        let typ = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
        if typ != "at+jwt" && typ != "application/at+jwt" {
            return Err("token-type-invalid");
        }
    }
    // Which provider: the unverified `iss` only selects whose keys check the token; the
    // verification then requires that same issuer.
    let unverified: Claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(raw)
        .map_err(|_| "token-malformed")?
        .claims;
    let iss = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("token-issuer-mismatch")?;
    let provider = *providers
        .iter()
        .find(|p| p.spec.issuer == iss)
        .ok_or("token-issuer-mismatch")?;
    if provider.discovered().is_none() {
        return Err("provider-unavailable");
    }
    let claims = verify(
        provider,
        raw,
        &header,
        &provider.spec.algorithms,
        rules.audience,
        TOKEN_CLAIMS,
    )
    .await?;
    check_times(&claims, now_s, false)?;
    // An ID token is for the client, not for an API: refuse one even if its audience
    // were configured by mistake.
    if claims.contains_key("nonce") {
        return Err("token-is-id-token");
    }
    if let Some(client) = &provider.spec.client {
        if claims
            .get("aud")
            .is_some_and(|a| aud_contains(a, &client.client_id))
            && rules.audience != client.client_id
        {
            return Err("token-is-id-token");
        }
    }
    Ok((provider, claims))
}

/// Claims ID and access tokens must have.
const TOKEN_CLAIMS: &[&str] = &["iss", "aud", "sub", "exp"];
/// Claims a logout token must have (`sub` or `sid` is checked on its own).
const LOGOUT_TOKEN_CLAIMS: &[&str] = &["iss", "aud", "iat"];
/// The event a back-channel logout token carries.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Oldest logout token accepted (by `iat`); a used `jti` is remembered this long plus
/// the leeway, so a token can never be replayed while it would still be accepted.
pub const LOGOUT_TOKEN_MAX_AGE_SECS: u64 = 300;

/// Signature, algorithm, `iss`, `aud`, that `required` claims exist, and the shape of
/// `sub` when present, for a token whose `header` the caller has decoded.
async fn verify(
    provider: &Provider,
    raw: &str,
    header: &jsonwebtoken::Header,
    algorithms: &[Algorithm],
    audience: &str,
    required: &[&str],
) -> Result<Claims, &'static str> {
    if !algorithms.contains(&header.alg) {
        return Err("token-alg-not-allowed");
    }
    let key = match provider.keys.find(header.kid.as_deref(), header.alg) {
        Ok(k) => k,
        Err(KeyError::Ambiguous) => return Err("token-key-ambiguous"),
        Err(KeyError::Unknown) => {
            // Perhaps the provider rotated its keys: look once more (rate-limited).
            provider.refresh_keys_for_unknown_kid().await;
            match provider.keys.find(header.kid.as_deref(), header.alg) {
                Ok(k) => k,
                Err(KeyError::Ambiguous) => return Err("token-key-ambiguous"),
                Err(KeyError::Unknown) if provider.keys.is_empty() => {
                    return Err("provider-unavailable")
                }
                Err(KeyError::Unknown) => return Err("token-unknown-key"),
            }
        }
    };
    let mut v = Validation::new(header.alg);
    v.algorithms = vec![header.alg];
    v.set_issuer(&[provider.spec.issuer.as_str()]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(required);
    // Times are ours to check, on our clock (see check_times).
    v.validate_exp = false;
    v.validate_nbf = false;
    let data = jsonwebtoken::decode::<Claims>(raw, &key.key, &v).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => "token-signature-invalid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "token-alg-not-allowed",
        ErrorKind::InvalidIssuer => "token-issuer-mismatch",
        ErrorKind::InvalidAudience => "token-audience-mismatch",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token-issuer-mismatch",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token-audience-mismatch",
        ErrorKind::MissingRequiredClaim(_) => "token-claim-missing",
        _ => "token-malformed",
    })?;
    let claims = data.claims;
    match claims.get("sub").map(Value::as_str) {
        Some(Some(s)) if !s.is_empty() && s.len() <= 255 => {}
        None if !required.contains(&"sub") => {}
        _ => return Err("token-claim-missing"),
    }
    Ok(claims)
}

/// Checks a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6)
/// from whichever of `providers` issued it: signature with that provider's ID token
/// algorithms and keys, `iss`, `aud` = our client id, `iat` (not in the future, not
/// older than [`LOGOUT_TOKEN_MAX_AGE_SECS`]), `exp` when present, a `jti`, the
/// back-channel event, `sub` or `sid`, and no `nonce` (so an ID token is refused).
/// Replay of the `jti` is the caller's to check, in the shared store.
pub async fn validate_logout_token<'p>(
    providers: &[&'p Provider],
    raw: &str,
    now_s: u64,
) -> Result<(&'p Provider, Claims), &'static str> {
    let header = jsonwebtoken::decode_header(raw).map_err(|_| malformed_reason(raw))?;
    // §2.4 recommends `typ: logout+jwt`; a token explicitly typed as something else
    // (an access token, an ID token) is not a logout token.
    if let Some(typ) = header.typ.as_deref() {
        let t = typ.to_ascii_lowercase();
        if !matches!(t.as_str(), "jwt" | "logout+jwt" | "application/logout+jwt") {
            return Err("token-type-invalid");
        }
    }
    let unverified: Claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(raw)
        .map_err(|_| "token-malformed")?
        .claims;
    let iss = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("token-issuer-mismatch")?;
    let provider = *providers
        .iter()
        .find(|p| p.spec.issuer == iss && p.spec.client.is_some())
        .ok_or("token-issuer-mismatch")?;
    let d = provider.discovered().ok_or("provider-unavailable")?;
    let client_id = provider
        .spec
        .client
        .as_ref()
        .map(|c| c.client_id.as_str())
        .ok_or("token-issuer-mismatch")?;
    let claims = verify(
        provider,
        raw,
        &header,
        &d.id_token_algorithms,
        client_id,
        LOGOUT_TOKEN_CLAIMS,
    )
    .await?;
    let num = |k: &str| claims.get(k).and_then(Value::as_f64);
    let iat = num("iat").ok_or("token-iat-invalid")?;
    if iat > (now_s + LEEWAY_SECS) as f64
        || iat + ((LOGOUT_TOKEN_MAX_AGE_SECS + LEEWAY_SECS) as f64) < now_s as f64
    {
        return Err("token-iat-invalid");
    }
    if let Some(exp) = num("exp") {
        if (now_s as f64) > exp + LEEWAY_SECS as f64 {
            return Err("token-expired");
        }
    }
    if claims.contains_key("nonce") {
        return Err("logout-token-nonce-present");
    }
    let event_ok = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    if !event_ok {
        return Err("logout-token-event-missing");
    }
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 512)
    };
    if text("sub").is_none() && text("sid").is_none() {
        return Err("logout-token-subject-missing");
    }
    if text("jti").is_none() {
        return Err("logout-token-jti-missing");
    }
    Ok((provider, claims))
}

/// `exp` (required), `nbf` (when present) and `iat` (required for ID tokens, never in
/// the future).
fn check_times(claims: &Claims, now: u64, iat_required: bool) -> Result<(), &'static str> {
    let num = |k: &str| claims.get(k).and_then(Value::as_f64);
    let exp = num("exp").ok_or("token-claim-missing")?;
    if (now as f64) > exp + LEEWAY_SECS as f64 {
        return Err("token-expired");
    }
    if let Some(nbf) = num("nbf") {
        if (now + LEEWAY_SECS) as f64 <= nbf {
            return Err("token-not-yet-valid");
        }
    }
    match num("iat") {
        Some(iat) if iat > (now + LEEWAY_SECS) as f64 => Err("token-iat-invalid"),
        None if iat_required => Err("token-iat-invalid"),
        _ => Ok(()),
    }
}

fn aud_contains(aud: &Value, who: &str) -> bool {
    match aud {
        Value::String(s) => s == who,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(who)),
        _ => false,
    }
}

/// For a token whose header does not parse: `alg: none` (or any algorithm
/// `jsonwebtoken` does not know) gets its own reason; anything else is malformed.
fn malformed_reason(raw: &str) -> &'static str {
    use base64::Engine;
    let alg = raw
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(Value::as_str).map(str::to_string));
    match alg {
        Some(_) => "token-alg-not-allowed",
        None => "token-malformed",
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn times_honour_the_leeway_and_nothing_more() {
        let now = 1_000_000;
        assert!(check_times(
            &claims(json!({"exp": now - 30, "iat": now - 100})),
            now,
            true
        )
        .is_ok());
        assert_eq!(
            check_times(
                &claims(json!({"exp": now - 61, "iat": now - 100})),
                now,
                true
            ),
            Err("token-expired")
        );
        assert_eq!(
            check_times(
                &claims(json!({"exp": now + 300, "iat": now + 3600})),
                now,
                true
            ),
            Err("token-iat-invalid")
        );
        assert_eq!(
            check_times(&claims(json!({"exp": now + 300})), now, true),
            Err("token-iat-invalid")
        );
        assert!(check_times(&claims(json!({"exp": now + 300})), now, false).is_ok());
        assert_eq!(
            check_times(
                &claims(json!({"exp": now + 300, "nbf": now + 600})),
                now,
                false
            ),
            Err("token-not-yet-valid")
        );
        assert_eq!(
            check_times(&claims(json!({"iat": now})), now, true),
            Err("token-claim-missing")
        );
    }

    #[test]
    fn alg_none_is_named_as_such() {
        use base64::Engine;
        let e = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", e(json!({"alg": "none"})), e(json!({"sub": "x"})));
        assert_eq!(malformed_reason(&none), "token-alg-not-allowed");
        assert_eq!(malformed_reason("garbage"), "token-malformed");
    }
}
