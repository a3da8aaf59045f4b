//! The identity half of the configuration: `session:`, `providers:` and `assertion:` in
//! `gateway.yaml`, and each route's `auth`, `require`, `headers`, `bearer` and
//! `providers`. Validated here, compiled by `crate::runtime`.

use super::node::{self, Node};
use super::raw::*;
use super::{Builder, PublicUrl, Secret};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Where sessions live and how the browser carries them.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub store: StoreSpec,
    /// The session cookie's full name (`__Host-` prefixed over https).
    pub cookie_name: String,
    /// The short-lived cookie binding a login in progress to the browser.
    pub login_cookie_name: String,
    /// The long-lived cookie naming the browser (the `new_device` risk signal).
    pub device_cookie_name: String,
    /// `Secure` and the `__Host-` prefix; off only for plain-http loopback development.
    pub secure_cookies: bool,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub login_timeout: Duration,
    /// Keys sealing provider tokens at rest; the first seals. Empty: a key generated
    /// at start (memory store), or no tokens kept (Redis).
    pub encryption_keys: Vec<Secret>,
}

impl SessionSpec {
    /// The gateway's own cookies: the session, the login binding and the device.
    pub fn cookie_names(&self) -> [&str; 3] {
        [
            &self.cookie_name,
            &self.login_cookie_name,
            &self.device_cookie_name,
        ]
    }
}

#[derive(Debug, Clone)]
pub enum StoreSpec {
    Memory,
    Redis {
        url: Secret,
        key_prefix: String,
        connect_timeout: Duration,
        response_timeout: Duration,
        /// CA certificates (PEM) for `rediss://`, read at load.
        ca_pem: Option<Vec<u8>>,
    },
}

impl StoreSpec {
    /// Same store, so a reload can keep the running one (and the in-memory sessions).
    pub fn same_as(&self, other: &StoreSpec) -> bool {
        match (self, other) {
            (StoreSpec::Memory, StoreSpec::Memory) => true,
            (
                StoreSpec::Redis {
                    url: a,
                    key_prefix: b,
                    connect_timeout: c,
                    response_timeout: d,
                    ca_pem: i,
                },
                StoreSpec::Redis {
                    url: e,
                    key_prefix: f,
                    connect_timeout: g,
                    response_timeout: h,
                    ca_pem: j,
                },
            ) => a.expose() == e.expose() && b == f && c == g && d == h && i == j,
            _ => false,
        }
    }
}

/// An OpenID provider as configured.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub id: String,
    /// Exactly as configured; discovery must return exactly this.
    pub issuer: String,
    /// Absent for providers used only to check bearer tokens.
    pub client: Option<ClientSpec>,
    pub scopes: Vec<String>,
    pub auth_params: Vec<(String, String)>,
    /// Portcullis claim name → provider claim name.
    pub claims: Vec<(String, String)>,
    /// Named assurance levels, lowest first: (name, acr value).
    pub acr_levels: Vec<(String, String)>,
    pub userinfo: bool,
    /// Algorithms accepted for this provider's tokens, before intersecting with what
    /// discovery advertises.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Email domains (lower case) whose users sign in here (home-realm discovery).
    pub domains: Vec<String>,
    /// The name on the sign-in chooser.
    pub display_name: String,
}

/// A named population of users: who belongs (by provider, and optionally claims) and
/// the session rules that apply to them.
#[derive(Debug, Clone)]
pub struct PopulationSpec {
    pub name: String,
    pub providers: Vec<String>,
    /// Every listed claim must equal its value (a list claim must contain it).
    pub claims: Vec<(String, ClaimValue)>,
    /// Minimum assurance at sign-in, requested with `acr_values` and checked at the
    /// callback.
    pub acr: Option<MinAcr>,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    /// Most concurrent sessions per user; the oldest is ended to make room.
    pub max_sessions: Option<u32>,
    /// Keep the provider's refresh token and keep the session alive with it (a session
    /// ends when the provider refuses to refresh).
    pub refresh_tokens: bool,
}

/// What happens around logout.
#[derive(Debug, Clone)]
pub struct LogoutSpec {
    /// Path on `public_url` the browser lands on after logout; `public_url` + this is the
    /// `post_logout_redirect_uri` to register at providers.
    pub redirect: String,
    /// Called (POST, JSON) when a session ends by logout, back-channel logout or
    /// revocation.
    pub notify: Option<url::Url>,
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub client_id: String,
    pub client_secret: Secret,
}

