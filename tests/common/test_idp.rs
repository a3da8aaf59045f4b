//! An in-process OpenID provider for integration tests that misbehaves on demand.
//!
//! Well-behaved, it implements the authorization code flow with PKCE (S256 only), client
//! authentication by `client_secret_basic` or `client_secret_post`, RS256 ID tokens, a
//! userinfo endpoint and RFC 9207 `iss` on the authorization response. It shows no UI: the
//! authorization endpoint approves the configured user at once.
//!
//! [`TestIdp::set`] switches on a [`Misbehaviour`]: something a real provider would never
//! do (a forged signature, a wrong audience, a mix-up `iss`...). Each misbehaviour changes
//! one thing and keeps everything else valid, so a gateway that rejects the result does so
//! for that reason. Several may be active at once; those that choose how the ID token is
//! signed take precedence in this order: `AlgNone`, `Hs256WithClientSecret`,
//! `Hs256WithRsaPublicKey`, `Hs256WithRsaPublicKeyDer`, `EcSigned`, then RS256.
//!
//! Tokens: every authorization code grant also issues a refresh token (whatever the
//! scope: real providers want `offline_access`, this one does not check), and the token
//! endpoint accepts `grant_type=refresh_token` with client authentication, rotating the
//! refresh token (a used one is spent; presenting it again is `invalid_grant`). Access
//! tokens are random and distinct per issue, valid for [`TestIdp::access_token_ttl`]
//! (300 s by default). [`TestIdp::reject_refresh`] makes every refresh `invalid_grant`
//! (the grant revoked at the provider); [`TestIdp::token_delay`] makes the token
//! endpoint slow, so concurrent requests really overlap; [`TestIdp::token_calls`] counts
//! token endpoint calls by grant type.
//!
//! Each login at `/authorize` starts a provider session with a random `sid`, put in the
//! ID tokens of that login and of its refreshes (unless a `sid` claim is configured, or
//! removed with a `null`); [`TestIdp::sids`] lists them. [`TestIdp::logout_token_claims`]
//! is the starting point of a back-channel logout token for [`TestIdp::mint`].
//!
//! Each provider generates its own keys: RSA "rsa-1" (RS256) and EC P-256 "ec-1" (ES256),
//! published from the start, and RSA "rsa-2", published only after
//! [`TestIdp::rotate_keys`]. An attacker RSA key and an attacker EC key (shared by the
//! providers of a test process) are in no provider's JWKS; they are served at
//! [`TestIdp::attacker_jwks_url`] for `jku` tests.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Something a real provider would never do; see each variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// The ID token is a valid RS256 token whose signature bytes are then altered.
    BadSignature,
    /// The ID token has header `alg: "none"` and an empty signature.
    AlgNone,
    /// The ID token is HS256, keyed with the client secret (header kid still "rsa-1").
    Hs256WithClientSecret,
    /// The ID token is HS256, keyed with the PEM (SPKI, "BEGIN PUBLIC KEY", LF line endings,
    /// trailing newline) of the published RSA key its header names: key confusion.
    Hs256WithRsaPublicKey,
    /// As `Hs256WithRsaPublicKey`, keyed with the DER (SPKI) bytes instead.
    Hs256WithRsaPublicKeyDer,
    /// ID token `iss` is another issuer.
    WrongIss,
    /// ID token has no `iss`.
    MissingIss,
    /// ID token `aud` is another client.
    WrongAud,
    /// ID token `aud` is `[client_id, "other-client"]`, without `azp`.
    MultipleAudNoAzp,
    /// ID token `aud` is `[client_id, "other-client"]` with `azp` = client_id: well-behaved.
    MultipleAudWithAzp,
    /// ID token has no `nonce` although the authorization request had one.
    MissingNonce,
    /// ID token `nonce` differs from the authorization request's.
    WrongNonce,
    /// ID token `exp` is 600 s in the past (`iat` 900 s).
    Expired,
    /// ID token `iat` is an hour in the future (`exp` 300 s after it).
    IatInFuture,
    /// ID token is signed with RSA key "rsa-2", absent from the JWKS until
    /// [`TestIdp::rotate_keys`].
    UnknownKid,
    /// ID token header has no `kid` (the JWKS holds several keys).
    MissingKid,
    /// The discovery document's `issuer` is another host than the one it is fetched from.
    DiscoveryIssuerMismatch,
    /// The authorization response's `iss` parameter names another issuer (mix-up).
    AuthzIssMismatch,
    /// The authorization response has no `iss` parameter.
    AuthzIssMissing,
    /// The userinfo response's `sub` differs from the ID token's.
    UserinfoSubMismatch,
    /// The authorization endpoint answers `error=access_denied` (with `state` and `iss`).
    AccessDenied,
    /// The ID token is signed ES256 with the published key "ec-1": well-behaved.
    EcSigned,
}

