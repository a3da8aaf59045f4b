//! The configuration exactly as written in YAML: serde structs that mirror `gateway.yaml`
//! and `policies/*.yaml` and reject unknown keys. Nothing here is validated yet; see
//! `config::build` for the checks and the compiled runtime form.

use super::secret::SecretRef;
use serde::de::IgnoredAny;
use serde::Deserialize;

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
    /// Reserved for later features; present means "not available yet" (see build).
    #[serde(default)]
    pub require: Option<IgnoredAny>,
    #[serde(default)]
    pub step_up: Option<IgnoredAny>,
    #[serde(default)]
    pub deny_when_risk_at_least: Option<IgnoredAny>,
    #[serde(default)]
    pub rate_limits: Option<IgnoredAny>,
    #[serde(default)]
    pub headers: Option<IgnoredAny>,
    #[serde(default)]
    pub journey: Option<IgnoredAny>,
    #[serde(default)]
    pub bearer: Option<IgnoredAny>,
    #[serde(default)]
    pub providers: Option<IgnoredAny>,
    #[serde(default)]
    pub population: Option<IgnoredAny>,
    #[serde(default)]
    pub api: Option<IgnoredAny>,
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
    /// Reserved: browser login through an OpenID provider.
    Login,
    /// Reserved: JWT bearer access tokens.
    Bearer,
    /// Reserved: either of the above.
    LoginOrBearer,
}
