//! The development identity provider of `portcullis demo`: a minimal OpenID provider
//! (discovery, JWKS, authorize, token, UserInfo) with a page to pick a demo user, so a
//! newcomer can log in without installing anything. **Not for production**: no
//! passwords, users are fixed, everything is in memory. It still does the protocol
//! properly (PKCE S256 required, single-use codes, exact redirect URI, signed ES256 ID
//! tokens), so the gateway in front of it runs exactly the code it runs with a real
//! provider.

use crate::responses::{app_json as reply_json, app_response as reply};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Response, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long an authorization code may wait to be redeemed.
const CODE_TTL: Duration = Duration::from_secs(60);
const TOKEN_TTL: Duration = Duration::from_secs(300);

struct User {
    id: &'static str,
    name: &'static str,
    email: &'static str,
    email_verified: bool,
    groups: &'static [&'static str],
    mfa: bool,
    blurb: &'static str,
}

const USERS: &[User] = &[
    User {
        id: "alice",
        name: "Alice Example",
        email: "alice@example.com",
        email_verified: true,
        groups: &["staff", "customers"],
        mfa: false,
        blurb: "staff, password login",
    },
    User {
        id: "alice-mfa",
        name: "Alice Example",
        email: "alice@example.com",
        email_verified: true,
        groups: &["staff", "customers"],
        mfa: true,
        blurb: "staff, password and one-time code",
    },
    User {
        id: "bob",
        name: "Bob Builder",
        email: "bob@partner.example",
        email_verified: false,
        groups: &["customers"],
        mfa: false,
        blurb: "customer, unverified email",
    },
];

/// The `acr` values the demo provider reports.
pub const ACR_PASSWORD: &str = "urn:portcullis:demo:password";
pub const ACR_MFA: &str = "urn:portcullis:demo:mfa";

struct Grant {
    user: &'static User,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
    expires: SystemTime,
}