/// The issuer used where a misbehaviour names another one.
pub const OTHER_ISSUER: &str = "https://attacker.example";
/// The other audience used by `WrongAud` and `MultipleAud*`.
pub const OTHER_CLIENT: &str = "other-client";
/// The `sub` userinfo answers with under `UserinfoSubMismatch`.
pub const OTHER_SUB: &str = "someone-else";

/// Start-up configuration; [`Default`] gives a usable client with no redirect URI yet.
#[derive(Debug, Clone)]
pub struct TestIdpConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Exact redirect URIs accepted at `/authorize`; more can be added after start with
    /// [`TestIdp::allow_redirect_uri`].
    pub redirect_uris: Vec<String>,
    /// Claims added to, or replacing, the user's default claims (see
    /// [`TestIdp::id_token_claims`]); a `null` value removes the claim. They appear in the
    /// ID token and, except for protocol claims (`iss`, `aud`, `exp`, `acr`...), at userinfo.
    pub claims: Map<String, Value>,
}

impl Default for TestIdpConfig {
    fn default() -> Self {
        TestIdpConfig {
            client_id: "portcullis-test".into(),
            client_secret: "portcullis-test-secret-0123456789".into(),
            redirect_uris: Vec::new(),
            claims: Map::new(),
        }
    }
}

/// How [`TestIdp::mint`] signs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintAlg {
    /// RS256 with the IdP RSA key named by `kid` ("rsa-1" or "rsa-2"), else the current signer.
    Rs256,
    /// ES256 with "ec-1".
    Es256,
    /// HS256 keyed with the client secret.
    Hs256ClientSecret,
    /// HS256 keyed with the SPKI PEM of the RSA key named by `kid` (else the current signer).
    Hs256RsaPublicKeyPem,
    /// HS256 keyed with the SPKI DER of the RSA key named by `kid` (else the current signer).
    Hs256RsaPublicKeyDer,
    /// HS256 keyed with these bytes.
    Hs256(Vec<u8>),
    /// `alg: "none"`, empty signature.
    None,
}

/// The JOSE header of a minted token. Start from [`TokenHeader::rs256`] & co. and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub alg: MintAlg,
    /// `None` omits `kid`. A name of an IdP key also selects the signing key.
    pub kid: Option<String>,
    /// `None` omits `typ`.
    pub typ: Option<String>,
    pub jku: Option<String>,
    pub x5u: Option<String>,
    /// Embed the attacker's public key as `jwk`; the token is signed by the attacker key.
    pub attacker_jwk: bool,
    /// Embed a self-signed certificate of the attacker's key as `x5c`; the token is signed
    /// by the attacker key.
    pub attacker_x5c: bool,
    /// Sign with the attacker key (RSA for RS256, EC for ES256) though nothing is embedded,
    /// e.g. with `jku` set to [`TestIdp::attacker_jwks_url`].
    pub attacker_key: bool,
}

impl TokenHeader {
    fn new(alg: MintAlg, kid: Option<&str>) -> TokenHeader {
        TokenHeader {
            alg,
            kid: kid.map(str::to_string),
            typ: Some("JWT".into()),
            jku: None,
            x5u: None,
            attacker_jwk: false,
            attacker_x5c: false,
            attacker_key: false,
        }
    }
    /// RS256, kid "rsa-1", typ "JWT".
    pub fn rs256() -> TokenHeader {
        Self::new(MintAlg::Rs256, Some("rsa-1"))
    }
    /// ES256, kid "ec-1", typ "JWT".
    pub fn es256() -> TokenHeader {
        Self::new(MintAlg::Es256, Some("ec-1"))
    }
    /// HS256 keyed with the client secret, kid "rsa-1", typ "JWT".
    pub fn hs256_client_secret() -> TokenHeader {
        Self::new(MintAlg::Hs256ClientSecret, Some("rsa-1"))
    }
    /// HS256 keyed with the PEM of RSA key "rsa-1", kid "rsa-1", typ "JWT".
    pub fn hs256_rsa_public_key() -> TokenHeader {
        Self::new(MintAlg::Hs256RsaPublicKeyPem, Some("rsa-1"))
    }
    /// `alg: "none"`, kid "rsa-1", typ "JWT".
    pub fn none() -> TokenHeader {
        Self::new(MintAlg::None, Some("rsa-1"))
    }
    pub fn kid(mut self, kid: impl Into<String>) -> TokenHeader {
        self.kid = Some(kid.into());
        self
    }
    pub fn no_kid(mut self) -> TokenHeader {
        self.kid = None;
        self
    }
    pub fn typ(mut self, typ: impl Into<String>) -> TokenHeader {
        self.typ = Some(typ.into());
        self
    }
    pub fn no_typ(mut self) -> TokenHeader {
        self.typ = None;
        self
    }
    pub fn jku(mut self, url: impl Into<String>) -> TokenHeader {
        self.jku = Some(url.into());
        self
    }
    pub fn x5u(mut self, url: impl Into<String>) -> TokenHeader {
        self.x5u = Some(url.into());
        self
    }
    pub fn attacker_jwk(mut self) -> TokenHeader {
        self.attacker_jwk = true;
        self
    }
    pub fn attacker_x5c(mut self) -> TokenHeader {
        self.attacker_x5c = true;
        self
    }
    pub fn attacker_key(mut self) -> TokenHeader {
        self.attacker_key = true;
        self
    }
}