impl ProviderSpec {
    /// Same provider settings, so a reload can keep its discovered metadata and keys.
    pub fn same_as(&self, o: &ProviderSpec) -> bool {
        let clients = match (&self.client, &o.client) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.client_id == b.client_id && a.client_secret.expose() == b.client_secret.expose()
            }
            _ => false,
        };
        clients
            && self.id == o.id
            && self.issuer == o.issuer
            && self.scopes == o.scopes
            && self.auth_params == o.auth_params
            && self.claims == o.claims
            && self.acr_levels == o.acr_levels
            && self.userinfo == o.userinfo
            && self.algorithms == o.algorithms
            && self.domains == o.domains
            && self.display_name == o.display_name
    }
}

/// Signing of identity assertions.
#[derive(Debug, Clone)]
pub struct AssertionSpec {
    /// PKCS#8 PEM; `None`: generate a key at start.
    pub signing_key: Option<Secret>,
    pub ttl: Duration,
}

/// What a protected route demands and what it passes on.
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    /// Providers whose sessions (or tokens) satisfy the route; login goes to the first.
    pub providers: Vec<String>,
    /// Unauthenticated requests get 401 instead of a redirect.
    pub api: bool,
    pub require: Requirements,
    /// (header name, template), header names in lower case.
    pub headers: Vec<(String, String)>,
    pub assertion: bool,
    pub bearer: Option<BearerSpec>,
    /// Populations a session must belong to (empty: any).
    pub populations: Vec<String>,
    /// Send the session's access token to the upstream as `Authorization: Bearer`.
    pub forward_access_token: bool,
    /// Ask for more proof instead of refusing: sessions below the level (or whose
    /// authentication is too old) are sent back to the provider.
    pub step_up: Option<StepUpSpec>,
    /// Sensitivity, mode and the risk thresholds of `step_up` and denial.
    pub risk: super::RouteRisk,
}

/// A route's `step_up`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepUpSpec {
    /// The level required, and per provider the `acr` values that meet it.
    pub acr: MinAcr,
    /// Authentication older than this asks for a new one (`max_age` at the provider).
    pub max_age: Option<Duration>,
    /// Send `prompt=login`: the provider must ask again even if it remembers the user.
    pub prompt_login: bool,
    /// How long the higher level lasts before the session falls back to its base level.
    pub elevation: Duration,
}

#[derive(Debug, Clone)]
pub struct BearerSpec {
    pub audience: String,
    pub require_at_jwt: bool,
}

/// `require:`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    pub groups_any: Vec<String>,
    pub groups_all: Vec<String>,
    pub claims: Vec<(String, ClaimValue)>,
    pub email_verified: Option<bool>,
    /// Lower case, without `@`.
    pub email_domains: Vec<String>,
    /// The minimum level's name, and per provider the `acr` values that meet it.
    pub acr: Option<MinAcr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MinAcr {
    pub level: String,
    pub accepted: Vec<(String, Vec<String>)>,
}

pub(super) const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
pub(super) const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
pub(super) const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_ASSERTION_TTL: Duration = Duration::from_secs(60);
/// Claims every session carries under these names, whatever the provider.
pub const BUILTIN_PLACEHOLDERS: &[&str] = &[
    "user",
    "population",
    "sub",
    "iss",
    "provider",
    "acr",
    "amr",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
];
/// Algorithms Portcullis accepts at all: asymmetric only, so a public key can never be
/// used as an HMAC secret.
pub const ASYMMETRIC: &[jsonwebtoken::Algorithm] = {
    use jsonwebtoken::Algorithm::*;
    &[
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ]
};

