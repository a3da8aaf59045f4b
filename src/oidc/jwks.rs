//! A provider's signing keys (its JWKS), cached. Keys are found by `kid` only: a token's
//! `jku`, `x5u`, `jwk` or `x5c` header never chooses a key, since the token's author
//! would then choose the key that checks it.

use crate::clock::Clock;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shortest time between two fetches triggered by unknown key ids. Counted between such
/// fetches only, so the first token signed with a newly rotated key is accepted at once
/// even right after a scheduled fetch.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// One usable key.
pub struct Key {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key is then good for that only.
    pub alg: Option<Algorithm>,
    pub family: jsonwebtoken::AlgorithmFamily,
    pub key: DecodingKey,
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No key with the token's `kid` (after a refresh, if one was allowed).
    Unknown,
    /// No `kid`, and the set holds several keys.
    Ambiguous,
}

pub struct Jwks {
    provider: String,
    keys: ArcSwap<Vec<Arc<Key>>>,
    /// When a fetch for an unknown `kid` last started (Unix ms; 0: never).
    last_forced_ms: AtomicU64,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(provider: &str, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Jwks {
        Jwks {
            provider: provider.to_string(),
            keys: ArcSwap::from_pointee(Vec::new()),
            last_forced_ms: AtomicU64::new(0),
            clock,
            metrics,
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.load().is_empty()
    }

    /// The key for a token with `kid` signed with `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, KeyError> {
        let keys = self.keys.load();
        let fits = |k: &&Arc<Key>| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid))
                .cloned()
                .ok_or(KeyError::Unknown),
            // Without a `kid` a key is chosen only when the set holds exactly one:
            // guessing among several would let the token steer the choice.
            None => match keys.as_slice() {
                [only] if fits(&only) => Ok(only.clone()),
                [] | [_] => Err(KeyError::Unknown),
                _ => Err(KeyError::Ambiguous),
            },
        }
    }

    /// Fetches and replaces the key set.
    pub async fn fetch(&self, http: &reqwest::Client, uri: &str) -> Result<usize, String> {
        let result = async {
            let resp = http
                .get(uri)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status().as_u16()));
            }
            let body = super::read_limited(resp).await.map_err(|e| e.to_string())?;
            parse_jwks(&body)
        }
        .await;
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.metrics.jwks_fetch(&self.provider, true);
                Ok(n)
            }
            Err(e) => {
                self.metrics.jwks_fetch(&self.provider, false);
                Err(e)
            }
        }
    }

    /// Fetches again unless a fetch happened within [`MIN_REFRESH_INTERVAL`]; concurrent
    /// callers share one fetch. True when a fetch was made and succeeded.
    pub async fn refresh_if_allowed(&self, http: &reqwest::Client, uri: &str) -> bool {
        let allowed = |last: u64| {
            self.clock.now_ms().saturating_sub(last) >= MIN_REFRESH_INTERVAL.as_millis() as u64
        };
        let last = self.last_forced_ms.load(Ordering::Relaxed);
        if last != 0 && !allowed(last) {
            return false;
        }
        let _guard = self.fetch_lock.lock().await;
        // Someone else may have fetched while we waited.
        let last = self.last_forced_ms.load(Ordering::Relaxed);
        if last != 0 && !allowed(last) {
            return false;
        }
        self.last_forced_ms
            .store(self.clock.now_ms().max(1), Ordering::Relaxed);
        self.fetch(http, uri).await.is_ok()
    }
}

/// The signing keys of a JWKS document. Keys for encryption, of unknown types or that
/// do not parse are skipped, not fatal: one odd key must not take the others down.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = Vec::new();
    for v in doc.keys {
        if v.get("use")
            .and_then(|u| u.as_str())
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let family = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                jsonwebtoken::AlgorithmFamily::Ec
            }
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                jsonwebtoken::AlgorithmFamily::Ed
            }
            // Symmetric keys never verify provider tokens here.
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(Arc::new(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn encryption_and_symmetric_keys_are_skipped_and_bad_keys_do_not_spoil_the_set() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "weird", "kid": "x"},
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert_eq!(keys[0].alg, Some(Algorithm::RS256));
    }
}
