//! A real OpenID provider for end-to-end login tests: `tests/oidc-provider/server.mjs`
//! (panva's `oidc-provider` on Node), on a free loopback port, stopped on drop.
//!
//! Needs `node` on `PATH` and the provider's packages: `npm ci --prefix tests/oidc-provider`.
//! Users, scopes, ACRs and the login form are described at the top of `server.mjs`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the provider may take to print its ready line.
/// A failure bound, not a timing check: Node loading oidc-provider usually takes about a
/// second, but a loaded CI machine has been seen to need far longer.
/// How long one start may take before it is abandoned and tried again. A start takes
/// 2 to 3 s even with eight at once on two cores; but Node 20 now and then hangs at
/// start-up (main thread waiting on a futex, nothing printed), so a stuck start is
/// killed and retried rather than waited for.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Starts tried before giving up.
const START_ATTEMPTS: usize = 4;

/// One confidential client (`client_secret_basic`, grants `authorization_code` and
/// `refresh_token`, PKCE S256 required).
#[derive(Debug, Clone, Default)]
pub struct OidcClientSpec {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
}

impl OidcClientSpec {
    /// A client with one redirect URI and nothing else.
    pub fn new(client_id: &str, client_secret: &str, redirect_uri: &str) -> OidcClientSpec {
        OidcClientSpec {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            redirect_uris: vec![redirect_uri.to_string()],
            ..OidcClientSpec::default()
        }
    }

    /// The client as `server.mjs` reads it from `OIDC_CONFIG.clients[]`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
        });
        if let Some(uri) = &self.backchannel_logout_uri {
            v["backchannel_logout_uri"] = serde_json::Value::String(uri.clone());
        }
        v
    }
}