impl Builder<'_> {
    pub(super) fn session(&mut self, base: &Path, public_url: Option<&PublicUrl>) -> SessionSpec {
        let raw: RawSession = match self.root.get("session") {
            None => RawSession::default(),
            Some(n) => self.decode(n, "session").unwrap_or_default(),
        };
        let RawSession {
            store,
            cookie_name,
            idle_timeout,
            absolute_timeout,
            login_timeout,
            encryption_keys,
        } = raw;
        let mut keys = Vec::new();
        for (i, r) in encryption_keys.unwrap_or_default().iter().enumerate() {
            let path = format!("session.encryption_keys[{i}]");
            match Secret::resolve(r, base) {
                Ok(k) => match crate::session::SealingKey::parse(k.expose()) {
                    Ok(_) => keys.push(k),
                    Err(e) => self.err(&path, e),
                },
                Err(e) => self.err(&path, e),
            }
        }
        let store = match store {
            None | Some(RawStore::Memory) => StoreSpec::Memory,
            Some(RawStore::Redis {
                url,
                key_prefix,
                connect_timeout,
                response_timeout,
                ca,
            }) => {
                let ca_pem = ca.and_then(|c| {
                    let path = base.join(&c);
                    match std::fs::read(&path) {
                        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                            Some(pem)
                        }
                        Ok(_) => {
                            self.err(
                                "session.store.ca",
                                format!("no PEM certificate in {}", path.display()),
                            );
                            None
                        }
                        Err(e) => {
                            self.err(
                                "session.store.ca",
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    }
                });
                let url = match url {
                    StringOrSecret::Plain(s) => Secret::inline("session.store.url", s),
                    StringOrSecret::Secret(r) => match Secret::resolve(&r, base) {
                        Ok(s) => s,
                        Err(e) => {
                            self.err("session.store.url", e);
                            Secret::inline("session.store.url", String::new())
                        }
                    },
                };
                let u = url.expose();
                if !(u.is_empty() || u.starts_with("redis://") || u.starts_with("rediss://")) {
                    self.err("session.store.url", "must be a redis:// or rediss:// URL");
                } else if !u.is_empty() {
                    if let Err(e) = redis::Client::open(u) {
                        self.err("session.store.url", format!("invalid Redis URL: {e}"));
                    }
                    if ca_pem.is_some() && !u.starts_with("rediss://") {
                        self.err("session.store.ca", "applies only to rediss:// URLs");
                    }
                }
                let key_prefix = key_prefix.unwrap_or_else(|| "portcullis:".into());
                if key_prefix.contains(['{', '}']) {
                    self.err(
                        "session.store.key_prefix",
                        "must not contain { or }: they would change the Redis Cluster hash slots",
                    );
                }
                StoreSpec::Redis {
                    url,
                    ca_pem,
                    key_prefix,
                    connect_timeout: self.duration(
                        &connect_timeout,
                        "session.store.connect_timeout",
                        Duration::from_secs(1),
                    ),
                    response_timeout: self.duration(
                        &response_timeout,
                        "session.store.response_timeout",
                        Duration::from_millis(500),
                    ),
                }
            }
        };
        let name = cookie_name.unwrap_or_else(|| "portcullis".into());
        if name.is_empty()
            || name.len() > 64
            || name.starts_with("__")
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.err(
                "session.cookie_name",
                format!("{name:?}: use letters, digits, '-' and '_' (the __Host- prefix is added for https)"),
            );
        }
        let secure = public_url.is_none_or(|u| u.https);
        let prefix = if secure { "__Host-" } else { "" };
        let idle = self.duration(&idle_timeout, "session.idle_timeout", DEFAULT_IDLE);
        let absolute = self.duration(
            &absolute_timeout,
            "session.absolute_timeout",
            DEFAULT_ABSOLUTE,
        );
        if idle > absolute {
            self.warn(
                "session.idle_timeout",
                "is longer than absolute_timeout, so it never applies",
            );
        }
        SessionSpec {
            store,
            cookie_name: format!("{prefix}{name}"),
            login_cookie_name: format!("{prefix}{name}-login"),
            device_cookie_name: format!("{prefix}{name}-device"),
            secure_cookies: secure,
            idle_timeout: idle,
            absolute_timeout: absolute,
            login_timeout: self.duration(
                &login_timeout,
                "session.login_timeout",
                DEFAULT_LOGIN_TIMEOUT,
            ),
            encryption_keys: keys,
        }
    }

    pub(super) fn providers(&mut self, base: &Path) -> Vec<ProviderSpec> {
        let mut out: Vec<ProviderSpec> = Vec::new();
        let Some(n) = self.root.get("providers") else {
            return out;
        };
        let node::Value::Seq(items) = &n.value else {
            self.err(
                "providers",
                "expected a list of providers, each with an `id`",
            );
            return out;
        };
        for (i, pnode) in items.iter().enumerate() {
            let path = format!("providers[{i}]");
            let Some(raw) = self.decode::<RawProvider>(pnode, &path) else {
                continue;
            };
            if let Some(spec) = self.provider(raw, pnode, &path, base) {
                if out.iter().any(|p| p.id == spec.id) {
                    self.err(
                        &format!("{path}.id"),
                        format!("provider id {:?} is used twice", spec.id),
                    );
                    continue;
                }
                for (j, d) in spec.domains.iter().enumerate() {
                    if let Some(other) = out.iter().find(|p| p.domains.contains(d)) {
                        self.err(
                            &format!("{path}.domains[{j}]"),
                            format!("{d:?} is already listed for provider {:?}: a domain leads to one provider", other.id),
                        );
                    }
                }
                out.push(spec);
            }
        }
        out
    }

    fn provider(
        &mut self,
        raw: RawProvider,
        pnode: &Node,
        path: &str,
        base: &Path,
    ) -> Option<ProviderSpec> {
        let before = self.d.errors.len();
        let RawProvider {
            id,
            issuer,
            client_id,
            client_secret,
            scopes,
            auth_params,
            claims,
            acr_levels: _,
            userinfo,
            algorithms,
            domains,
            display_name,
        } = raw;
        if !super::valid_name(&id) {
            self.err(
                &format!("{path}.id"),
                format!("{id:?}: provider ids use lower-case letters, digits, '-' and '_' (they become metric labels)"),
            );
        }
        let mut domain_list = Vec::new();
        for (i, d) in domains.iter().enumerate() {
            let lower = d.trim().trim_start_matches('@').to_ascii_lowercase();
            let valid = !lower.is_empty()
                && lower.len() <= 253
                && lower.contains('.')
                && lower.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                domain_list.push(lower);
            } else {
                self.err(
                    &format!("{path}.domains[{i}]"),
                    format!("{d:?} is not an email domain (write e.g. acme.example)"),
                );
            }
        }
        let display_name = display_name.unwrap_or_else(|| id.clone());
        if display_name.trim().is_empty()
            || display_name.chars().count() > 80
            || display_name.chars().any(char::is_control)
        {
            self.err(
                &format!("{path}.display_name"),
                format!("{display_name:?}: 1 to 80 printable characters"),
            );
        }
        match url::Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" && u.query().is_none() && u.fragment().is_none() => {}
            // Loopback traffic cannot be intercepted on the network: fine for a provider
            // on the same machine (development, sidecars).
            Ok(u)
                if u.scheme() == "http"
                    && u.host_str().is_some_and(is_loopback_host)
                    && u.query().is_none() => {}
            _ => self.err(
                &format!("{path}.issuer"),
                format!("{issuer:?}: an issuer is an https URL without query or fragment (http only on loopback)"),
            ),
        }
        let client = match (client_id, client_secret) {
            (Some(id), Some(secret)) => {
                let client_secret = Secret::resolve(&secret, base).unwrap_or_else(|e| {
                    self.err(&format!("{path}.client_secret"), e);
                    // Kept (the load fails anyway) so that routes naming this provider
                    // do not report errors of their own.
                    Secret::inline("unresolved", String::new())
                });
                Some(ClientSpec {
                    client_id: id,
                    client_secret,
                })
            }
            (Some(id), None) => {
                self.err(
                    &format!("{path}.client_secret"),
                    "missing: Portcullis is a confidential client (`client_secret: { env: NAME }`)",
                );
                Some(ClientSpec {
                    client_id: id,
                    client_secret: Secret::inline("missing", String::new()),
                })
            }
            (None, Some(_)) => {
                self.err(
                    &format!("{path}.client_id"),
                    "missing: the secret has no client id",
                );
                None
            }
            (None, None) => None,
        };
        let scopes =
            scopes.unwrap_or_else(|| ["openid", "email", "profile"].map(String::from).to_vec());
        if !scopes.iter().any(|s| s == "openid") {
            self.err(&format!("{path}.scopes"), "must include `openid`");
        }
        for k in auth_params.keys() {
            const OURS: &[&str] = &[
                "response_type",
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "nonce",
                "code_challenge",
                "code_challenge_method",
                "response_mode",
            ];
            if OURS.contains(&k.as_str()) {
                self.err(
                    &format!("{path}.auth_params.{k}"),
                    format!("`{k}` is set by Portcullis itself"),
                );
            }
        }
        for (ours, theirs) in &claims {
            if ["sub", "iss", "provider", "acr", "amr", "user", "population"]
                .contains(&ours.as_str())
            {
                self.err(
                    &format!("{path}.claims.{ours}"),
                    format!("`{ours}` always comes from the ID token itself and cannot be mapped"),
                );
            }
            if theirs.is_empty() || !valid_placeholder(ours) {
                self.err(
                    &format!("{path}.claims.{ours}"),
                    "claim names use letters, digits, '_', '-' and '.'",
                );
            }
        }
        let acr_levels = self.acr_levels(pnode, path);
        let algorithms = match algorithms {
            None => ASYMMETRIC.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, a) in list.iter().enumerate() {
                    match a.parse::<jsonwebtoken::Algorithm>() {
                        Ok(alg) if ASYMMETRIC.contains(&alg) => out.push(alg),
                        _ => self.err(
                            &format!("{path}.algorithms[{i}]"),
                            format!("{a:?}: accepted are {}", alg_names()),
                        ),
                    }
                }
                out
            }
        };
        // Returned even when invalid (the load fails anyway) so that routes naming it are
        // not reported as naming an unknown provider.
        let _ = before;
        Some(ProviderSpec {
            id,
            issuer,
            client,
            scopes,
            auth_params: auth_params.into_iter().collect(),
            claims: claims.into_iter().collect(),
            acr_levels,
            userinfo,
            algorithms,
            domains: domain_list,
            display_name,
        })
    }

    /// `acr_levels: { name: value, ... }`, order kept.
    fn acr_levels(&mut self, pnode: &Node, path: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let Some(n) = pnode.get("acr_levels") else {
            return out;
        };
        let lpath = format!("{path}.acr_levels");
        let node::Value::Map(entries) = &n.value else {
            self.err(
                &lpath,
                "expected a mapping of level name to acr value, lowest first",
            );
            return out;
        };
        for (k, v) in entries {
            match (&k.value, &v.value) {
                (node::Value::Str(name), node::Value::Str(acr)) => {
                    if out.iter().any(|(n, a)| n == name || a == acr) {
                        self.err(&format!("{lpath}.{name}"), "duplicate level name or value");
                    }
                    out.push((name.clone(), acr.clone()));
                }
                _ => self.err(&lpath, "level names and acr values are strings"),
            }
        }
        out
    }

    pub(super) fn assertion(&mut self, base: &Path) -> AssertionSpec {
        let raw: RawAssertion = match self.root.get("assertion") {
            None => RawAssertion::default(),
            Some(n) => self.decode(n, "assertion").unwrap_or_default(),
        };
        let signing_key = raw
            .signing_key
            .as_ref()
            .and_then(|r| match Secret::resolve(r, base) {
                Ok(s) => {
                    // Checked by building the signer the runtime will build.
                    let probe = AssertionSpec {
                        signing_key: Some(s.clone()),
                        ttl: DEFAULT_ASSERTION_TTL,
                    };
                    if crate::identity_headers::AssertionSigner::new(&probe).is_err() {
                        self.err(
                            "assertion.signing_key",
                            "not a PKCS#8 PEM P-256 private key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)",
                        );
                    }
                    Some(s)
                }
                Err(e) => {
                    self.err("assertion.signing_key", e);
                    None
                }
            });
        let ttl = self.duration(&raw.ttl, "assertion.ttl", DEFAULT_ASSERTION_TTL);
        AssertionSpec { signing_key, ttl }
    }
}

