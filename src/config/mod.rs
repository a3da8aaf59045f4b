//! Configuration: raw YAML, then validated, then compiled.
//!
//! `load` reads `gateway.yaml` and every `policies/*.yaml` (in name order), checks them,
//! and returns a [`GatewayConfig`] or every error found, each with file, YAML path and line.
//! Turning a `GatewayConfig` into the live runtime (upstream pools, metric handles) is the
//! job of `crate::runtime`.

mod auth;
mod error;
mod limits;
pub mod node;
mod raw;
mod risk;
mod secret;

pub use auth::{
    is_loopback_host, placeholders, AssertionSpec, BearerSpec, ClientSpec, LogoutSpec, MinAcr,
    PopulationSpec, ProviderSpec, Requirements, RouteAuth, SessionSpec, StepUpSpec, StoreSpec,
    ASYMMETRIC, BUILTIN_PLACEHOLDERS,
};
pub use error::{ConfigError, ConfigErrors, Diagnostics};
pub use limits::{KeyPart, LoginSpec, RateLimitSpec, RegulationSpec};
pub use raw::ClaimValue;
pub use risk::{CountSignal, GeoDb, RiskMode, RiskSpec, RouteRisk, SignalWeights};
pub use secret::{Secret, SecretRef};

use crate::headers::HeaderHygiene;
use crate::routing::path::normalize_config_path;
use crate::routing::{HostPattern, PathMatch, RouteMatcher};
use ipnet::IpNet;
use node::{join_path, Node, Pos};
use raw::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `gateway.yaml` this was loaded from.
    pub source: PathBuf,
    pub listeners: Vec<Listener>,
    pub public_url: PublicUrl,
    pub trusted_proxies: Vec<IpNet>,
    pub admin: AdminConfig,
    pub threads: usize,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub hygiene: HeaderHygiene,
    pub case_insensitive_paths: bool,
    pub watch_config: bool,
    /// The policy directory (or single policy file).
    pub policy_source: PathBuf,
    /// Modification stamps of every file read, taken just before each was read, so the
    /// file watcher can tell when anything changed since this load.
    pub stamps: FileStamps,
    pub routes: Vec<RouteSpec>,
    pub session: SessionSpec,
    pub providers: Vec<ProviderSpec>,
    pub populations: Vec<PopulationSpec>,
    pub logout: LogoutSpec,
    pub rate_limits: Vec<RateLimitSpec>,
    pub login: LoginSpec,
    /// Where audit events go.
    pub audit: crate::audit::AuditOutput,
    /// Log level and format, and the access log.
    pub logging: crate::logging::LoggingSpec,
    /// After `SIGTERM`, how long `/readyz` answers 503 while requests are still served,
    /// before the listeners close (`shutdown.drain`).
    pub shutdown_drain: Duration,
    /// Risk signals and the gateway's mode.
    pub risk: RiskSpec,
    pub assertion: AssertionSpec,
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The URL users reach the gateway at; redirect URIs and cookie security derive from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    pub https: bool,
    /// Lower-case host, without port.
    pub host: String,
    pub port: Option<u16>,
    /// `scheme://host[:port]`, no trailing slash.
    pub origin: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
}

/// A validated upstream: where to send requests and how.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub name: String,
    /// Resolved addresses, each a round-robin target.
    pub targets: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheckSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
    pub ca: Option<PathBuf>,
    /// When the CA file last changed, so a reload picks up a rotated CA bundle.
    pub ca_stamp: Stamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSpec {
    pub interval: Duration,
    pub timeout: Duration,
}

/// What a route demands of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone; identity headers are still stripped.
    Public,
    /// Nobody: 403.
    Deny,
    /// A browser session from one of the route's providers.
    Login,
    /// A JWT access token from one of the route's issuers.
    Bearer,
    /// A bearer token when the request carries one, else a session.
    LoginOrBearer,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Public => "public",
            AuthMode::Deny => "deny",
            AuthMode::Login => "login",
            AuthMode::Bearer => "bearer",
            AuthMode::LoginOrBearer => "login_or_bearer",
        }
    }
}

/// A validated route, in precedence order.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub file: PathBuf,
    pub line: Option<u64>,
    pub matcher: RouteMatcher,
    pub auth: AuthMode,
    pub upstream: Option<String>,
    /// Identity requirements and headers (empty for public and deny routes).
    pub identity: RouteAuth,
    /// Names of the limits applied to the route's requests.
    pub rate_limits: Vec<String>,
    /// The named journey and step this route is (`journey: { name, step }`).
    pub journey: Option<JourneyStep>,
}