/// A request the IdP received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query parameters, or form fields for a POST, in order.
    pub params: Vec<(String, String)>,
    pub authorization: Option<String>,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct RsaKey {
    enc: EncodingKey,
    /// Public JWK with kid, use and alg.
    jwk: Jwk,
    spki_pem: String,
    spki_der: Vec<u8>,
    pkcs8_der: Vec<u8>,
}

struct EcKey {
    enc: EncodingKey,
    jwk: Jwk,
    pkcs8_der: Vec<u8>,
}

/// The provider's own keys: fresh for each provider, so that two providers in one test
/// never accept each other's tokens.
struct Keys {
    rsa1: RsaKey,
    ec1: EcKey,
    /// Made on first need (`UnknownKid`, `rotate_keys`, a minted "rsa-2" token): RSA key
    /// generation is the bulk of start-up time.
    rsa2: OnceLock<RsaKey>,
}

/// Keys no provider publishes, with self-signed certificates (DER); shared by all providers
/// of the test process and made on first use.
struct Attacker {
    rsa: RsaKey,
    ec: EcKey,
    rsa_cert: Vec<u8>,
    ec_cert: Vec<u8>,
}

/// rand 0.9's thread RNG behind the rand_core 0.10 traits that rsa 0.10 wants.
struct Rng10(rand::rngs::ThreadRng);

impl rsa::rand_core::TryRng for Rng10 {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand::RngCore::next_u32(&mut self.0))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand::RngCore::next_u64(&mut self.0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dst);
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for Rng10 {}

fn rsa_key(kid: &str) -> RsaKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::PrivateKey::new(&mut Rng10(rand::rng()), 2048).expect("RSA key generation");
    let public = key.to_public_key();
    let enc = EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    RsaKey {
        enc,
        jwk,
        spki_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
        spki_der: public.to_public_key_der().unwrap().as_bytes().to_vec(),
        pkcs8_der: key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
    }
}

fn ec_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pkcs8_der = pair.serialize_der();
    let enc = EncodingKey::from_ec_der(&pkcs8_der);
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    EcKey {
        enc,
        jwk,
        pkcs8_der,
    }
}

fn self_signed_cert(pkcs8_der: &[u8], alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8_der.to_vec());
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).unwrap();
    let params = rcgen::CertificateParams::new(vec!["attacker.example".to_string()]).unwrap();
    params.self_signed(&pair).unwrap().der().to_vec()
}

impl Keys {
    fn generate() -> Keys {
        Keys {
            rsa1: rsa_key("rsa-1"),
            ec1: ec_key("ec-1"),
            rsa2: OnceLock::new(),
        }
    }

    fn rsa2(&self) -> &RsaKey {
        self.rsa2.get_or_init(|| rsa_key("rsa-2"))
    }
}

fn attacker() -> &'static Attacker {
    static ATTACKER: OnceLock<Attacker> = OnceLock::new();
    ATTACKER.get_or_init(|| {
        let rsa = rsa_key("attacker-rsa");
        let ec = ec_key("attacker-ec");
        Attacker {
            rsa_cert: self_signed_cert(&rsa.pkcs8_der, &rcgen::PKCS_RSA_SHA256),
            ec_cert: self_signed_cert(&ec.pkcs8_der, &rcgen::PKCS_ECDSA_P256_SHA256),
            rsa,
            ec,
        }
    })
}

/// What `/authorize` recorded for a code.
struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    /// The provider session this login started.
    sid: String,
    used: bool,
}

/// The tokens of one successful token endpoint response.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
}

/// What the token endpoint recorded for a refresh token.
struct RefreshGrant {
    sid: String,
    scope: String,
    /// Spent by a refresh (rotation): presenting it again is `invalid_grant`.
    used: bool,
}

struct State {
    client_id: String,
    client_secret: String,
    redirect_uris: Vec<String>,
    claims: Map<String, Value>,
    misbehaviours: HashSet<Misbehaviour>,
    rotated: bool,
    codes: HashMap<String, Grant>,
    access_tokens: HashSet<String>,
    /// Token responses in the order they were issued.
    issued: Vec<Issued>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    /// `sid` of each ID token issued at code exchange, in order.
    sids: Vec<String>,
    access_token_ttl: u64,
    refresh_rejected: bool,
    token_delay: std::time::Duration,
    requests: Vec<Recorded>,
}

struct Inner {
    issuer: String,
    keys: Keys,
    state: Mutex<State>,
}

