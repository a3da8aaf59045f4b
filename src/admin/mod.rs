//! The admin listener: health, readiness, metrics and reload, on its own address
//! (loopback by default). Everything but the health probes needs the admin token when
//! one is configured.

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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("GET" | "HEAD", "/readyz") => self.ready().await,
            (_, "/metrics" | "/reload") if !self.authorised(session) => {
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