/// A step of a named journey, counted per request by outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyStep {
    pub name: String,
    pub step: String,
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys `gateway.yaml` may have. The last five are reserved for features to come and
/// answer with "not available yet" rather than "unknown".
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "trusted_proxies",
    "admin",
    "threads",
    "upstreams",
    "strip_headers",
    "case_insensitive_paths",
    "watch_config",
    "policies",
    "session",
    "providers",
    "assertion",
    "populations",
    "logout",
    "login",
    "audit",
    "logging",
    "shutdown",
    "rate_limits",
    "risk",
];

/// Largest config file we read; a policy set is kilobytes, so this only stops accidents.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Loads and validates `gateway.yaml` and its policies. All errors are returned together.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let mut d = Diagnostics::new();
    let stamp = file_stamp(path);
    let text = match read_file(path) {
        Ok(t) => t,
        Err(msg) => {
            d.error(path, "", None, msg);
            return Err(ConfigErrors { errors: d.errors });
        }
    };
    load_text(path, &text, stamp, &mut d)
}

/// Validates the text of `gateway.yaml` read from `path` (stamped just before reading)
/// and the policies relative to it.
fn load_text(
    path: &Path,
    text: &str,
    stamp: Stamp,
    d: &mut Diagnostics,
) -> Result<GatewayConfig, ConfigErrors> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let Some(root) = parse_file(path, text, d) else {
        return Err(ConfigErrors {
            errors: std::mem::take(&mut d.errors),
        });
    };
    let mut b = Builder {
        file: path.to_path_buf(),
        root: &root,
        d,
    };
    let cfg = b.gateway(&base, stamp);
    if b.d.errors.is_empty() {
        if let Some(mut cfg) = cfg {
            cfg.warnings = std::mem::take(&mut b.d.warnings);
            return Ok(cfg);
        }
    }
    Err(ConfigErrors {
        errors: in_file_order(std::mem::take(&mut b.d.errors)),
    })
}

/// Orders errors by file (in the order files were read) and then by line, so the report
/// reads top to bottom however the checks were run.
fn in_file_order(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for e in &errors {
        if !files.contains(&e.file) {
            files.push(e.file.clone());
        }
    }
    errors.sort_by_key(|e| {
        let file = files
            .iter()
            .position(|f| f == &e.file)
            .unwrap_or(usize::MAX);
        let (line, col) = e.pos.map_or((0, 0), |p| (p.line, p.column));
        (file, line, col)
    });
    errors
}

fn read_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes; the limit is {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read file: {e}"))
}

fn parse_file(path: &Path, text: &str, d: &mut Diagnostics) -> Option<Node> {
    match Node::parse(text) {
        Ok(n) => Some(n),
        Err(e) => {
            let pos = e.location().and_then(|l| {
                (l.line() > 0).then(|| Pos {
                    line: l.line(),
                    column: l.column(),
                })
            });
            // The parser's own text repeats the location we already print; keep the rest of
            // its first line.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid YAML");
            let msg = strip_location_prefix(first).to_string();
            d.error(path, "", pos, format!("invalid YAML: {msg}"));
            None
        }
    }
}

/// `error: line 4 column 13: while parsing ...` → `while parsing ...`.
fn strip_location_prefix(s: &str) -> &str {
    let s = s.strip_prefix("error: ").unwrap_or(s);
    if s.starts_with("line ") {
        if let Some((_, rest)) = s.split_once(": ") {
            return rest;
        }
    }
    s
}

/// Validates one file's tree, reporting at the right place.
struct Builder<'a> {
    file: PathBuf,
    root: &'a Node,
    d: &'a mut Diagnostics,
}

