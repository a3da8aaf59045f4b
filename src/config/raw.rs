//! The configuration exactly as written in YAML: serde structs that mirror `gateway.yaml`
//! and `policies/*.yaml` and reject unknown keys. Nothing here is validated yet; see
//! `config::build` for the checks and the compiled runtime form.

use super::secret::SecretRef;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: String,
    pub key: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    #[serde(default)]
    pub token: Option<SecretRef>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub read_timeout: Option<String>,
    #[serde(default)]
    pub write_timeout: Option<String>,
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent in SNI and checked against the certificate.
    #[serde(default)]
    pub sni: Option<String>,
    /// Certificate verification; on unless explicitly turned off.
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM file of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    /// Turn active health checking off (targets are then always considered healthy).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A policy file: `policies/*.yaml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // decoded only to check the file's shape
pub struct RawPolicyFile {
    /// Each route is decoded on its own so that one bad route does not hide the others.
    pub routes: Vec<IgnoredAny>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    #[serde(default)]
    pub upstream: Option<String>,
    pub auth: RawAuth,
    #[serde(default)]
    pub require: Option<RawRequire>,
    /// Identity headers: header name → template such as `"{email}"`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Send a signed identity assertion header.
    #[serde(default)]
    pub assertion: Option<bool>,
    #[serde(default)]
    pub bearer: Option<RawBearer>,
    /// Providers whose sessions satisfy the route; the first is where login goes.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// An API route: unauthenticated requests get 401, never a redirect to login.
    #[serde(default)]
    pub api: Option<bool>,
    /// Reserved for later features; present means "not available yet" (see build).
    #[serde(default)]
    pub step_up: Option<RawStepUp>,
    #[serde(default)]
    pub deny_when_risk_at_least: Option<i32>,
    #[serde(default)]
    pub sensitivity: Option<i32>,
    #[serde(default)]
    pub risk_mode: Option<RawRiskMode>,
    #[serde(default)]
    pub rate_limits: Option<Vec<String>>,
    #[serde(default)]
    pub journey: Option<RawJourney>,
    #[serde(default)]
    pub population: Option<OneOrMany>,
    #[serde(default)]
    pub forward_access_token: Option<bool>,
}

/// `require:` on a route.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    #[serde(default)]
    pub groups_any: Vec<String>,
    #[serde(default)]
    pub groups_all: Vec<String>,
    /// Claim name → the value it must have (a string, number or boolean).
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimValue>,
    #[serde(default)]
    pub email_verified: Option<bool>,
    /// The email address must be in one of these domains.
    #[serde(default)]
    pub email_domain: Option<OneOrMany>,
    /// Minimum `acr` level, by name from the provider's `acr_levels`.
    #[serde(default)]
    pub acr: Option<String>,
}

/// A claim value to compare with.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum ClaimValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// `bearer:` on a route.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawBearer {
    /// Provider ids whose access tokens are accepted.
    pub issuers: Vec<String>,
    /// The `aud` the token must carry.
    pub audience: String,
    /// Require the JWT access-token type `at+jwt` (RFC 9068).
    #[serde(default)]
    pub require_at_jwt: bool,
}

/// `session:` in gateway.yaml.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    #[serde(default)]
    pub store: Option<RawStore>,
    #[serde(default)]
    pub cookie_name: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub absolute_timeout: Option<String>,
    /// How long a started login may take before its state expires.
    #[serde(default)]
    pub login_timeout: Option<String>,
    #[serde(default)]
    pub encryption_keys: Option<Vec<SecretRef>>,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawStore {
    Memory,
    Redis {
        url: StringOrSecret,
        #[serde(default)]
        key_prefix: Option<String>,
        #[serde(default)]
        connect_timeout: Option<String>,
        #[serde(default)]
        response_timeout: Option<String>,
        /// PEM file of the CA for `rediss://` (default: the system's trust store).
        #[serde(default)]
        ca: Option<String>,
    },
}

/// A value that may be written inline or, when it holds a password, by reference.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StringOrSecret {
    Plain(String),
    Secret(SecretRef),
}