/// A running `server.mjs`. The node process is killed on drop, and exits by itself when
/// this test process dies (its stdin, a pipe held here, closes).
pub struct OidcProvider {
    /// `http://127.0.0.1:<port>`, exactly as the provider's discovery document says.
    pub issuer: String,
    child: Child,
    _stdin: ChildStdin,
    logs: Arc<Mutex<String>>,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/oidc-provider` in this crate.
pub fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

impl OidcProvider {
    /// Starts the provider with these clients and the default token lifetimes.
    pub async fn start(clients: Vec<OidcClientSpec>) -> OidcProvider {
        let clients: Vec<_> = clients.iter().map(OidcClientSpec::to_json).collect();
        Self::start_with_config(serde_json::json!({ "clients": clients })).await
    }

    /// Starts the provider with a raw `OIDC_CONFIG` object (see the top of `server.mjs`:
    /// `clients`, `idTokenTtl`, `accessTokenTtl`, per-client `token_endpoint_auth_method`).
    /// A start that is not ready within [`READY_LIMIT`] is killed and tried again, up
    /// to [`START_ATTEMPTS`] times; then this panics with the provider's output.
    pub async fn start_with_config(config: serde_json::Value) -> OidcProvider {
        for attempt in 1..START_ATTEMPTS {
            match Self::try_start(&config).await {
                Ok(p) => return p,
                Err(e) => eprintln!("oidc-provider start {attempt} failed, retrying: {e}"),
            }
        }
        Self::try_start(&config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_start(config: &serde_json::Value) -> Result<OidcProvider, String> {
        let dir = provider_dir();
        let install = "run `npm ci --prefix tests/oidc-provider` from the repository root";
        if Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            panic!("`node` is not on PATH: install Node.js (20 or later), then {install}");
        }
        if !dir.join("node_modules").is_dir() {
            panic!(
                "{} is missing: {install}",
                dir.join("node_modules").display()
            );
        }

        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("OIDC_CONFIG", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node server.mjs in {}: {e}", dir.display()));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let logs = Arc::new(Mutex::new(String::new()));
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut stderr = BufReader::new(stderr);
                let mut line = Vec::new();
                while matches!(stderr.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    logs.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            });
        }

        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut stdout = BufReader::new(stdout);
                let mut first = String::new();
                if stdout.read_line(&mut first).unwrap_or(0) > 0 {
                    let _ = ready_tx.send(first);
                }
                // Nothing else is expected on stdout; keep it drained and visible.
                let mut rest = String::new();
                while matches!(stdout.read_to_string(&mut rest), Ok(n) if n > 0) {
                    logs.lock().unwrap().push_str(&rest);
                    rest.clear();
                }
            });
        }

        let mut provider = OidcProvider {
            issuer: String::new(),
            child,
            _stdin: stdin,
            logs,
        };
        let line = match tokio::time::timeout(READY_LIMIT, ready_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                return Err(format!(
                    "oidc-provider exited before it was ready ({:?}); its output:\n{}",
                    provider.child.try_wait(),
                    provider.logs()
                ))
            }
            Err(_) => {
                return Err(format!(
                    "oidc-provider not ready within {READY_LIMIT:?}; its output:\n{}",
                    provider.logs()
                ))
            }
        };
        let ready: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            panic!(
                "oidc-provider's first stdout line is not JSON ({e}): {line:?}\n{}",
                provider.logs()
            )
        });
        assert_eq!(ready["ready"], true, "unexpected ready line {line:?}");
        provider.issuer = ready["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("ready line without issuer: {line:?}"))
            .to_string();
        Ok(provider)
    }

    /// Stops the provider now (as on drop): it no longer answers, its port is closed.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the provider wrote to stderr so far (requests, logins, errors,
    /// back-channel logout results).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The access tokens issued so far, in order, as `(grant type, fingerprint)` read
    /// from the provider's log (`access_token.saved gty=... sha256=...`, see
    /// `server.mjs`); compare with [`fingerprint`] of a token seen elsewhere. The grant
    /// type is the last of oidc-provider's chain: `authorization_code` for a token from
    /// the code grant, `refresh_token` for one from a refresh.
    pub fn issued_access_tokens(&self) -> Vec<(String, String)> {
        self.logs()
            .lines()
            .filter_map(|l| {
                let rest = l.split_once("access_token.saved gty=")?.1;
                let (gty, fp) = rest.split_once(" sha256=")?;
                let last = gty.rsplit(' ').next().unwrap_or(gty);
                Some((last.to_string(), fp.trim().to_string()))
            })
            .collect()
    }

    /// Destroys every grant of the account `sub` at the provider (`/_test/revoke-grants`,
    /// see `server.mjs`), so its refresh tokens are refused from now on; returns how
    /// many grants there were.
    pub async fn revoke_grants(&self, sub: &str) -> u64 {
        let resp = reqwest::Client::new()
            .post(format!("{}/_test/revoke-grants", self.issuer))
            .form(&[("sub", sub)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("revoke-grants: {e}\n{}", self.logs()));
        assert_eq!(resp.status(), 200, "revoke-grants\n{}", self.logs());
        let v: serde_json::Value = resp.json().await.expect("revoke-grants answers JSON");
        v["revoked"].as_u64().expect("revoked count")
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }
}

/// How `server.mjs` names a token in its log: the first 16 hex digits of its SHA-256.
pub fn fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The real provider with one client `portcullis` (secret `secret`) registered for a
/// gateway that is then started in front of `echo` with provider `op` (`provider_extra`:
/// more lines of its entry, indented by 4 spaces), the `session` section and `policy`.
/// The gateway's port is picked first, since the provider needs its redirect URI before
/// the gateway runs. Returns once the gateway has discovered the provider.
pub async fn with_gateway(
    secret: &str,
    echo: &super::Echo,
    session: &str,
    provider_extra: &str,
    policy: &str,
) -> (OidcProvider, super::Gateway) {
    let port = super::free_port();
    let admin_port = super::free_port();
    let redirect = format!("http://127.0.0.1:{port}/.portcullis/callback");
    let op = OidcProvider::start(vec![OidcClientSpec::new("portcullis", secret, &redirect)]).await;
    let extra = format!(
        "{session}providers:\n  - id: op\n    issuer: \"{}\"\n    client_id: portcullis\n    client_secret: {{ file: client-secret }}\n{provider_extra}\n{}",
        op.issuer,
        super::upstream_app(echo.addr)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), secret).unwrap();
    let gw = super::Gateway::start_in(
        dir,
        &super::gateway_yaml(port, admin_port, &extra),
        port,
        admin_port,
        &[("routes.yaml", policy)],
    )
    .await;
    super::identity::wait_discovered(&gw).await;
    (op, gw)
}