impl<'a> Builder<'a> {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        let pos = self.root.locate(path);
        self.d.error(&self.file, path, pos, msg);
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        let pos = self.root.locate(path);
        self.d.warn(&self.file, path, pos, msg);
    }

    /// Decodes the node at `path` into `T`, reporting a structural error at its place.
    fn decode<T: serde::de::DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        match node.decode::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let full = join_path(path, &e.path);
                self.err(&full, e.message);
                None
            }
        }
    }

    fn duration(&mut self, v: &Option<String>, path: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(path, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.err(
                        path,
                        format!("invalid duration {s:?} ({e}); write e.g. 5s, 250ms, 2m"),
                    );
                    default
                }
            },
        }
    }

    fn gateway(&mut self, base: &Path, stamp: Stamp) -> Option<GatewayConfig> {
        let root = self.root;
        if !matches!(root.value, node::Value::Map(_)) {
            self.err("", "expected a mapping of settings at the top of the file");
            return None;
        }
        self.top_level_keys();

        let listeners = self.listeners(base);
        let public_url = self.public_url();
        let trusted_proxies = self.trusted_proxies();
        let admin = self.admin(base);
        if let (Some(ls), Some(a)) = (&listeners, &admin) {
            // Both would bind with SO_REUSEPORT and share connections at random, handing
            // admin requests to the proxy and the other way round.
            if let Some(l) = ls.iter().find(|l| addrs_overlap(l.addr, a.addr)) {
                self.err(
                    "admin.address",
                    format!("{} overlaps the listener {}", a.addr, l.addr),
                );
            }
        }
        let threads = match root.get("threads") {
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            Some(n) => match self.decode::<usize>(n, "threads") {
                Some(t @ 1..=256) => t,
                Some(_) => {
                    self.err("threads", "must be between 1 and 256");
                    1
                }
                None => 1,
            },
        };
        let upstreams = self.upstreams(base);
        let strip_extra = self.strip_headers();
        let providers = self.providers(base);
        let session = self.session(base, public_url.as_ref());
        let populations = self.populations(&providers, &session);
        let logout = self.logout();
        let rate_limits = self.rate_limits(&session);
        let login = self.login(&rate_limits);
        let audit = self.audit(base);
        let logging = self.logging();
        let shutdown_drain = self.shutdown_drain();
        let mut geo_stamps = FileStamps::default();
        let risk = self.risk(base, login.regulation.is_some(), &mut geo_stamps);
        if risk.weights.new_device != 0
            && session.encryption_keys.is_empty()
            && !matches!(session.store, StoreSpec::Memory)
        {
            self.err(
                "risk.signals.new_device",
                "signs its device cookie with session.encryption_keys, which every gateway sharing the store needs (openssl rand -base64 32)",
            );
        }
        let assertion = self.assertion(base);
        if let Some(u) = &public_url {
            if !providers.is_empty() && !u.https && !is_loopback_host(&u.host) {
                self.err(
                    "public_url",
                    "sessions need https: plain http is allowed only on a loopback host (development)",
                );
            }
        }
        let case_insensitive_paths = self.flag("case_insensitive_paths");
        let watch_config = self.flag("watch_config");

        let policies_rel = match root.get("policies") {
            None => "policies".to_string(),
            Some(n) => self.decode::<String>(n, "policies").unwrap_or_default(),
        };
        let policy_source = base.join(&policies_rel);
        let mut stamps = FileStamps {
            entries: vec![(self.file.clone(), stamp)],
        };
        stamps.entries.append(&mut geo_stamps.entries);
        let routes = load_policies(
            &policy_source,
            &self.file,
            root.locate("policies"),
            &upstreams,
            &auth::IdentityDefs {
                providers: &providers,
                populations: &populations,
                session: &session,
                rate_limits: &rate_limits,
            },
            case_insensitive_paths,
            &mut stamps,
            self.d,
        );
        // Every header a route injects is stripped from every request, on every route: a
        // spoofed X-User must not reach an app through a public route either.
        let mut stripped = strip_extra;
        for r in &routes {
            stripped.extend(r.identity.headers.iter().map(|(n, _)| n.clone()));
        }
        let hygiene = HeaderHygiene::new(&stripped);
        for p in ignored_policy_entries(&policy_source) {
            self.warn(
                "policies",
                format!(
                    "{} is not read: only *.yaml and *.yml files directly in the policy directory are",
                    p.display()
                ),
            );
        }
        if routes.is_empty() && self.d.errors.is_empty() {
            self.warn(
                "policies",
                "no routes are defined: every request will get 404",
            );
        }

        Some(GatewayConfig {
            source: self.file.clone(),
            listeners: listeners?,
            public_url: public_url?,
            trusted_proxies,
            admin: admin?,
            threads,
            upstreams,
            hygiene,
            case_insensitive_paths,
            watch_config,
            policy_source,
            stamps,
            routes,
            session,
            providers,
            populations,
            logout,
            rate_limits,
            login,
            audit,
            logging,
            shutdown_drain,
            risk,
            assertion,
            warnings: Vec::new(),
        })
    }

    /// Unknown top-level keys, each reported (serde would stop at the first).
    fn top_level_keys(&mut self) {
        let node::Value::Map(entries) = &self.root.value else {
            return;
        };
        for (k, _) in entries {
            match &k.value {
                node::Value::Str(key) if TOP_LEVEL_KEYS.contains(&key.as_str()) => {}
                node::Value::Str(key) => {
                    let pos = k.pos;
                    self.d.error(
                        &self.file,
                        key,
                        pos,
                        format!(
                            "unknown key `{key}`, expected one of {}",
                            TOP_LEVEL_KEYS.join(", ")
                        ),
                    );
                }
                _ => self.err("", "top-level keys must be strings"),
            }
        }
    }

    /// One error for each key under `path` that is present, saying `why` it is refused.
    fn refuse_present(&mut self, path: &str, keys: &[(bool, &str)], why: &str) {
        for (present, key) in keys {
            if *present {
                self.err(&format!("{path}.{key}"), format!("`{key}` {why}"));
            }
        }
    }

    fn flag(&mut self, key: &str) -> bool {
        match self.root.get(key) {
            None => false,
            Some(n) => self.decode::<bool>(n, key).unwrap_or(false),
        }
    }

    fn listeners(&mut self, base: &Path) -> Option<Vec<Listener>> {
        let Some(n) = self.root.get("listen") else {
            self.err("listen", "missing: at least one listener is needed, e.g. `listen: [{ address: 0.0.0.0:8080 }]`");
            return None;
        };
        let raw: Vec<RawListener> = self.decode(n, "listen")?;
        if raw.is_empty() {
            self.err("listen", "at least one listener is needed");
        }
        let mut out = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let path = format!("listen[{i}]");
            let Some(addr) = self.socket_addr(&l.address, &format!("{path}.address")) else {
                continue;
            };
            if let Some(o) = out.iter().find(|o: &&Listener| addrs_overlap(o.addr, addr)) {
                self.err(
                    &format!("{path}.address"),
                    format!("{addr} overlaps {} listed before it", o.addr),
                );
            }
            let tls = l.tls.map(|t| TlsFiles {
                cert: base.join(&t.cert),
                key: base.join(&t.key),
            });
            if let Some(t) = &tls {
                // Checked here in full: Pingora would only find out in its listener thread,
                // panic there, and leave a process running without the listener.
                if let Err((what, msg)) = check_tls_files(t) {
                    self.err(&format!("{path}.tls.{what}"), msg);
                }
            }
            out.push(Listener { addr, tls });
        }
        Some(out)
    }

    fn socket_addr(&mut self, s: &str, path: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("{s:?} is not an IP address and port, e.g. 0.0.0.0:8080 or [::1]:8080"),
                );
                None
            }
        }
    }

    fn public_url(&mut self) -> Option<PublicUrl> {
        let Some(n) = self.root.get("public_url") else {
            self.err(
                "public_url",
                "missing: the URL users reach the gateway at, e.g. https://shop.example.com",
            );
            return None;
        };
        let s: String = self.decode(n, "public_url")?;
        match parse_public_url(&s) {
            Ok(u) => Some(u),
            Err(msg) => {
                self.err("public_url", msg);
                None
            }
        }
    }

    fn trusted_proxies(&mut self) -> Vec<IpNet> {
        let Some(n) = self.root.get("trusted_proxies") else {
            return Vec::new();
        };
        let raw: Vec<String> = self.decode(n, "trusted_proxies").unwrap_or_default();
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => {
                    if net.prefix_len() == 0 {
                        self.warn(
                            &format!("trusted_proxies[{i}]"),
                            "trusts every address: any client can then choose its own client IP",
                        );
                    }
                    out.push(net.trunc());
                }
                Err(_) => self.err(
                    &format!("trusted_proxies[{i}]"),
                    format!("{s:?} is not an IP address or CIDR network"),
                ),
            }
        }
        out
    }

    fn admin(&mut self, base: &Path) -> Option<AdminConfig> {
        let Some(n) = self.root.get("admin") else {
            return Some(AdminConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
                token: None,
            });
        };
        let raw: RawAdmin = self.decode(n, "admin")?;
        let addr = self.socket_addr(&raw.address, "admin.address")?;
        let token = match &raw.token {
            None => None,
            Some(r) => match Secret::resolve(r, base) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.err("admin.token", e);
                    None
                }
            },
        };
        if !addr.ip().is_loopback() && raw.token.is_none() {
            self.err(
                "admin.token",
                "the admin listener is not on a loopback address, so it needs a token \
                 (`token: { env: PORTCULLIS_ADMIN_TOKEN }`)",
            );
        }
        Some(AdminConfig { addr, token })
    }

    fn upstreams(&mut self, base: &Path) -> BTreeMap<String, UpstreamSpec> {
        let mut out = BTreeMap::new();
        let entries = self.named_entries::<RawUpstream>(
            "upstreams",
            "expected a mapping of upstream name to settings",
            "upstream names must be strings",
            |_| {
                "names use lower-case letters, digits, '-' and '_' (they become metric labels)"
                    .into()
            },
        );
        for (name, path, raw) in entries {
            if let Some(spec) = self.upstream(&name, &raw, &path, base) {
                out.insert(name, spec);
            }
        }
        out
    }

    /// The entries of the mapping under the top-level `key`, in document order, each
    /// decoded as `T`, with its name and YAML path (`key.name`). Reports, each once: a
    /// value that is not a mapping (`shape`), a name that is not a string
    /// (`not_string`), and a name that cannot be a metric label (`bad_name`). An entry
    /// whose value does not decode is reported by `decode` and left out.
    fn named_entries<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        shape: &str,
        not_string: &str,
        bad_name: impl Fn(&str) -> String,
    ) -> Vec<(String, String, T)> {
        let mut out = Vec::new();
        let Some(n) = self.root.get(key) else {
            return out;
        };
        let node::Value::Map(entries) = &n.value else {
            self.err(key, shape);
            return out;
        };
        for (k, v) in entries {
            let node::Value::Str(name) = &k.value else {
                self.err(key, not_string);
                continue;
            };
            let path = format!("{key}.{name}");
            if !valid_name(name) {
                self.err(&path, bad_name(name));
            }
            if let Some(raw) = self.decode::<T>(v, &path) {
                out.push((name.clone(), path, raw));
            }
        }
        out
    }

    fn upstream(
        &mut self,
        name: &str,
        raw: &RawUpstream,
        path: &str,
        base: &Path,
    ) -> Option<UpstreamSpec> {
        if raw.targets.is_empty() {
            self.err(&format!("{path}.targets"), "at least one target is needed");
        }
        let mut targets = Vec::new();
        let mut first_host: Option<String> = None;
        for (i, t) in raw.targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            if let Ok(a) = t.parse::<SocketAddr>() {
                targets.push(a);
                continue;
            }
            // A host name: resolved now, off the request path (Pingora would otherwise resolve
            // it per connection with a blocking call).
            let Some((host, port)) = t.rsplit_once(':') else {
                self.err(
                    &tpath,
                    format!("{t:?} needs a port, e.g. app.internal:8080"),
                );
                continue;
            };
            if port.parse::<u16>().is_err() {
                self.err(&tpath, format!("{t:?} has an invalid port"));
                continue;
            }
            match t.to_socket_addrs() {
                Ok(addrs) => {
                    let before = targets.len();
                    targets.extend(addrs);
                    if targets.len() == before {
                        self.err(&tpath, format!("{host} resolves to no address"));
                    }
                    first_host.get_or_insert_with(|| host.to_string());
                }
                Err(e) => self.err(&tpath, format!("cannot resolve {host}: {e}")),
            }
        }
        targets.dedup();
        let connect_timeout = self.duration(
            &raw.connect_timeout,
            &format!("{path}.connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let read_timeout = self.duration(
            &raw.read_timeout,
            &format!("{path}.read_timeout"),
            DEFAULT_READ_TIMEOUT,
        );
        let write_timeout = self.duration(
            &raw.write_timeout,
            &format!("{path}.write_timeout"),
            DEFAULT_WRITE_TIMEOUT,
        );
        let tls = raw.tls.as_ref().and_then(|t| {
            let sni = t.sni.clone().or_else(|| first_host.clone());
            let Some(sni) = sni else {
                self.err(
                    &format!("{path}.tls.sni"),
                    "TLS to an IP target needs `sni:`, the name the upstream's certificate is for",
                );
                return None;
            };
            let ca = t.ca.as_ref().map(|c| base.join(c));
            if let Some(ca) = &ca {
                if let Err(e) = crate::upstream::load_ca(ca) {
                    self.err(&format!("{path}.tls.ca"), e);
                }
            }
            if !t.verify {
                self.warn(
                    &format!("{path}.tls.verify"),
                    "certificate verification is off: anyone on the network path can impersonate this upstream",
                );
            }
            Some(UpstreamTls {
                sni,
                verify: t.verify,
                ca_stamp: ca.as_deref().and_then(file_stamp),
                ca,
            })
        });
        let health_check = match &raw.health_check {
            Some(h) if !h.enabled => None,
            h => {
                let (i, t) = h
                    .as_ref()
                    .map(|h| (h.interval.clone(), h.timeout.clone()))
                    .unwrap_or_default();
                Some(HealthCheckSpec {
                    interval: self.duration(
                        &i,
                        &format!("{path}.health_check.interval"),
                        DEFAULT_HC_INTERVAL,
                    ),
                    timeout: self.duration(
                        &t,
                        &format!("{path}.health_check.timeout"),
                        DEFAULT_HC_TIMEOUT,
                    ),
                })
            }
        };
        Some(UpstreamSpec {
            name: name.to_string(),
            targets,
            connect_timeout,
            read_timeout,
            write_timeout,
            tls,
            health_check,
        })
    }

    fn strip_headers(&mut self) -> Vec<String> {
        let mut extra = Vec::new();
        if let Some(n) = self.root.get("strip_headers") {
            let raw: Vec<String> = self.decode(n, "strip_headers").unwrap_or_default();
            for (i, h) in raw.iter().enumerate() {
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    self.err(
                        &format!("strip_headers[{i}]"),
                        format!("{h:?} is not a header name"),
                    );
                } else {
                    extra.push(h.clone());
                }
            }
        }
        extra
    }
}

