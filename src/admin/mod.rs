//! The admin listener: health, readiness, metrics, reload and the sessions API, on its
//! own address (loopback by default). Everything but the health probes needs the admin
//! token when one is configured; the sessions API (which can end anyone's sessions)
//! needs a token configured at all.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/sessions?provider=<id>&sub=<sub>` | GET | the user's live sessions |
//! | `/sessions?provider=<id>&sub=<sub>` | DELETE | end all of them |
//! | `/sessions/<session id>?provider=<id>&sub=<sub>` | DELETE | end one |
//! | `/sessions/count` | GET | sessions in the store |

use crate::runtime::Gateway;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The admin HTTP application.
pub struct AdminApp {
    pub gateway: Arc<Gateway>,
}

fn reply(status: StatusCode, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    crate::responses::app_response(status.as_u16(), ctype, body)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    crate::responses::app_json(status.as_u16(), v)
}

impl AdminApp {
    /// True when the request carries the configured token (or none is configured).
    fn authorised(&self, session: &ServerSession) -> bool {
        let rt = self.gateway.snapshot();
        let Some(token) = &rt.config.admin.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .unwrap_or("");
        presented.as_bytes().ct_eq(token.expose().as_bytes()).into()
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        let rt = self.gateway.snapshot();
        // Shutting down: out of rotation first, while requests in flight (and any that
        // still arrive) are served.
        if self
            .gateway
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "status": "draining",
                    "config_generation": rt.generation,
                }),
            );
        }
        let upstreams: serde_json::Map<String, serde_json::Value> = rt
            .upstreams
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "targets": u.spec.targets.len(),
                        "healthy": u.healthy_targets(),
                    }),
                )
            })
            .collect();
        // Sessions and providers are reported, not gated on: with the store or a provider
        // down, public routes still serve, so the instance stays in rotation (protected
        // routes fail closed by themselves, and the metrics say so).
        let store_up = rt.store.ping().await.is_ok();
        let providers: serde_json::Map<String, serde_json::Value> = rt
            .providers
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    serde_json::json!({
                        "discovered": p.discovered().is_some(),
                        "keys": !p.keys.is_empty(),
                    }),
                )
            })
            .collect();
        let degraded = !store_up
            || rt
                .providers
                .values()
                .any(|p| p.discovered().is_none() || p.keys.is_empty());
        json(
            StatusCode::OK,
            serde_json::json!({
                "status": if degraded { "degraded" } else { "ready" },
                "config_generation": rt.generation,
                "routes": rt.routes.len(),
                "upstreams": upstreams,
                "session_store": if store_up { "up" } else { "down" },
                "providers": providers,
            }),
        )
    }

    /// The sessions API. Effective at once on every gateway sharing the store, since
    /// each request reads its session from the store.
    async fn sessions(&self, method: &str, path: &str, query: &str) -> Response<Vec<u8>> {
        let rt = self.gateway.snapshot();
        if method == "GET" && path == "/sessions/count" {
            return match rt.sessions.count_active().await {
                Ok(n) => json(StatusCode::OK, serde_json::json!({ "active": n })),
                Err(_) => store_down(),
            };
        }
        let mut provider = None;
        let mut sub = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "provider" => provider = Some(v.into_owned()),
                "sub" => sub = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(provider), Some(sub)) = (provider, sub) else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "user-missing", "message": "give provider=<id>&sub=<subject>" }),
            );
        };
        let Some(spec) = rt.config.providers.iter().find(|p| p.id == provider) else {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "provider-unknown" }),
            );
        };
        let user = crate::session::user_key(&spec.issuer, &sub);
        // `/sessions/` with an empty id (an unset variable in a script) names no session;
        // it must not fall through to "all of the user's sessions".
        let one = path.strip_prefix("/sessions/");
        match (method, one) {
            ("GET", None) => match rt.sessions.list_user(&user).await {
                Ok(list) => {
                    let items: Vec<serde_json::Value> = list
                        .iter()
                        .map(|(hash, s)| {
                            serde_json::json!({
                                "id": crate::session::handle(hash),
                                "provider": s.provider,
                                "population": s.population,
                                "created_ms": s.created_ms,
                                "last_seen_ms": s.last_seen_ms,
                                "client_ip": s.client_ip,
                                "user_agent": s.user_agent,
                                "acr": s.acr,
                            })
                        })
                        .collect();
                    json(
                        StatusCode::OK,
                        serde_json::json!({ "user": format!("{provider}:{sub}"), "sessions": items }),
                    )
                }
                Err(_) => store_down(),
            },
            ("DELETE", None) => match rt.sessions.destroy_user(&user).await {
                Ok(ended) => {
                    crate::lifecycle::sessions_ended(&rt, &ended, "revoked");
                    log::info!(
                        "admin: ended {} session(s) of a user of {provider}",
                        ended.len()
                    );
                    json(StatusCode::OK, serde_json::json!({ "ended": ended.len() }))
                }
                Err(_) => store_down(),
            },
            ("DELETE", Some(h)) => {
                let list = match rt.sessions.list_user(&user).await {
                    Ok(l) => l,
                    Err(_) => return store_down(),
                };
                let Some((hash, _)) = list
                    .iter()
                    .find(|(hash, _)| crate::session::handle(hash) == h)
                else {
                    return json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({ "error": "session-unknown" }),
                    );
                };
                match rt.sessions.destroy_hash(hash).await {
                    Ok(ended) => {
                        let ended: Vec<_> = ended.into_iter().collect();
                        crate::lifecycle::sessions_ended(&rt, &ended, "revoked");
                        json(StatusCode::OK, serde_json::json!({ "ended": ended.len() }))
                    }
                    Err(_) => store_down(),
                }
            }
            _ => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "method-not-allowed" }),
            ),
        }
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let gw = self.gateway.clone();
        let result =
            tokio::task::spawn_blocking(move || gw.reload().map_err(|e| e.to_string())).await;
        match result {
            Ok(Ok(generation)) => json(
                StatusCode::OK,
                serde_json::json!({ "result": "success", "config_generation": generation }),
            ),
            Ok(Err(errors)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "result": "error",
                    "errors": errors.lines().collect::<Vec<_>>(),
                }),
            ),
            Err(_) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "result": "error" }),
            ),
        }
    }
}

fn unauthorised() -> Response<Vec<u8>> {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "error": "admin-token-required" }),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
    );
    r
}

fn store_down() -> Response<Vec<u8>> {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "error": "session-store-unavailable" }),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        if path == "/sessions" || path.starts_with("/sessions/") {
            if self.gateway.snapshot().config.admin.token.is_none() {
                return json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({
                        "error": "admin-token-not-configured",
                        "message": "the sessions API needs admin.token in gateway.yaml",
                    }),
                );
            }
            if !self.authorised(session) {
                return unauthorised();
            }
            return self.sessions(method.as_str(), &path, &query).await;
        }
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("GET" | "HEAD", "/readyz") => self.ready().await,
            (_, "/metrics" | "/reload") if !self.authorised(session) => unauthorised(),
            ("GET" | "HEAD", "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.gateway.metrics.render(),
            ),
            ("POST", "/reload") => self.reload().await,
            (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "method-not-allowed" }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not-found" }),
            ),
        }
    }
}
