//! What the upstream learns about the user: header templates rendered from the session
//! (`{sub}`, `{email}`, `{groups}`, ...), and the optional signed identity assertion
//! (`X-Portcullis-Assertion`, an ES256 JWT) whose public key is served at
//! `/.portcullis/jwks.json`. Templates are parsed once per configuration load.

use crate::config::AssertionSpec;
use crate::session::Session;
use http::HeaderName;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// Longest header value we send; a longer one is omitted, never cut (a cut email or
/// group name could name someone or something else).
pub const MAX_VALUE_BYTES: usize = 4096;

/// The assertion header's name.
pub const ASSERTION_HEADER: &str = "x-portcullis-assertion";

/// A compiled header template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Claim(String),
}

impl Template {
    /// Compiles a template already checked by the configuration (see
    /// `config::placeholders`).
    pub fn parse(template: &str) -> Template {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    parts.push(Part::Claim(name));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Template { parts }
    }

    /// The header value for `id`, or `None` when it would be empty, too long or unsafe
    /// (control characters, CR and LF included, are never sent).
    pub fn render(&self, id: &Session) -> Option<String> {
        let mut out = String::new();
        // A template without placeholders is a constant and always sent.
        let mut any = !self.parts.iter().any(|p| matches!(p, Part::Claim(_)));
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Claim(name) => {
                    if let Some(v) = claim_text(id, name) {
                        any |= !v.is_empty();
                        out.push_str(&v);
                    }
                }
            }
        }
        let safe = any && out.len() <= MAX_VALUE_BYTES && !out.chars().any(|c| c.is_control());
        safe.then_some(out)
    }
}

/// A claim as header text: strings as they are, booleans and numbers printed, lists
/// joined with commas. A list item that itself contains a comma is dropped, since the
/// upstream would split it into two (a group named `x,admins` must not read as
/// `admins`).
pub fn claim_text(id: &Session, name: &str) -> Option<String> {
    match name {
        "sub" => return Some(id.subject.clone()),
        "user" => return Some(id.namespaced_user()),
        "population" => return id.population.clone(),
        "iss" => return Some(id.issuer.clone()),
        "provider" => return Some(id.provider.clone()),
        "acr" => return id.acr.clone(),
        "amr" => return Some(join(id.amr.iter().map(String::as_str))),
        _ => {}
    }
    match id.claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => Some(join(items.iter().filter_map(|v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }))),
        _ => None,
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for s in items.filter(|s| !s.contains(',') && !s.is_empty()) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(s);
    }
    out
}

/// A route's compiled header templates.
pub type HeaderTemplates = Vec<(HeaderName, Template)>;

pub fn compile(headers: &[(String, String)]) -> HeaderTemplates {
    headers
        .iter()
        .filter_map(|(n, t)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                Template::parse(t),
            ))
        })
        .collect()
}

/// Signs identity assertions with one P-256 key.
pub struct AssertionSigner {
    key: EncodingKey,
    kid: String,
    jwks: String,
    ttl_s: u64,
    /// The configured key (None: generated), to tell whether a reload changed it.
    configured: Option<String>,
}