/// Loads a listener's certificate chain and key the way the TLS stack will, and checks
/// that the key belongs to the first certificate. On error: which key is at fault, and why.
fn check_tls_files(t: &TlsFiles) -> Result<(), (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", t.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("invalid PEM in {}: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(("cert", format!("no certificate in {}", t.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        (
            "key",
            format!("no usable private key in {}: {e}", t.key.display()),
        )
    })?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| {
            (
                "key",
                format!("{} does not fit {}: {e}", t.key.display(), t.cert.display()),
            )
        })?;
    Ok(())
}

/// True when two listening addresses would take the same connections: same port, and
/// the same IP or either one the wildcard address.
fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Route and upstream names become metric labels and log fields, so keep them plain.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parses `public_url`: an absolute http(s) URL with a host and nothing after it.
pub fn parse_public_url(s: &str) -> Result<PublicUrl, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is not a URL like https://shop.example.com"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "{s:?} must start with https:// (or http:// for local development)"
            ))
        }
    };
    let Some(auth) = uri.authority() else {
        return Err(format!("{s:?} has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!("{s:?} must not contain user information"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?} must be an origin only (scheme, host, port): Portcullis serves the whole host"
        ));
    }
    let host = auth.host().to_ascii_lowercase();
    let port = auth.port_u16();
    let default_port = if https { 443 } else { 80 };
    let origin = match port {
        Some(p) if p != default_port => {
            format!("{}://{host}:{p}", uri.scheme_str().unwrap_or("https"))
        }
        _ => format!("{}://{host}", uri.scheme_str().unwrap_or("https")),
    };
    Ok(PublicUrl {
        https,
        host,
        port,
        origin,
    })
}

