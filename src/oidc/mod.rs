//! OpenID providers at run time: discovery (with the exact issuer check), signing keys,
//! the authorization request, the code exchange and UserInfo.
//!
//! A [`Provider`] lives across reloads while its settings do not change. Its metadata and
//! keys are fetched off the request path by a background task ([`Provider::refresh`]),
//! and again when a token names a key we do not know, at most once per
//! [`jwks::MIN_REFRESH_INTERVAL`], so a flood of forged tokens cannot hammer the IdP.
//! Until discovery has succeeded, logins to the provider answer 503.
//!
//! `openidconnect` types the discovery document and builds the authorization request;
//! tokens are checked with `jsonwebtoken` in [`token`], with our clock, our leeway and one
//! reason code per failure.

pub mod flow;
pub mod jwks;
pub mod token;

use crate::clock::Clock;
use crate::config::ProviderSpec;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long discovery metadata is trusted before it is fetched again.
pub const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest wait for any request to a provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted from a provider.
const MAX_RESPONSE_BYTES: usize = 512 * 1024;

/// What discovery told us, checked.
#[derive(Debug)]
pub struct Discovered {
    pub metadata: openidconnect::core::CoreProviderMetadata,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
    /// Configured algorithms that the provider also advertises for ID tokens.
    pub id_token_algorithms: Vec<Algorithm>,
    /// RFC 9207: the provider puts `iss` on authorization responses.
    pub iss_parameter_supported: bool,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub secret_in_body: bool,
    pub fetched_ms: u64,
}

/// Why talking to a provider failed; the reason codes are stable.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    #[error("provider answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("provider response invalid: {0}")]
    Invalid(String),
    #[error("discovered issuer {found:?} is not the configured {expected:?}")]
    IssuerMismatch { expected: String, found: String },
}

impl ProviderError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Unreachable(_) => "unreachable",
            ProviderError::Status { .. } => "bad-status",
            ProviderError::Invalid(_) => "invalid-response",
            ProviderError::IssuerMismatch { .. } => "issuer-mismatch",
        }
    }
}