/// The provider's state.
pub struct DevIdp {
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    key: EncodingKey,
    kid: String,
    jwks: String,
    codes: Mutex<HashMap<String, Grant>>,
    tokens: Mutex<HashMap<String, (&'static User, SystemTime)>>,
}

impl DevIdp {
    pub fn new(
        issuer: String,
        client_id: String,
        client_secret: String,
        redirect_uri: String,
    ) -> Result<DevIdp, String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| "cannot generate a key".to_string())?;
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(|e| e.to_string())?;
        let kid = jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(|e| e.to_string())?;
        Ok(DevIdp {
            issuer,
            client_id,
            client_secret,
            redirect_uri,
            key,
            kid,
            jwks,
            codes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The provider as a Pingora service on `127.0.0.1:port`.
    pub fn service(self, port: u16) -> Service<HttpServer<DevIdp>> {
        let mut s = Service::new(
            "development identity provider".into(),
            HttpServer::new_app(self),
        );
        s.threads = Some(1);
        s.add_tcp(&format!("127.0.0.1:{port}"));
        s
    }

    fn discovery(&self) -> Response<Vec<u8>> {
        let i = &self.issuer;
        reply_json(
            200,
            json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/authorize"),
                "token_endpoint": format!("{i}/token"),
                "userinfo_endpoint": format!("{i}/userinfo"),
                "jwks_uri": format!("{i}/jwks"),
                "end_session_endpoint": format!("{i}/logout"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
                "claims_supported": ["sub", "email", "email_verified", "name", "groups", "acr", "amr", "auth_time"],
                "acr_values_supported": [ACR_PASSWORD, ACR_MFA],
                "authorization_response_iss_parameter_supported": true,
            }),
        )
    }

    fn authorize(&self, query: &str) -> Response<Vec<u8>> {
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        // Never redirect to an unregistered URI: answer here instead.
        if get("client_id") != self.client_id || get("redirect_uri") != self.redirect_uri {
            return page(400, "Unknown client or redirect URI.");
        }
        if get("response_type") != "code"
            || get("code_challenge_method") != "S256"
            || get("code_challenge").is_empty()
            || !get("scope").split(' ').any(|s| s == "openid")
        {
            return page(
                400,
                "This provider needs response_type=code, scope openid and PKCE with S256.",
            );
        }
        let mut hidden = String::new();
        for k in ["state", "nonce", "code_challenge"] {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(get(k))
            ));
        }
        let mut buttons = String::new();
        for u in USERS {
            buttons.push_str(&format!(
                "<button name=\"user\" value=\"{id}\"><strong>{name}</strong> &lt;{email}&gt;<br><small>{blurb}</small></button>",
                id = u.id,
                name = escape(u.name),
                email = escape(u.email),
                blurb = escape(u.blurb)
            ));
        }
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Sign in: development identity provider</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;color:#222}}\
             .warn{{background:#fff3cd;border:1px solid #e0c36c;padding:.6rem .8rem;border-radius:.3rem}}\
             button{{display:block;width:100%;text-align:left;margin:.6rem 0;padding:.7rem;font:inherit;cursor:pointer;\
             border:1px solid #999;border-radius:.3rem;background:#fafafa}}button:focus,button:hover{{background:#e8f0fe}}</style></head>\
             <body><main><h1>Sign in</h1>\
             <p class=\"warn\" role=\"note\"><strong>Development identity provider.</strong> \
             Built into <code>portcullis demo</code> for trying things out. Not for production: \
             there are no passwords.</p>\
             <form method=\"post\" action=\"/authorize/approve\"><fieldset><legend>Continue as</legend>{hidden}{buttons}</fieldset></form>\
             </main></body></html>"
        );
        reply(200, "text/html; charset=utf-8", body.into_bytes())
    }

    fn approve(&self, form: &[u8]) -> Response<Vec<u8>> {
        let f: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        let Some(user) = USERS
            .iter()
            .find(|u| Some(u.id) == f.get("user").map(String::as_str))
        else {
            return page(400, "Unknown user.");
        };
        let code = crate::oidc::flow::random_token();
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        codes.retain(|_, g| g.expires > now);
        codes.insert(
            code.clone(),
            Grant {
                user,
                redirect_uri: self.redirect_uri.clone(),
                nonce: f.get("nonce").cloned(),
                challenge: f.get("code_challenge").cloned().unwrap_or_default(),
                expires: now + CODE_TTL,
            },
        );
        let Ok(mut location) = url::Url::parse(&self.redirect_uri) else {
            return page(500, "The client's redirect URI is not a URL.");
        };
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", f.get("state").map(String::as_str).unwrap_or(""))
            .append_pair("iss", &self.issuer);
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(http::header::LOCATION, location.as_str())
            .header(http::header::CONTENT_LENGTH, 0)
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(Vec::new())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }

    fn token(&self, session: &ServerSession, form: &[u8]) -> Response<Vec<u8>> {
        let f: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let (id, secret) = client_credentials(session).unwrap_or_else(|| {
            (
                get("client_id").to_string(),
                get("client_secret").to_string(),
            )
        });
        if id != self.client_id || secret != self.client_secret {
            return reply_json(401, json!({"error": "invalid_client"}));
        }
        if get("grant_type") != "authorization_code" {
            return reply_json(400, json!({"error": "unsupported_grant_type"}));
        }
        // Single use: taken out whether or not the rest checks out.
        let grant = self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(get("code"));
        let Some(grant) = grant.filter(|g| g.expires > SystemTime::now()) else {
            return reply_json(400, json!({"error": "invalid_grant"}));
        };
        use base64::Engine;
        use sha2::Digest;
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(get("code_verifier").as_bytes()));
        if grant.redirect_uri != get("redirect_uri") || computed != grant.challenge {
            return reply_json(400, json!({"error": "invalid_grant"}));
        }
        let now = unix(SystemTime::now());
        let u = grant.user;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": u.id.trim_end_matches("-mfa"),
            "aud": self.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL.as_secs(),
            "auth_time": now,
            "acr": if u.mfa { ACR_MFA } else { ACR_PASSWORD },
            "amr": if u.mfa { vec!["pwd", "otp"] } else { vec!["pwd"] },
            "email": u.email,
            "email_verified": u.email_verified,
            "name": u.name,
            "groups": u.groups,
        });
        if let Some(n) = &grant.nonce {
            claims["nonce"] = json!(n);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let Ok(id_token) = jsonwebtoken::encode(&header, &claims, &self.key) else {
            return reply_json(500, json!({"error": "server_error"}));
        };
        let access = crate::oidc::flow::random_token();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let at = SystemTime::now();
        tokens.retain(|_, (_, exp)| *exp > at);
        tokens.insert(access.clone(), (u, at + TOKEN_TTL));
        reply_json(
            200,
            json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": TOKEN_TTL.as_secs(),
                "id_token": id_token,
            }),
        )
    }

    /// RP-initiated logout. The demo provider keeps no sign-in session of its own, so
    /// there is nothing to end: it sends the browser on to `post_logout_redirect_uri`
    /// when that is on the gateway's origin (an open redirect otherwise).
    fn logout(&self, query: &str) -> Response<Vec<u8>> {
        let target = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "post_logout_redirect_uri")
            .map(|(_, v)| v.into_owned());
        let origin = |u: &str| url::Url::parse(u).ok().map(|u| u.origin());
        match target {
            Some(t) if origin(&t).is_some() && origin(&t) == origin(&self.redirect_uri) => {
                let mut r = reply(302, "text/plain", Vec::new());
                if let Ok(v) = http::HeaderValue::from_str(&t) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                r
            }
            Some(_) => page(400, "That post_logout_redirect_uri is not registered."),
            None => page(200, "You are signed out of the development provider."),
        }
    }

    fn userinfo(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let token = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(token) {
            Some((u, exp)) if *exp > SystemTime::now() => reply_json(
                200,
                json!({
                    "sub": u.id.trim_end_matches("-mfa"),
                    "email": u.email,
                    "email_verified": u.email_verified,
                    "name": u.name,
                    "groups": u.groups,
                }),
            ),
            _ => reply_json(401, json!({"error": "invalid_token"})),
        }
    }
}

#[async_trait]
impl ServeHttp for DevIdp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let body = if method == http::Method::POST {
            match read_body(session).await {
                Some(b) => b,
                None => return page(413, "Request too large."),
            }
        } else {
            Bytes::new()
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/.well-known/openid-configuration") => self.discovery(),
            ("GET", "/jwks") => reply(
                200,
                "application/jwk-set+json",
                self.jwks.clone().into_bytes(),
            ),
            ("GET", "/authorize") => self.authorize(&query),
            ("POST", "/authorize/approve") => self.approve(&body),
            ("POST", "/token") => self.token(session, &body),
            ("GET", "/userinfo") => self.userinfo(session),
            ("GET", "/logout") => self.logout(&query),
            _ => page(404, "Not found."),
        }
    }
}

async fn read_body(session: &mut ServerSession) -> Option<Bytes> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if out.len() + chunk.len() > 64 * 1024 {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(Bytes::from(out))
}

/// HTTP Basic client credentials (form-decoded, RFC 6749 §2.3.1).
fn client_credentials(session: &ServerSession) -> Option<(String, String)> {
    use base64::Engine;
    let v = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn page(status: u16, msg: &str) -> Response<Vec<u8>> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status}</title></head>\
         <body><h1>{status}</h1><p>{}</p></body></html>",
        escape(msg)
    );
    reply(status, "text/html; charset=utf-8", body.into_bytes())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