/// When a file was last changed, as far as the file system says (`None`: unreadable).
pub type Stamp = Option<(std::time::SystemTime, u64)>;

/// Modification time and size of each configuration file, in the order read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileStamps {
    pub entries: Vec<(PathBuf, Stamp)>,
}

fn file_stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The policy files of `source` (a directory or one file), in name order.
fn policy_files(source: &Path) -> std::io::Result<Vec<PathBuf>> {
    if source.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(source)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_policy_file(p))
        .collect();
    paths.sort();
    Ok(paths)
}

fn is_policy_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Entries of the policy directory that are not read: a misnamed policy file must not
/// vanish silently (a deny rule in `10-deny.yaml.bak` protects nothing).
fn ignored_policy_entries(source: &Path) -> Vec<PathBuf> {
    if source.is_file() {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(source)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            let read = p.is_file() && is_policy_file(p);
            !(hidden || read)
        })
        .collect();
    out.sort();
    out
}

impl GatewayConfig {
    /// The files' stamps now, to compare with [`GatewayConfig::stamps`]: a difference
    /// (an edit, a new or removed policy file) means the configuration on disk changed.
    pub fn current_stamps(&self) -> FileStamps {
        let mut entries = vec![(self.source.clone(), file_stamp(&self.source))];
        for p in policy_files(&self.policy_source).unwrap_or_default() {
            let st = file_stamp(&p);
            entries.push((p, st));
        }
        FileStamps { entries }
    }
}