/// What routes are checked against: the providers, populations and session settings
/// of `gateway.yaml`.
pub(super) struct IdentityDefs<'a> {
    pub providers: &'a [ProviderSpec],
    pub populations: &'a [PopulationSpec],
    pub session: &'a SessionSpec,
    pub rate_limits: &'a [super::RateLimitSpec],
}

/// Validation of a route's identity settings, given the providers.
pub(super) struct RouteAuthInput {
    pub require: Option<RawRequire>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub assertion: Option<bool>,
    pub bearer: Option<RawBearer>,
    pub providers: Option<Vec<String>>,
    pub api: Option<bool>,
    pub population: Option<OneOrMany>,
    pub forward_access_token: Option<bool>,
    pub step_up: Option<RawStepUp>,
    pub deny_when_risk_at_least: Option<i32>,
    pub sensitivity: Option<i32>,
    pub risk_mode: Option<RawRiskMode>,
}

impl Builder<'_> {
    /// Checks a route's identity settings against its auth mode and the providers.
    pub(super) fn route_auth(
        &mut self,
        auth: super::AuthMode,
        input: RouteAuthInput,
        path: &str,
        defs: &IdentityDefs<'_>,
    ) -> RouteAuth {
        use super::AuthMode;
        let providers = defs.providers;
        let RouteAuthInput {
            require,
            headers,
            assertion,
            bearer,
            providers: route_providers,
            api,
            population,
            forward_access_token,
            step_up,
            deny_when_risk_at_least,
            sensitivity,
            risk_mode,
        } = input;
        let protected = matches!(
            auth,
            AuthMode::Login | AuthMode::Bearer | AuthMode::LoginOrBearer
        );
        if !protected {
            self.refuse_present(
                path,
                &[
                    (require.is_some(), "require"),
                    (headers.is_some(), "headers"),
                    (assertion.is_some(), "assertion"),
                    (bearer.is_some(), "bearer"),
                    (route_providers.is_some(), "providers"),
                    (api.is_some(), "api"),
                    (population.is_some(), "population"),
                    (forward_access_token.is_some(), "forward_access_token"),
                    (step_up.is_some(), "step_up"),
                    (deny_when_risk_at_least.is_some(), "deny_when_risk_at_least"),
                    (sensitivity.is_some(), "sensitivity"),
                    (risk_mode.is_some(), "risk_mode"),
                ],
                "applies only to routes with auth login, bearer or login_or_bearer",
            );
            return RouteAuth::default();
        }
        let login_ids: Vec<&str> = providers
            .iter()
            .filter(|p| p.client.is_some())
            .map(|p| p.id.as_str())
            .collect();
        let mut chosen: Vec<String> = Vec::new();
        if matches!(auth, AuthMode::Login | AuthMode::LoginOrBearer) {
            match &route_providers {
                Some(list) => {
                    if list.is_empty() {
                        self.err(&format!("{path}.providers"), "list at least one provider");
                    }
                    for (i, p) in list.iter().enumerate() {
                        if !login_ids.contains(&p.as_str()) {
                            self.err(
                                &format!("{path}.providers[{i}]"),
                                format!(
                                    "{p:?} is not a provider with a client_id (login providers: {})",
                                    none_or_list(&login_ids)
                                ),
                            );
                        }
                        chosen.push(p.clone());
                    }
                }
                None if login_ids.is_empty() => self.err(
                    &format!("{path}.auth"),
                    "login needs a provider with client_id and client_secret under `providers:` in gateway.yaml",
                ),
                None => chosen = login_ids.iter().map(|s| s.to_string()).collect(),
            }
        } else if route_providers.is_some() {
            self.err(
                &format!("{path}.providers"),
                "bearer routes name their token issuers under `bearer.issuers`",
            );
        }
        let bearer = match (auth, bearer) {
            (AuthMode::Bearer | AuthMode::LoginOrBearer, None) => {
                self.err(
                    &format!("{path}.bearer"),
                    "missing: `bearer: { issuers: [provider-id], audience: your-api }`",
                );
                None
            }
            (AuthMode::Bearer | AuthMode::LoginOrBearer, Some(b)) => {
                if b.issuers.is_empty() {
                    self.err(
                        &format!("{path}.bearer.issuers"),
                        "list at least one provider id",
                    );
                }
                for (i, id) in b.issuers.iter().enumerate() {
                    if !providers.iter().any(|p| &p.id == id) {
                        self.err(
                            &format!("{path}.bearer.issuers[{i}]"),
                            format!(
                                "unknown provider {id:?} (defined: {})",
                                none_or_list(
                                    &providers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>()
                                )
                            ),
                        );
                    }
                    if !chosen.contains(id) {
                        chosen.push(id.clone());
                    }
                }
                if b.audience.is_empty() {
                    self.err(&format!("{path}.bearer.audience"), "must not be empty");
                }
                Some(BearerSpec {
                    audience: b.audience,
                    require_at_jwt: b.require_at_jwt,
                })
            }
            (_, Some(_)) => {
                self.err(
                    &format!("{path}.bearer"),
                    "applies only to routes with auth bearer or login_or_bearer",
                );
                None
            }
            (_, None) => None,
        };
        let used: Vec<&ProviderSpec> = providers
            .iter()
            .filter(|p| chosen.contains(&p.id))
            .collect();
        let require = self.requirements(
            require.unwrap_or_default(),
            &format!("{path}.require"),
            &used,
        );
        let headers = self.header_templates(
            headers.unwrap_or_default(),
            &format!("{path}.headers"),
            &used,
        );
        let mut populations = Vec::new();
        let scalar = matches!(population, Some(OneOrMany::One(_)));
        for (i, name) in population
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let p = if scalar {
                format!("{path}.population")
            } else {
                format!("{path}.population[{i}]")
            };
            match defs.populations.iter().find(|p| p.name == name) {
                None => self.err(
                    &p,
                    format!(
                        "unknown population {name:?} (defined under `populations:` in gateway.yaml: {})",
                        none_or_list(
                            &defs
                                .populations
                                .iter()
                                .map(|p| p.name.as_str())
                                .collect::<Vec<_>>()
                        )
                    ),
                ),
                Some(pop) if !pop.providers.iter().any(|id| chosen.contains(id)) => self.err(
                    &p,
                    format!(
                        "population {name:?} signs in with {}, none of which this route accepts",
                        pop.providers.join(", ")
                    ),
                ),
                Some(_) => {}
            }
            populations.push(name);
        }
        let forward_access_token = forward_access_token.unwrap_or(false);
        if forward_access_token {
            if auth == AuthMode::Bearer {
                self.err(
                    &format!("{path}.forward_access_token"),
                    "applies to routes with auth login or login_or_bearer (a bearer route's client sends its own token)",
                );
            } else if defs.session.encryption_keys.is_empty()
                && matches!(defs.session.store, StoreSpec::Redis { .. })
            {
                self.err(
                    &format!("{path}.forward_access_token"),
                    "tokens are kept in Redis only encrypted: set session.encryption_keys (openssl rand -base64 32)",
                );
            }
        }
        let step_up_at = step_up.as_ref().and_then(|s| s.when_risk_at_least);
        if let (Some(deny), Some(step)) = (deny_when_risk_at_least, step_up_at) {
            if deny <= step {
                self.warn(
                    &format!("{path}.deny_when_risk_at_least"),
                    "is not above step_up.when_risk_at_least, so a risky request is denied before it could step up",
                );
            }
        }
        let risk = super::RouteRisk {
            sensitivity: sensitivity.unwrap_or(0),
            mode: risk_mode.map(super::RiskMode::from),
            deny_at: deny_when_risk_at_least,
            step_up_at,
        };
        let step_up = step_up.map(|raw| {
            let sp = format!("{path}.step_up");
            StepUpSpec {
                acr: self.min_acr(raw.acr, &format!("{sp}.acr"), &used),
                max_age: raw
                    .max_age
                    .as_ref()
                    .map(|_| self.duration(&raw.max_age, &format!("{sp}.max_age"), Duration::ZERO)),
                prompt_login: raw.prompt_login,
                elevation: self.duration(
                    &raw.elevation,
                    &format!("{sp}.elevation"),
                    Duration::from_secs(15 * 60),
                ),
            }
        });
        RouteAuth {
            step_up,
            risk,
            providers: chosen,
            api: api.unwrap_or(matches!(auth, AuthMode::Bearer)),
            require,
            headers,
            assertion: assertion.unwrap_or(false),
            bearer,
            populations,
            forward_access_token,
        }
    }

    fn requirements(
        &mut self,
        raw: RawRequire,
        path: &str,
        providers: &[&ProviderSpec],
    ) -> Requirements {
        let RawRequire {
            groups_any,
            groups_all,
            claims,
            email_verified,
            email_domain,
            acr,
        } = raw;
        let mut email_domains = Vec::new();
        for (i, d) in email_domain
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let d = d.trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains('@') || !d.contains('.') {
                self.err(
                    &format!("{path}.email_domain[{i}]")
                        .replace(".email_domain[0]", ".email_domain"),
                    format!("{d:?} is not a domain name"),
                );
            }
            email_domains.push(d);
        }
        self.claim_names(claims.keys(), path, providers);
        let acr = acr.map(|level| self.min_acr(level, &format!("{path}.acr"), providers));
        Requirements {
            groups_any,
            groups_all,
            claims: claims.into_iter().collect(),
            email_verified,
            email_domains,
            acr,
        }
    }

    /// Each claim name must be one a session keeps.
    fn claim_names<'n>(
        &mut self,
        names: impl Iterator<Item = &'n String>,
        path: &str,
        providers: &[&ProviderSpec],
    ) {
        let mut known: BTreeSet<&str> = BUILTIN_PLACEHOLDERS.iter().copied().collect();
        for p in providers {
            known.extend(p.claims.iter().map(|(ours, _)| ours.as_str()));
        }
        for name in names {
            if !known.contains(name.as_str()) {
                self.err(
                    &format!("{path}.claims.{name}"),
                    format!(
                        "unknown claim {name:?}: a session keeps {} (map others under the provider's `claims:`)",
                        known.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }

    /// A minimum assurance level, resolved to the `acr` values that meet it at each of
    /// `providers` (each must define the level).
    fn min_acr(&mut self, level: String, path: &str, providers: &[&ProviderSpec]) -> MinAcr {
        let mut accepted = Vec::new();
        for p in providers {
            match p.acr_levels.iter().position(|(n, _)| n == &level) {
                Some(rank) => accepted.push((
                    p.id.clone(),
                    p.acr_levels[rank..]
                        .iter()
                        .map(|(_, v)| v.clone())
                        .collect(),
                )),
                None => self.err(
                    path,
                    format!(
                        "unknown level {level:?} for provider {:?} (its acr_levels: {})",
                        p.id,
                        none_or_list(
                            &p.acr_levels
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                        )
                    ),
                ),
            }
        }
        MinAcr { level, accepted }
    }

    /// `populations:` in document order (the first that matches a user is theirs).
    pub(super) fn populations(
        &mut self,
        providers: &[ProviderSpec],
        session: &SessionSpec,
    ) -> Vec<PopulationSpec> {
        let mut out = Vec::new();
        let entries = self.named_entries::<RawPopulation>(
            "populations",
            "expected a mapping of population name to its settings",
            "population names are strings",
            |name| format!("{name:?}: population names use lower-case letters, digits, '-' and '_' (they become metric labels)"),
        );
        for (name, path, raw) in entries {
            let RawPopulation {
                providers: ids,
                claims,
                acr,
                idle_timeout,
                absolute_timeout,
                max_sessions,
                refresh_tokens,
            } = raw;
            if ids.is_empty() {
                self.err(&format!("{path}.providers"), "list at least one provider");
            }
            let mut used = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                match providers.iter().find(|p| &p.id == id && p.client.is_some()) {
                    Some(p) => used.push(p),
                    None => self.err(
                        &format!("{path}.providers[{i}]"),
                        format!(
                            "{id:?} is not a provider with a client_id (login providers: {})",
                            none_or_list(
                                &providers
                                    .iter()
                                    .filter(|p| p.client.is_some())
                                    .map(|p| p.id.as_str())
                                    .collect::<Vec<_>>()
                            )
                        ),
                    ),
                }
            }
            self.claim_names(claims.keys(), &path, &used);
            let acr = acr.map(|level| self.min_acr(level, &format!("{path}.acr"), &used));
            let idle = self.duration(
                &idle_timeout,
                &format!("{path}.idle_timeout"),
                session.idle_timeout,
            );
            let absolute = self.duration(
                &absolute_timeout,
                &format!("{path}.absolute_timeout"),
                session.absolute_timeout,
            );
            if idle > absolute {
                self.warn(
                    &format!("{path}.idle_timeout"),
                    "is longer than absolute_timeout, so it never applies",
                );
            }
            if max_sessions == Some(0) {
                self.err(
                    &format!("{path}.max_sessions"),
                    "must be at least 1 (leave it out for no limit)",
                );
            }
            if refresh_tokens
                && session.encryption_keys.is_empty()
                && matches!(session.store, StoreSpec::Redis { .. })
            {
                self.err(
                    &format!("{path}.refresh_tokens"),
                    "tokens are kept in Redis only encrypted: set session.encryption_keys (openssl rand -base64 32)",
                );
            }
            out.push(PopulationSpec {
                name,
                providers: ids,
                claims: claims.into_iter().collect(),
                acr,
                idle_timeout: idle,
                absolute_timeout: absolute,
                max_sessions,
                refresh_tokens,
            });
        }
        out
    }

    /// `logout:`.
    pub(super) fn logout(&mut self) -> LogoutSpec {
        let raw: RawLogout = match self.root.get("logout") {
            None => RawLogout::default(),
            Some(n) => self.decode(n, "logout").unwrap_or_default(),
        };
        let redirect = raw.redirect.unwrap_or_else(|| "/".into());
        if crate::oidc::flow::safe_return_path(&redirect) != redirect
            || redirect.starts_with("/.portcullis/")
        {
            self.err(
                "logout.redirect",
                format!("{redirect:?}: a path on public_url, starting with a single /"),
            );
        }
        let notify = raw.notify.and_then(|u| match url::Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                self.err(
                    "logout.notify",
                    format!("{u:?}: an http(s) URL the gateway POSTs logout events to"),
                );
                None
            }
        });
        LogoutSpec { redirect, notify }
    }

    fn header_templates(
        &mut self,
        raw: std::collections::BTreeMap<String, String>,
        path: &str,
        providers: &[&ProviderSpec],
    ) -> Vec<(String, String)> {
        let mut known: BTreeSet<&str> = BUILTIN_PLACEHOLDERS.iter().copied().collect();
        for p in providers {
            known.extend(p.claims.iter().map(|(ours, _)| ours.as_str()));
        }
        let mut out = Vec::new();
        for (name, template) in raw {
            let hpath = format!("{path}.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(&hpath, format!("{name:?} is not a header name"));
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if crate::headers::is_reserved_injection(&lower) {
                self.err(
                    &hpath,
                    format!(
                        "{name} is set by the gateway or the protocol and cannot carry identity"
                    ),
                );
                continue;
            }
            match placeholders(&template) {
                Err(msg) => self.err(&hpath, msg),
                Ok(names) => {
                    for n in names {
                        if !known.contains(n) {
                            self.err(
                                &hpath,
                                format!(
                                    "unknown placeholder {{{n}}} (known: {})",
                                    known.iter().copied().collect::<Vec<_>>().join(", ")
                                ),
                            );
                        }
                    }
                }
            }
            out.push((lower, template));
        }
        out
    }
}

/// The placeholder names in a header template; `{{` and `}}` are literal braces.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.as_bytes().first() == Some(&c) {
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(format!(
                "{template:?}: unmatched '}}' (write '}}}}' for a literal brace)"
            ));
        }
        let Some(end) = after.find('}') else {
            return Err(format!("{template:?}: unclosed '{{'"));
        };
        let name = &after[..end];
        if !valid_placeholder(name) {
            return Err(format!("{template:?}: {{{name}}} is not a claim name"));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

fn valid_placeholder(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub fn is_loopback_host(h: &str) -> bool {
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn none_or_list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn alg_names() -> String {
    ASYMMETRIC
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_braces_can_be_escaped() {
        assert_eq!(placeholders("{sub}").unwrap(), vec!["sub"]);
        assert_eq!(
            placeholders("user={email};g={groups}").unwrap(),
            vec!["email", "groups"]
        );
        assert_eq!(placeholders("{{literal}}").unwrap(), Vec::<&str>::new());
        assert!(placeholders("{sub").is_err());
        assert!(placeholders("sub}").is_err());
        assert!(placeholders("{a b}").is_err());
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("example.com"));
        assert!(!is_loopback_host("10.0.0.1"));
    }
}