impl AssertionSigner {
    /// From the configured PEM key, or a key generated now.
    pub fn new(spec: &AssertionSpec) -> Result<AssertionSigner, String> {
        let key = match &spec.signing_key {
            Some(pem) => EncodingKey::from_ec_pem(pem.expose().as_bytes())
                .map_err(|e| format!("assertion.signing_key: {e}"))?,
            None => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &rng,
                )
                .map_err(|_| "cannot generate the assertion key".to_string())?;
                EncodingKey::from_ec_der(pkcs8.as_ref())
            }
        };
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .map_err(|e| format!("assertion key: {e}"))?;
        let kid = jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|e| format!("assertion key: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] })
            .map_err(|e| format!("assertion key: {e}"))?;
        Ok(AssertionSigner {
            key,
            kid,
            jwks,
            ttl_s: spec.ttl.as_secs().max(1),
            configured: spec.signing_key.as_ref().map(|s| s.expose().to_string()),
        })
    }

    /// True when `spec` names the key this signer already has (a generated key is kept
    /// across reloads, so upstreams that cached the JWKS keep working).
    pub fn matches(&self, spec: &AssertionSpec) -> bool {
        self.configured.as_deref() == spec.signing_key.as_ref().map(|s| s.expose())
            && self.ttl_s == spec.ttl.as_secs().max(1)
    }

    /// The public key set, as served at `/.portcullis/jwks.json`.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// An assertion about `id` for the route `audience`, issued by `issuer` (the public
    /// URL) at `now_s`.
    pub fn sign(&self, id: &Session, issuer: &str, audience: &str, now_s: u64) -> Option<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), issuer.into());
        claims.insert("aud".into(), audience.into());
        claims.insert("sub".into(), id.subject.clone().into());
        claims.insert("iat".into(), now_s.into());
        claims.insert("exp".into(), (now_s + self.ttl_s).into());
        claims.insert("provider".into(), id.provider.clone().into());
        claims.insert("idp".into(), id.issuer.clone().into());
        claims.insert("user".into(), id.namespaced_user().into());
        if let Some(p) = &id.population {
            claims.insert("population".into(), p.clone().into());
        }
        if let Some(acr) = &id.acr {
            claims.insert("acr".into(), acr.clone().into());
        }
        if !id.amr.is_empty() {
            claims.insert("amr".into(), id.amr.clone().into());
        }
        if let Some(t) = id.auth_time {
            claims.insert("auth_time".into(), t.into());
        }
        for (k, v) in &id.claims {
            claims.entry(k.clone()).or_insert_with(|| v.clone());
        }
        jsonwebtoken::encode(&header, &claims, &self.key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Session {
        Session {
            provider: "corp".into(),
            issuer: "https://id.example".into(),
            subject: "alice-1".into(),
            claims: json!({"email": "alice@example.com", "email_verified": true,
                "groups": ["staff", "x,admins", "ops"], "evil": "a\r\nX-Injected: 1"})
            .as_object()
            .unwrap()
            .clone(),
            acr: Some("loa2".into()),
            amr: vec!["pwd".into(), "otp".into()],
            auth_time: Some(1),
            ..Session::default()
        }
    }

    #[test]
    fn templates_render_claims_and_join_lists_safely() {
        let a = alice();
        assert_eq!(Template::parse("{sub}").render(&a).unwrap(), "alice-1");
        assert_eq!(
            Template::parse("{email} ({email_verified})")
                .render(&a)
                .unwrap(),
            "alice@example.com (true)"
        );
        assert_eq!(Template::parse("{groups}").render(&a).unwrap(), "staff,ops");
        assert_eq!(Template::parse("{amr}").render(&a).unwrap(), "pwd,otp");
        assert_eq!(
            Template::parse("{{{sub}}}").render(&a).unwrap(),
            "{alice-1}"
        );
    }

    #[test]
    fn unsafe_empty_or_huge_values_are_omitted() {
        let mut a = alice();
        assert_eq!(Template::parse("{evil}").render(&a), None);
        assert_eq!(Template::parse("{missing}").render(&a), None);
        a.claims
            .insert("big".into(), json!("x".repeat(MAX_VALUE_BYTES + 1)));
        assert_eq!(Template::parse("{big}").render(&a), None);
    }

    #[test]
    fn assertions_verify_with_the_published_key() {
        let spec = AssertionSpec {
            signing_key: None,
            ttl: std::time::Duration::from_secs(60),
        };
        let s = AssertionSigner::new(&spec).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let jwt = s
            .sign(&alice(), "https://gw.example", "account", now)
            .unwrap();
        let set: JwkSet = serde_json::from_str(s.jwks_json()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["account"]);
        v.set_issuer(&["https://gw.example"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice-1");
        assert_eq!(data.claims["exp"].as_u64().unwrap(), now + 60);
        assert_eq!(data.header.kid, set.keys[0].common.key_id);
        assert!(s.matches(&spec));
    }
}