/// Reads every `*.yaml`/`*.yml` in `dir` (or the single file `dir`) in name order and
/// validates the routes, in that order.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the one policy pass
fn load_policies(
    dir: &Path,
    gateway_file: &Path,
    policies_pos: Option<Pos>,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    defs: &auth::IdentityDefs<'_>,
    case_insensitive: bool,
    stamps: &mut FileStamps,
    d: &mut Diagnostics,
) -> Vec<RouteSpec> {
    let paths = match policy_files(dir) {
        Ok(p) => p,
        Err(e) => {
            d.error(
                gateway_file,
                "policies",
                policies_pos,
                format!("cannot read policy directory {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut routes: Vec<RouteSpec> = Vec::new();
    for path in paths {
        stamps.entries.push((path.clone(), file_stamp(&path)));
        let text = match read_file(&path) {
            Ok(t) => t,
            Err(msg) => {
                d.error(&path, "", None, msg);
                continue;
            }
        };
        let Some(root) = parse_file(&path, &text, d) else {
            continue;
        };
        let mut b = Builder {
            file: path.clone(),
            root: &root,
            d,
        };
        b.policy_file(upstreams, defs, case_insensitive, &mut routes);
    }
    routes
}

impl Builder<'_> {
    fn policy_file(
        &mut self,
        upstreams: &BTreeMap<String, UpstreamSpec>,
        defs: &auth::IdentityDefs<'_>,
        case_insensitive: bool,
        routes: &mut Vec<RouteSpec>,
    ) {
        let root = self.root;
        if matches!(root.value, node::Value::Null) {
            self.warn("", "empty policy file");
            return;
        }
        if self.decode::<RawPolicyFile>(root, "").is_none() {
            return;
        }
        let route_nodes = match root.get("routes").map(|n| &n.value) {
            Some(node::Value::Seq(items)) => items.as_slice(),
            _ => &[],
        };
        for (i, rnode) in route_nodes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(raw) = self.decode::<RawRoute>(rnode, &path) else {
                continue;
            };
            if let Some(spec) = self.route(raw, &path, rnode, upstreams, defs, case_insensitive) {
                if let Some(prev) = routes.iter().find(|r| r.name == spec.name) {
                    self.err(
                        &format!("{path}.name"),
                        format!(
                            "route name {:?} is already used in {}{}",
                            spec.name,
                            prev.file.display(),
                            prev.line.map(|l| format!(":{l}")).unwrap_or_default()
                        ),
                    );
                    continue;
                }
                if let Some(prev) = routes.iter().find(|r| {
                    r.auth == AuthMode::Deny
                        && spec.auth != AuthMode::Deny
                        && !r.matcher.hosts.is_empty()
                        // A host-wide deny (no path) is about a whole virtual host, where
                        // Host does matter; a path rule limited to a host is the trap.
                        && r.matcher.path != PathMatch::Any
                        && spec.matcher.hosts.is_empty()
                        && r.matcher.path.overlaps(&spec.matcher.path)
                }) {
                    self.warn(
                        &path,
                        format!(
                            "route {:?} denies some paths only for its hosts; route {:?} serves the same paths \
                             for any host, so a request with another Host header gets through if the upstream \
                             ignores Host",
                            prev.name, spec.name
                        ),
                    );
                }
                if let Some(prev) = routes.iter().find(|r| r.matcher.shadows(&spec.matcher)) {
                    self.warn(
                        &path,
                        format!(
                            "route {:?} can never match: route {:?} before it matches everything it would",
                            spec.name, prev.name
                        ),
                    );
                }
                routes.push(spec);
            }
        }
    }

    fn route(
        &mut self,
        raw: RawRoute,
        path: &str,
        rnode: &Node,
        upstreams: &BTreeMap<String, UpstreamSpec>,
        defs: &auth::IdentityDefs<'_>,
        case_insensitive: bool,
    ) -> Option<RouteSpec> {
        let before = self.d.errors.len();
        // Destructured exhaustively: a new field fails to compile until it is handled here,
        // so nothing in a policy can be silently ignored.
        let RawRoute {
            name,
            matcher: raw_matcher,
            upstream: raw_upstream,
            auth: raw_auth,
            require,
            headers,
            assertion,
            bearer,
            providers: route_providers,
            api,
            step_up,
            deny_when_risk_at_least,
            sensitivity,
            risk_mode,
            rate_limits,
            journey,
            population,
            forward_access_token,
        } = raw;
        if !valid_name(&name) {
            self.err(
                &format!("{path}.name"),
                format!(
                    "{name:?}: route names use lower-case letters, digits, '-' and '_' (they become metric labels)"
                ),
            );
        }
        let auth = match raw_auth {
            RawAuth::Public => AuthMode::Public,
            RawAuth::Deny => AuthMode::Deny,
            RawAuth::Login => AuthMode::Login,
            RawAuth::Bearer => AuthMode::Bearer,
            RawAuth::LoginOrBearer => AuthMode::LoginOrBearer,
        };
        let identity = self.route_auth(
            auth,
            auth::RouteAuthInput {
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
            },
            path,
            defs,
        );
        let journey = journey.and_then(|j| {
            let step = match j.step {
                RawStep::Number(n) => n.to_string(),
                RawStep::Name(s) => s,
            };
            let mut ok = true;
            for (what, v) in [("name", &j.name), ("step", &step)] {
                if !valid_name(v) {
                    ok = false;
                    self.err(
                        &format!("{path}.journey.{what}"),
                        format!("{v:?}: journey names and steps use lower-case letters, digits, '-' and '_' (they become metric labels)"),
                    );
                }
            }
            ok.then_some(JourneyStep { name: j.name, step })
        });

        let rate_limits = self.route_limits(rate_limits, auth, path, defs.rate_limits);
        let matcher = self.matcher(raw_matcher, &format!("{path}.match"), case_insensitive);
        let upstream = match (&raw_upstream, auth) {
            (Some(u), _) => {
                if !upstreams.contains_key(u) {
                    let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    self.err(
                        &format!("{path}.upstream"),
                        format!(
                            "unknown upstream {u:?} (defined: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                Some(u.clone())
            }
            (None, AuthMode::Deny) => None,
            (None, _) => {
                self.err(
                    &format!("{path}.upstream"),
                    "missing: which upstream serves this route",
                );
                None
            }
        };
        if self.d.errors.len() > before {
            return None;
        }
        Some(RouteSpec {
            name,
            file: self.file.clone(),
            line: rnode.pos.map(|p| p.line),
            matcher: matcher?,
            auth,
            upstream,
            identity,
            rate_limits,
            journey,
        })
    }

    fn matcher(&mut self, m: RawMatch, path: &str, case_insensitive: bool) -> Option<RouteMatcher> {
        let mut ok = true;
        let mut hosts = Vec::new();
        for (i, h) in m
            .host
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match HostPattern::parse(h) {
                Ok(p) => hosts.push(p),
                Err(msg) => {
                    self.err(
                        &format!("{path}.host[{i}]").replace(".host[0]", ".host"),
                        msg,
                    );
                    ok = false;
                }
            }
        }
        let path_match = match (m.path, m.path_prefix) {
            (Some(_), Some(_)) => {
                self.err(path, "use either `path` (exact) or `path_prefix`, not both");
                ok = false;
                PathMatch::Any
            }
            (Some(p), None) => match self.config_path(&p, &format!("{path}.path")) {
                Some(p) => PathMatch::Exact(p),
                None => {
                    ok = false;
                    PathMatch::Any
                }
            },
            (None, Some(p)) => match self.config_path(&p, &format!("{path}.path_prefix")) {
                Some(p) if p == "/" => PathMatch::Any,
                Some(p) => PathMatch::Prefix(p),
                None => {
                    ok = false;
                    PathMatch::Any
                }
            },
            (None, None) => PathMatch::Any,
        };
        let mut methods = Vec::new();
        for (i, mth) in m.methods.iter().enumerate() {
            let upper = mth.to_ascii_uppercase();
            match http::Method::from_bytes(upper.as_bytes()) {
                Ok(x) if !upper.is_empty() => methods.push(x),
                _ => {
                    self.err(
                        &format!("{path}.methods[{i}]"),
                        format!("{mth:?} is not an HTTP method"),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| RouteMatcher::new(hosts, path_match, methods, case_insensitive))
    }

    fn config_path(&mut self, p: &str, path: &str) -> Option<String> {
        // Only characters that every server reads the same way, encoded or not: a route for
        // `/a:b` would otherwise miss a request for `/a%3Ab` that the upstream serves alike.
        if let Some(c) = p.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~' | '%'))
        }) {
            self.err(
                path,
                format!("{p:?}: {c:?} is not allowed in a route path (use letters, digits, `/-._~` and %XX escapes)"),
            );
            return None;
        }
        match normalize_config_path(p) {
            Ok(n) if n == p => Some(n),
            Ok(n) => {
                self.err(
                    path,
                    format!("{p:?} is not in normal form, so no request could match it as written; write {n:?}"),
                );
                None
            }
            Err(e) => {
                self.err(path, format!("{p:?} is not a valid path: {e}"));
                None
            }
        }
    }
}