/// A running test provider; stops when dropped.
pub struct TestIdp {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Claims that describe the authentication rather than the user: not served at userinfo.
const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "azp",
    "at_hash",
    "c_hash",
    "sid",
    "jti",
];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl TestIdp {
    /// Starts with [`TestIdpConfig::default`].
    pub async fn start() -> TestIdp {
        Self::start_with(TestIdpConfig::default()).await
    }

    pub async fn start_with(config: TestIdpConfig) -> TestIdp {
        let keys = tokio::task::spawn_blocking(Keys::generate).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            issuer: format!("http://{addr}"),
            keys,
            state: Mutex::new(State {
                client_id: config.client_id,
                client_secret: config.client_secret,
                redirect_uris: config.redirect_uris,
                claims: config.claims,
                misbehaviours: HashSet::new(),
                rotated: false,
                codes: HashMap::new(),
                access_tokens: HashSet::new(),
                issued: Vec::new(),
                refresh_tokens: HashMap::new(),
                sids: Vec::new(),
                access_token_ttl: 300,
                refresh_rejected: false,
                token_delay: std::time::Duration::ZERO,
                requests: Vec::new(),
            }),
        });
        let inner2 = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let inner = inner2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let inner = inner.clone();
                        async move { Ok::<_, std::convert::Infallible>(inner.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestIdp { addr, inner, task }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The issuer followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.issuer)
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// A JWKS holding the attacker keys, served by this IdP for `jku` tests.
    pub fn attacker_jwks_url(&self) -> String {
        self.url("/attacker/jwks")
    }

    /// A PEM certificate of the attacker RSA key, served by this IdP for `x5u` tests.
    pub fn attacker_x5u_url(&self) -> String {
        self.url("/attacker/cert.pem")
    }

    pub fn client_id(&self) -> String {
        self.state().client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.state().client_secret.clone()
    }

    /// SPKI PEM of RSA key "rsa-1".
    pub fn rsa_public_key_pem(&self) -> String {
        self.inner.keys.rsa1.spki_pem.clone()
    }

    /// Accepts one more exact redirect URI at `/authorize`.
    pub fn allow_redirect_uri(&self, uri: impl Into<String>) {
        self.state().redirect_uris.push(uri.into());
    }

    pub fn set_redirect_uris(&self, uris: Vec<String>) {
        self.state().redirect_uris = uris;
    }

    /// Adds or replaces a user claim (a `null` value removes it); see [`TestIdpConfig::claims`].
    pub fn set_claim(&self, name: &str, value: Value) {
        self.state().claims.insert(name.into(), value);
    }

    /// Switches `m` on. `UnknownKid` first generates key "rsa-2" (about a second).
    pub fn set(&self, m: Misbehaviour) {
        if m == Misbehaviour::UnknownKid {
            self.inner.keys.rsa2();
        }
        self.state().misbehaviours.insert(m);
    }

    pub fn unset(&self, m: Misbehaviour) {
        self.state().misbehaviours.remove(&m);
    }

    /// Back to well-behaved (key rotation stays).
    pub fn clear(&self) {
        self.state().misbehaviours.clear();
    }

    pub fn is_set(&self, m: Misbehaviour) -> bool {
        self.state().misbehaviours.contains(&m)
    }

    /// Publishes RSA key "rsa-2" (keeping "rsa-1") and makes it the RS256 signer.
    pub fn rotate_keys(&self) {
        self.inner.keys.rsa2();
        self.state().rotated = true;
    }

    /// The JWKS as `/jwks` serves it now.
    pub fn jwks(&self) -> Value {
        self.inner.jwks()
    }

    /// How many requests reached `path` (without query), e.g. `"/jwks"`, `"/token"`.
    pub fn hits(&self, path: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Forgets the recorded requests (hit counters restart at zero).
    pub fn reset_requests(&self) {
        self.state().requests.clear();
    }

    /// `expires_in` of access tokens issued from now on (300 s until set).
    pub fn access_token_ttl(&self, secs: u64) {
        self.state().access_token_ttl = secs;
    }

    /// With `true`, every `refresh_token` grant is answered `400 invalid_grant`, as a
    /// provider does once the grant was revoked; `false` accepts refresh tokens again.
    pub fn reject_refresh(&self, on: bool) {
        self.state().refresh_rejected = on;
    }

    /// The token endpoint waits this long before answering (zero until set).
    pub fn token_delay(&self, delay: std::time::Duration) {
        self.state().token_delay = delay;
    }

    /// Token endpoint calls with this `grant_type` (`"authorization_code"`,
    /// `"refresh_token"`), answered or refused.
    pub fn token_calls(&self, grant_type: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.path == "/token" && r.param("grant_type") == Some(grant_type))
            .count()
    }

    /// Access tokens issued so far, oldest first (each one distinct).
    pub fn access_tokens(&self) -> Vec<String> {
        self.issued().into_iter().map(|i| i.access_token).collect()
    }

    /// Every successful token response so far (code exchanges and refreshes), oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.state().issued.clone()
    }

    /// The `sid` of each ID token issued at a code exchange, oldest first (absent when
    /// the `sid` claim was removed).
    pub fn sids(&self) -> Vec<String> {
        self.state().sids.clone()
    }

    /// The claims of a well-formed back-channel logout token about `sub` and/or `sid`,
    /// issued now: `iss`, `aud` (the client id), `iat`, `exp` (+120 s), a fresh `jti` and
    /// the back-channel logout event. Sign with [`TestIdp::mint`] (typ `logout+jwt`).
    pub fn logout_token_claims(&self, sub: Option<&str>, sid: Option<&str>) -> Value {
        let now = now();
        let mut c = json!({
            "iss": self.inner.issuer,
            "aud": self.client_id(),
            "iat": now,
            "exp": now + 120,
            "jti": random_token(),
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        if let Some(sub) = sub {
            c["sub"] = json!(sub);
        }
        if let Some(sid) = sid {
            c["sid"] = json!(sid);
        }
        c
    }

    /// The claims of a well-behaved ID token for `nonce`, issued now: `iss`, `sub`
    /// ("user-123"), `aud` (the client id), `exp` (+300 s), `iat`, `auth_time` (-5 s),
    /// `nonce`, `email`, `email_verified`, `name`, `groups`, `acr`, `amr`, then the
    /// configured claims. A starting point for [`TestIdp::mint`].
    pub fn id_token_claims(&self, nonce: Option<&str>) -> Value {
        let st = self.state();
        Value::Object(self.inner.base_claims(&st, nonce))
    }

    /// Signs `claims` as given (nothing added) under `header`. Active misbehaviours do not
    /// apply.
    pub fn mint(&self, claims: Value, header: TokenHeader) -> String {
        let (secret, rotated) = {
            let st = self.state();
            (st.client_secret.clone(), st.rotated)
        };
        self.inner.sign(&claims, &header, &secret, rotated)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }
}

type Resp = hyper::Response<Full<Bytes>>;

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_response(status: u16, body: &Value) -> Resp {
    response(status, "application/json", body.to_string())
}

fn oauth_error(status: u16, error: &str) -> Resp {
    json_response(status, &json!({ "error": error }))
}

fn redirect(location: &str) -> Resp {
    hyper::Response::builder()
        .status(302)
        .header("location", location)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> Resp {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return response(400, "text/plain", "unreadable body"),
        };
        let raw = if method == "POST" {
            body.to_vec()
        } else {
            query.into_bytes()
        };
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(&raw).into_owned().collect();
        let rec = Recorded {
            method,
            path,
            params,
            authorization,
        };
        let delay = {
            let mut st = self.state();
            st.requests.push(rec.clone());
            st.token_delay
        };
        if rec.path == "/token" && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match (rec.method.as_str(), rec.path.as_str()) {
            ("GET", "/.well-known/openid-configuration") => self.discovery(),
            ("GET", "/jwks") => json_response(200, &self.jwks()),
            ("GET", "/authorize") => self.authorize(&rec),
            ("POST", "/token") => self.token(&rec),
            ("GET" | "POST", "/userinfo") => self.userinfo(&rec),
            ("GET", "/logout") => match rec.param("post_logout_redirect_uri") {
                Some(uri) => {
                    let Ok(mut url) = url::Url::parse(uri) else {
                        return response(400, "text/plain", "bad post_logout_redirect_uri");
                    };
                    if let Some(state) = rec.param("state") {
                        url.query_pairs_mut().append_pair("state", state);
                    }
                    redirect(url.as_str())
                }
                None => response(200, "text/plain", "signed out"),
            },
            ("GET", "/attacker/jwks") => {
                let set = JwkSet {
                    keys: vec![attacker().rsa.jwk.clone(), attacker().ec.jwk.clone()],
                };
                json_response(200, &serde_json::to_value(set).unwrap())
            }
            ("GET", "/attacker/cert.pem") => {
                let b64 = STANDARD.encode(&attacker().rsa_cert);
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect();
                let pem = format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                );
                response(200, "application/pem-certificate-chain", pem)
            }
            _ => response(404, "text/plain", "not found"),
        }
    }

    fn discovery(&self) -> Resp {
        let mis = self
            .state()
            .misbehaviours
            .contains(&Misbehaviour::DiscoveryIssuerMismatch);
        let issuer = if mis {
            // Same port, another host: what a proxy or a mix-up attacker might serve.
            self.issuer.replace("127.0.0.1", "idp.attacker.example")
        } else {
            self.issuer.clone()
        };
        let base = &self.issuer;
        json_response(
            200,
            &json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "userinfo_endpoint": format!("{base}/userinfo"),
                "jwks_uri": format!("{base}/jwks"),
                "end_session_endpoint": format!("{base}/logout"),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
                "claims_supported": [
                    "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp",
                    "email", "email_verified", "name", "groups", "acr", "amr", "sid"
                ],
                "authorization_response_iss_parameter_supported": true,
                "backchannel_logout_supported": true,
                "backchannel_logout_session_supported": true,
            }),
        )
    }

    fn jwks(&self) -> Value {
        let mut keys = vec![self.keys.rsa1.jwk.clone()];
        if self.state().rotated {
            keys.push(self.keys.rsa2().jwk.clone());
        }
        keys.push(self.keys.ec1.jwk.clone());
        serde_json::to_value(JwkSet { keys }).unwrap()
    }

    fn authorize(&self, rec: &Recorded) -> Resp {
        let mut st = self.state();
        let client_id = rec.param("client_id").unwrap_or_default();
        if client_id != st.client_id {
            return response(400, "text/plain", "unknown client_id");
        }
        let redirect_uri = rec.param("redirect_uri").unwrap_or_default();
        if !st.redirect_uris.iter().any(|u| u == redirect_uri) {
            return response(400, "text/plain", "unregistered redirect_uri");
        }
        let mut url = url::Url::parse(redirect_uri).unwrap();
        let state = rec.param("state");
        let iss = if st.misbehaviours.contains(&Misbehaviour::AuthzIssMissing) {
            None
        } else if st.misbehaviours.contains(&Misbehaviour::AuthzIssMismatch) {
            Some(OTHER_ISSUER)
        } else {
            Some(self.issuer.as_str())
        };
        let scope = rec.param("scope").unwrap_or_default();
        let challenge = rec.param("code_challenge");
        let method = rec.param("code_challenge_method");
        let error = if st.misbehaviours.contains(&Misbehaviour::AccessDenied) {
            Some("access_denied")
        } else if rec.param("response_type") != Some("code") {
            Some("unsupported_response_type")
        } else if !scope.split(' ').any(|s| s == "openid") {
            Some("invalid_scope")
        } else if challenge.is_none_or(str::is_empty) || method != Some("S256") {
            Some("invalid_request")
        } else {
            None
        };
        {
            let mut q = url.query_pairs_mut();
            match error {
                Some(e) => {
                    q.append_pair("error", e);
                }
                None => {
                    let code = random_token();
                    st.codes.insert(
                        code.clone(),
                        Grant {
                            client_id: client_id.into(),
                            redirect_uri: redirect_uri.into(),
                            nonce: rec.param("nonce").map(str::to_string),
                            code_challenge: challenge.unwrap_or_default().into(),
                            scope: scope.into(),
                            sid: random_token(),
                            used: false,
                        },
                    );
                    q.append_pair("code", &code);
                }
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            if let Some(i) = iss {
                q.append_pair("iss", i);
            }
        }
        redirect(url.as_str())
    }

    /// Checks client authentication; `Err` is the OAuth error code.
    fn client_auth(&self, st: &State, rec: &Recorded) -> Result<(), &'static str> {
        const INVALID: &str = "invalid_client";
        let basic = rec
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "));
        let post = rec.param("client_secret");
        let (id, secret) = match (basic, post) {
            // RFC 6749 section 2.3: one method per request.
            (Some(_), Some(_)) => return Err("invalid_request"),
            (Some(b64), None) => {
                let raw = STANDARD.decode(b64.trim()).map_err(|_| INVALID)?;
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let (id, secret) = raw.split_once(':').ok_or(INVALID)?;
                let id = form_decode(id);
                if rec.param("client_id").is_some_and(|c| c != id) {
                    return Err(INVALID);
                }
                (id, form_decode(secret))
            }
            (None, Some(secret)) => (
                rec.param("client_id").unwrap_or_default().to_string(),
                secret.to_string(),
            ),
            (None, None) => return Err(INVALID),
        };
        if id == st.client_id && secret == st.client_secret {
            Ok(())
        } else {
            Err(INVALID)
        }
    }

    fn token(&self, rec: &Recorded) -> Resp {
        let mut st = self.state();
        match self.client_auth(&st, rec) {
            Ok(()) => {}
            Err("invalid_client") => {
                let mut r = oauth_error(401, "invalid_client");
                r.headers_mut().insert(
                    "www-authenticate",
                    "Basic realm=\"test-idp\"".parse().unwrap(),
                );
                return r;
            }
            Err(e) => return oauth_error(400, e),
        }
        match rec.param("grant_type") {
            Some("authorization_code") => {}
            Some("refresh_token") => return self.refresh(&mut st, rec),
            _ => return oauth_error(400, "unsupported_grant_type"),
        }
        let client_id = st.client_id.clone();
        let Some(grant) = st.codes.get_mut(rec.param("code").unwrap_or_default()) else {
            return oauth_error(400, "invalid_grant");
        };
        // A code is spent by any attempt to redeem it.
        let reused = std::mem::replace(&mut grant.used, true);
        let verifier = rec.param("code_verifier").unwrap_or_default();
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if reused
            || grant.client_id != client_id
            || rec.param("redirect_uri") != Some(grant.redirect_uri.as_str())
            || verifier.is_empty()
            || computed != grant.code_challenge
        {
            return oauth_error(400, "invalid_grant");
        }
        let nonce = grant.nonce.clone();
        let scope = grant.scope.clone();
        let sid = grant.sid.clone();
        let (body, claims) = self.issue(&mut st, nonce.as_deref(), &sid, &scope);
        if let Some(sid) = claims["sid"].as_str() {
            st.sids.push(sid.to_string());
        }
        json_response(200, &body)
    }

    /// `grant_type=refresh_token` (client already authenticated): a refresh token issued
    /// here, not yet spent, while refreshes are not rejected. Rotates it.
    fn refresh(&self, st: &mut State, rec: &Recorded) -> Resp {
        if st.refresh_rejected {
            return oauth_error(400, "invalid_grant");
        }
        let presented = rec.param("refresh_token").unwrap_or_default();
        let Some(grant) = st.refresh_tokens.get_mut(presented) else {
            return oauth_error(400, "invalid_grant");
        };
        if std::mem::replace(&mut grant.used, true) {
            return oauth_error(400, "invalid_grant");
        }
        let (sid, scope) = (grant.sid.clone(), grant.scope.clone());
        // OpenID Connect Core 12.2: the new ID token has no nonce.
        let (body, _) = self.issue(st, None, &sid, &scope);
        json_response(200, &body)
    }

    /// A token response: a new access token, refresh token and ID token (with `sid`
    /// unless a `sid` claim is configured). Returns the body and the ID token's claims.
    fn issue(&self, st: &mut State, nonce: Option<&str>, sid: &str, scope: &str) -> (Value, Value) {
        let access_token = random_token();
        st.access_tokens.insert(access_token.clone());
        let refresh_token = random_token();
        st.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshGrant {
                sid: sid.to_string(),
                scope: scope.to_string(),
                used: false,
            },
        );
        let mut claims = self.id_token_claims_misbehaving(st, nonce);
        if !st.claims.contains_key("sid") {
            claims["sid"] = json!(sid);
        }
        let id_token = self.sign_id_token(st, &claims);
        st.issued.push(Issued {
            access_token: access_token.clone(),
            refresh_token: refresh_token.clone(),
            id_token: id_token.clone(),
        });
        let body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": st.access_token_ttl,
            "scope": scope,
            "id_token": id_token,
            "refresh_token": refresh_token,
        });
        (body, claims)
    }

    fn userinfo(&self, rec: &Recorded) -> Resp {
        let st = self.state();
        let token = rec
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !st.access_tokens.contains(token) {
            let mut r = oauth_error(401, "invalid_token");
            r.headers_mut().insert(
                "www-authenticate",
                "Bearer error=\"invalid_token\"".parse().unwrap(),
            );
            return r;
        }
        let mut claims = self.base_claims(&st, None);
        claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
        if st
            .misbehaviours
            .contains(&Misbehaviour::UserinfoSubMismatch)
        {
            claims.insert("sub".into(), json!(OTHER_SUB));
        }
        json_response(200, &Value::Object(claims))
    }

    fn base_claims(&self, st: &State, nonce: Option<&str>) -> Map<String, Value> {
        let now = now();
        let mut c = json!({
            "iss": self.issuer,
            "sub": "user-123",
            "aud": st.client_id,
            "exp": now + 300,
            "iat": now,
            "auth_time": now - 5,
            "email": "alice@example.com",
            "email_verified": true,
            "name": "Alice Example",
            "groups": ["staff", "admins"],
            "acr": "urn:portcullis:loa:1",
            "amr": ["pwd"],
        });
        let c = c.as_object_mut().unwrap();
        if let Some(n) = nonce {
            c.insert("nonce".into(), json!(n));
        }
        for (k, v) in &st.claims {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
        std::mem::take(c)
    }

    fn id_token_claims_misbehaving(&self, st: &State, nonce: Option<&str>) -> Value {
        use Misbehaviour as M;
        let mut c = self.base_claims(st, nonce);
        let on = |m| st.misbehaviours.contains(&m);
        let now = now();
        if on(M::WrongIss) {
            c.insert("iss".into(), json!(OTHER_ISSUER));
        }
        if on(M::MissingIss) {
            c.remove("iss");
        }
        if on(M::WrongAud) {
            c.insert("aud".into(), json!(OTHER_CLIENT));
        }
        if on(M::MultipleAudNoAzp) || on(M::MultipleAudWithAzp) {
            c.insert("aud".into(), json!([st.client_id, OTHER_CLIENT]));
            c.remove("azp");
        }
        if on(M::MultipleAudWithAzp) {
            c.insert("azp".into(), json!(st.client_id));
        }
        if on(M::MissingNonce) {
            c.remove("nonce");
        }
        if on(M::WrongNonce) {
            c.insert("nonce".into(), json!(format!("not-{}", random_token())));
        }
        if on(M::Expired) {
            c.insert("exp".into(), json!(now - 600));
            c.insert("iat".into(), json!(now - 900));
            c.insert("auth_time".into(), json!(now - 905));
        }
        if on(M::IatInFuture) {
            c.insert("iat".into(), json!(now + 3600));
            c.insert("exp".into(), json!(now + 3900));
        }
        Value::Object(c)
    }

    fn sign_id_token(&self, st: &State, claims: &Value) -> String {
        use Misbehaviour as M;
        let on = |m| st.misbehaviours.contains(&m);
        let signer = if st.rotated { "rsa-2" } else { "rsa-1" };
        let alg = if on(M::AlgNone) {
            MintAlg::None
        } else if on(M::Hs256WithClientSecret) {
            MintAlg::Hs256ClientSecret
        } else if on(M::Hs256WithRsaPublicKey) {
            MintAlg::Hs256RsaPublicKeyPem
        } else if on(M::Hs256WithRsaPublicKeyDer) {
            MintAlg::Hs256RsaPublicKeyDer
        } else if on(M::EcSigned) {
            MintAlg::Es256
        } else {
            MintAlg::Rs256
        };
        let kid = if on(M::MissingKid) {
            None
        } else if alg == MintAlg::Es256 {
            Some("ec-1")
        } else if on(M::UnknownKid) {
            Some("rsa-2")
        } else {
            Some(signer)
        };
        let header = TokenHeader::new(alg, kid);
        let token = self.sign(claims, &header, &st.client_secret, st.rotated);
        if on(M::BadSignature) && header.alg != MintAlg::None {
            let (message, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let mid = sig.len() / 2;
            sig[mid] ^= 0x01;
            format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
        } else {
            token
        }
    }

    fn rsa_by_kid(&self, kid: Option<&str>, rotated: bool) -> &RsaKey {
        match kid {
            Some("rsa-1") => &self.keys.rsa1,
            Some("rsa-2") => self.keys.rsa2(),
            _ if rotated => self.keys.rsa2(),
            _ => &self.keys.rsa1,
        }
    }

    fn sign(&self, claims: &Value, th: &TokenHeader, client_secret: &str, rotated: bool) -> String {
        let by_attacker = th.attacker_key || th.attacker_jwk || th.attacker_x5c;
        let rsa = self.rsa_by_kid(th.kid.as_deref(), rotated);
        let hmac = |secret: &[u8]| Some(EncodingKey::from_secret(secret).unwrap());
        // `None` for alg "none"; its header is built as RS256 and `alg` replaced below.
        let (alg, key) = match &th.alg {
            MintAlg::Rs256 if by_attacker => (Algorithm::RS256, Some(attacker().rsa.enc.clone())),
            MintAlg::Rs256 => (Algorithm::RS256, Some(rsa.enc.clone())),
            MintAlg::Es256 if by_attacker => (Algorithm::ES256, Some(attacker().ec.enc.clone())),
            MintAlg::Es256 => (Algorithm::ES256, Some(self.keys.ec1.enc.clone())),
            MintAlg::Hs256ClientSecret => (Algorithm::HS256, hmac(client_secret.as_bytes())),
            MintAlg::Hs256RsaPublicKeyPem => (Algorithm::HS256, hmac(rsa.spki_pem.as_bytes())),
            MintAlg::Hs256RsaPublicKeyDer => (Algorithm::HS256, hmac(&rsa.spki_der)),
            MintAlg::Hs256(secret) => (Algorithm::HS256, hmac(secret)),
            MintAlg::None => (Algorithm::RS256, None),
        };
        let ec_family = th.alg == MintAlg::Es256;
        let mut header = Header::new(alg);
        header.typ = th.typ.clone();
        header.kid = th.kid.clone();
        header.jku = th.jku.clone();
        header.x5u = th.x5u.clone();
        if th.attacker_jwk {
            let jwk = if ec_family {
                &attacker().ec.jwk
            } else {
                &attacker().rsa.jwk
            };
            header.jwk = Some(jwk.clone());
        }
        if th.attacker_x5c {
            let cert = if ec_family {
                &attacker().ec_cert
            } else {
                &attacker().rsa_cert
            };
            header.x5c = Some(vec![STANDARD.encode(cert)]);
        }
        match key {
            Some(key) => jsonwebtoken::encode(&header, claims, &key).unwrap(),
            None => {
                // jsonwebtoken cannot emit alg "none": serialise its header and swap `alg`.
                let mut h = serde_json::to_value(&header).unwrap();
                h["alg"] = json!("none");
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(h.to_string()),
                    URL_SAFE_NO_PAD.encode(claims.to_string())
                )
            }
        }
    }
}