/// A provider's extra discovery fields that `openidconnect`'s core metadata does not
/// type.
#[derive(Deserialize)]
struct Extras {
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds the access token lives.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// One configured provider and what we have learnt about it.
pub struct Provider {
    pub spec: ProviderSpec,
    pub redirect_uri: String,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    meta: ArcSwapOption<Discovered>,
    pub keys: jwks::Jwks,
    /// When discovery or the key fetch last failed (Unix ms), and how many times in a
    /// row, for back-off.
    last_failure_ms: AtomicU64,
    failures: AtomicU64,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Provider {
    pub fn new(
        spec: ProviderSpec,
        redirect_uri: String,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Provider, String> {
        let http = http_client()?;
        metrics.provider_up(&spec.id, false);
        Ok(Provider {
            keys: jwks::Jwks::new(&spec.id, clock.clone(), metrics.clone()),
            spec,
            redirect_uri,
            http,
            clock,
            metrics,
            meta: ArcSwapOption::empty(),
            last_failure_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refresh_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The discovered metadata, if discovery has succeeded.
    pub fn discovered(&self) -> Option<Arc<Discovered>> {
        self.meta.load_full()
    }

    /// Runs discovery when it has never succeeded (with back-off) or is older than
    /// [`METADATA_MAX_AGE`], and fetches the keys with it. Called by the background task.
    pub async fn refresh(&self) {
        let now = self.clock.now_ms();
        let current = self.discovered();
        let stale = current.as_ref().is_none_or(|d| {
            now.saturating_sub(d.fetched_ms) >= METADATA_MAX_AGE.as_millis() as u64
        });
        if !stale && !self.keys.is_empty() {
            return;
        }
        // After failures, wait 0.25 s, 0.5 s, 1 s ... up to a minute between attempts:
        // quick while a provider is starting next to us, gentle during an outage.
        let failures = self.failures.load(Ordering::Relaxed);
        let wait = (250u64 << failures.min(8)).min(60_000);
        if failures > 0 && now.saturating_sub(self.last_failure_ms.load(Ordering::Relaxed)) < wait {
            return;
        }
        let _guard = self.refresh_lock.lock().await;
        let result = match current {
            Some(d) if !stale => self.fetch_keys(&d.jwks_uri).await,
            _ => match self.discover().await {
                Ok(d) => {
                    let jwks_uri = d.jwks_uri.clone();
                    self.meta.store(Some(Arc::new(d)));
                    self.fetch_keys(&jwks_uri).await
                }
                Err(e) => {
                    self.metrics
                        .provider_error(self.id(), "discovery", e.kind());
                    // Metadata we had stays in use until it can be replaced.
                    Err(format!("discovery failed: {e}"))
                }
            },
        };
        // Up means usable: metadata and at least one key.
        self.metrics.provider_up(
            self.id(),
            self.discovered().is_some() && !self.keys.is_empty(),
        );
        match result {
            Ok(()) => self.failures.store(0, Ordering::Relaxed),
            Err(e) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed);
                self.last_failure_ms.store(now, Ordering::Relaxed);
                // The first failure of a streak, then every tenth: an IdP outage must not
                // flood the log.
                if n.is_multiple_of(10) {
                    log::warn!("provider {}: {e} (retrying with back-off)", self.id());
                }
            }
        }
    }

    /// Records a request to the provider: its latency, and its failure when the fault is
    /// the provider's (unreachable, a 5xx, a response we cannot use). Discovery failures
    /// are counted by [`Self::refresh`]; a 4xx is about the request, not the provider.
    fn observe<T>(
        &self,
        operation: &'static str,
        started: std::time::Instant,
        r: &Result<T, ProviderError>,
    ) {
        self.metrics
            .provider_request(self.id(), operation, started.elapsed().as_secs_f64());
        if let Err(e) = r {
            let providers_fault = match e {
                ProviderError::Status { status, .. } => *status >= 500,
                _ => true,
            };
            if providers_fault && operation != "discovery" {
                self.metrics.provider_error(self.id(), operation, e.kind());
            }
        }
    }

    async fn fetch_keys(&self, uri: &str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let fetched = self.keys.fetch(&self.http, uri).await;
        self.metrics
            .provider_request(self.id(), "jwks", started.elapsed().as_secs_f64());
        match fetched {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics
                    .provider_error(self.id(), "jwks", "unreachable");
                Err(format!("cannot fetch signing keys: {e}"))
            }
        }
    }

    async fn discover(&self) -> Result<Discovered, ProviderError> {
        let started = std::time::Instant::now();
        let r = self.discover_now().await;
        self.observe("discovery", started, &r);
        r
    }

    async fn discover_now(&self) -> Result<Discovered, ProviderError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.spec.issuer.trim_end_matches('/')
        );
        let body = get_json_bytes(&self.http, &url, None).await?;
        let extras: Extras =
            serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let metadata: openidconnect::core::CoreProviderMetadata =
            serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))?;
        // Exactly equal, as OpenID Connect Discovery §4.3 says: not after URL
        // normalisation, not ignoring a trailing slash.
        if metadata.issuer().as_str() != self.spec.issuer {
            return Err(ProviderError::IssuerMismatch {
                expected: self.spec.issuer.clone(),
                found: metadata.issuer().as_str().to_string(),
            });
        }
        let token_endpoint = metadata
            .token_endpoint()
            .map(|u| u.as_str().to_string())
            .ok_or_else(|| ProviderError::Invalid("no token_endpoint".into()))?;
        let advertised: Vec<Algorithm> = extras
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let id_token_algorithms: Vec<Algorithm> = self
            .spec
            .algorithms
            .iter()
            .copied()
            .filter(|a| advertised.contains(a))
            .collect();
        if id_token_algorithms.is_empty() {
            return Err(ProviderError::Invalid(format!(
                "the provider signs ID tokens with {:?}; none is accepted here",
                extras.id_token_signing_alg_values_supported
            )));
        }
        if let Some(methods) = &extras.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err(ProviderError::Invalid(
                    "the provider does not support PKCE with S256".into(),
                ));
            }
        }
        let secret_in_body = extras
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                !m.iter().any(|x| x == "client_secret_basic")
                    && m.iter().any(|x| x == "client_secret_post")
            });
        Ok(Discovered {
            token_endpoint,
            userinfo_endpoint: metadata.userinfo_endpoint().map(|u| u.as_str().to_string()),
            jwks_uri: metadata.jwks_uri().as_str().to_string(),
            end_session_endpoint: extras.end_session_endpoint,
            id_token_algorithms,
            iss_parameter_supported: extras.authorization_response_iss_parameter_supported,
            secret_in_body,
            fetched_ms: self.clock.now_ms(),
            metadata,
        })
    }

    /// Fetches the keys again after a token named one we do not have, unless that was
    /// done within the last [`jwks::MIN_REFRESH_INTERVAL`]. True when the set changed.
    pub async fn refresh_keys_for_unknown_kid(&self) -> bool {
        let Some(d) = self.discovered() else {
            return false;
        };
        self.keys.refresh_if_allowed(&self.http, &d.jwks_uri).await
    }

    /// Redeems an authorization code (with the PKCE verifier) at the token endpoint.
    pub async fn exchange_code(
        &self,
        d: &Discovered,
        code: &str,
        verifier: &str,
    ) -> Result<TokenResponse, ProviderError> {
        let started = std::time::Instant::now();
        let r = self
            .token_request(
                d,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.redirect_uri),
                    ("code_verifier", verifier),
                ],
            )
            .await;
        self.observe("token", started, &r);
        r
    }

    /// Uses a refresh token (OpenID Connect Core §12).
    pub async fn refresh_tokens(
        &self,
        d: &Discovered,
        refresh_token: &str,
    ) -> Result<TokenResponse, ProviderError> {
        let started = std::time::Instant::now();
        let r = self
            .token_request(
                d,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
            )
            .await;
        self.observe("refresh", started, &r);
        r
    }

    /// A request to the token endpoint, authenticated as our client.
    async fn token_request(
        &self,
        d: &Discovered,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse, ProviderError> {
        let client = self
            .spec
            .client
            .as_ref()
            .ok_or_else(|| ProviderError::Invalid("provider has no client".into()))?;
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let mut req = self.http.post(&d.token_endpoint);
        if d.secret_in_body {
            form.push(("client_id", &client.client_id));
            form.push(("client_secret", client.client_secret.expose()));
        } else {
            // RFC 6749 §2.3.1: both are form-encoded before Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(
                enc(&client.client_id),
                Some(enc(client.client_secret.expose())),
            );
        }
        let resp = req
            .header(http::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable(without_url(e)))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp).await?;
        if status != 200 {
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_default();
            return Err(ProviderError::Status {
                status,
                detail: error,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid(e.to_string()))
    }

    /// The UserInfo claims for an access token (JSON responses only).
    pub async fn userinfo(
        &self,
        d: &Discovered,
        access_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
        let url = d
            .userinfo_endpoint
            .as_deref()
            .ok_or_else(|| ProviderError::Invalid("no userinfo_endpoint".into()))?;
        let started = std::time::Instant::now();
        let r = get_json_bytes(&self.http, url, Some(access_token))
            .await
            .and_then(|body| {
                serde_json::from_slice(&body)
                    .map_err(|_| ProviderError::Invalid("UserInfo is not a JSON object".into()))
            });
        self.observe("userinfo", started, &r);
        r
    }
}

/// The HTTP client for providers: no redirects (a provider endpoint that redirects is
/// misconfigured, and following could be steered elsewhere), short timeouts.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(HTTP_TIMEOUT)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

async fn get_json_bytes(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> Result<Vec<u8>, ProviderError> {
    let mut req = http
        .get(url)
        .header(http::header::ACCEPT, "application/json");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::Unreachable(without_url(e)))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(ProviderError::Status {
            status,
            detail: url.to_string(),
        });
    }
    read_limited(resp).await
}

pub(crate) async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ProviderError::Unreachable(without_url(e)))?
    {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::Invalid("response too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// reqwest's errors print the URL, which for the token endpoint is harmless but for a
/// UserInfo or JWKS URL could carry a secret in a query: keep only the error kind.
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_error_kinds_are_stable_labels() {
        assert_eq!(ProviderError::Unreachable("x".into()).kind(), "unreachable");
        assert_eq!(
            ProviderError::IssuerMismatch {
                expected: "a".into(),
                found: "b".into()
            }
            .kind(),
            "issuer-mismatch"
        );
    }
}