/// One entry of `providers:`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub id: String,
    pub issuer: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Extra authorization request parameters (`prompt`, `ui_locales`, ...).
    #[serde(default)]
    pub auth_params: BTreeMap<String, String>,
    /// Claim names as Portcullis uses them → the provider's claim names.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Named assurance levels, lowest first: `{ name: acr-value }`. Decoded from the
    /// node so that their order is kept.
    #[serde(default)]
    #[allow(dead_code)]
    pub acr_levels: Option<IgnoredAny>,
    /// Fetch UserInfo after login and merge its claims.
    #[serde(default)]
    pub userinfo: bool,
    /// Signing algorithms accepted from this provider (default: what it advertises,
    /// asymmetric only).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Reserved for home-realm discovery.
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawPopulation {
    pub providers: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimValue>,
    #[serde(default)]
    pub acr: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub absolute_timeout: Option<String>,
    #[serde(default)]
    pub max_sessions: Option<u32>,
    #[serde(default)]
    pub refresh_tokens: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogout {
    #[serde(default)]
    pub redirect: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
}

/// `assertion:` in gateway.yaml: the key identity assertions are signed with.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    /// PKCS#8 PEM of a P-256 key; without it a key is generated at start.
    #[serde(default)]
    pub signing_key: Option<SecretRef>,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// One host or a list; `*.example.com` matches any subdomain (not the apex).
    #[serde(default)]
    pub host: Option<OneOrMany>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAuth {
    Public,
    Deny,
    /// Browser login through an OpenID provider.
    Login,
    /// JWT bearer access tokens.
    Bearer,
    /// A bearer token when one is sent, else a browser session.
    LoginOrBearer,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub key: OneOrMany,
    pub rate: String,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub store: Option<RawLimitStore>,
    #[serde(default)]
    pub on_store_error: Option<RawOnStoreError>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLimitStore {
    Local,
    Shared,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawOnStoreError {
    Local,
    Deny,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    #[serde(default)]
    pub rate_limits: Vec<String>,
    #[serde(default)]
    pub regulation: Option<RawRegulation>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRegulation {
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub max_failures: Option<u32>,
    #[serde(default)]
    pub max_failures_per_ip: Option<u32>,
    #[serde(default)]
    pub backoff_after: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
    #[serde(default)]
    pub ban: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default)]
    pub drain: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub access_log: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawStepUp {
    pub acr: String,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub prompt_login: bool,
    #[serde(default)]
    pub elevation: Option<String>,
    #[serde(default)]
    pub when_risk_at_least: Option<i32>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawRiskMode {
    Enforce,
    Shadow,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    #[serde(default)]
    pub mode: Option<RawRiskMode>,
    #[serde(default)]
    pub networks: RawRiskNetworks,
    #[serde(default)]
    pub signals: RawSignals,
    /// A MaxMind City or Country database (path relative to `gateway.yaml`).
    #[serde(default)]
    pub geoip: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRiskNetworks {
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSignals {
    #[serde(default)]
    pub ip_changed: Option<i32>,
    #[serde(default)]
    pub user_agent_changed: Option<i32>,
    #[serde(default)]
    pub auth_age: Option<RawAuthAge>,
    #[serde(default)]
    pub network_deny: Option<i32>,
    #[serde(default)]
    pub network_allow: Option<i32>,
    #[serde(default)]
    pub recent_failures: Option<i32>,
    #[serde(default)]
    pub new_device: Option<i32>,
    #[serde(default)]
    pub credential_stuffing: Option<RawCredentialStuffing>,
    #[serde(default)]
    pub signup_velocity: Option<RawSignupVelocity>,
    #[serde(default)]
    pub country_changed: Option<i32>,
    #[serde(default)]
    pub impossible_travel: Option<RawImpossibleTravel>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawJourney {
    pub name: String,
    pub step: RawStep,
}

/// A journey step: a name or a number.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum RawStep {
    Number(u32),
    Name(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawCredentialStuffing {
    pub weight: i32,
    #[serde(default)]
    pub accounts: Option<u32>,
    #[serde(default)]
    pub window: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawSignupVelocity {
    pub weight: i32,
    #[serde(default)]
    pub signups: Option<u32>,
    #[serde(default)]
    pub window: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawImpossibleTravel {
    pub weight: i32,
    #[serde(default)]
    pub max_speed_kmh: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawAuthAge {
    pub weight: i32,
    pub after: String,
}
