//! Authentication in the request path: who is this request from? A session (found by
//! the cookie's id in the store) or a bearer token (checked against the route's
//! issuers). The answer, with the route's `require:`, is a [`Decision`].

use crate::config::AuthMode;
use crate::cookies;
use crate::oidc::{flow, token, Provider};
use crate::policy::{self, Decision};
use crate::runtime::{Route, Runtime};
use crate::session::{Session, SessionId};
use http::HeaderMap;

/// Who the request is from, once authenticated.
pub struct Authenticated {
    pub identity: Session,
    /// The session's id, when the identity came from a session.
    pub session_id: Option<SessionId>,
}

/// Decides a request to `route`. Only routes that need an identity reach the store or
/// check a token.
pub async fn authorize(
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> (Decision, Option<Authenticated>) {
    authorize_from(rt, route, headers, None).await
}

/// [`authorize`], knowing the client's address (risk signals use it).
pub async fn authorize_from(
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
) -> (Decision, Option<Authenticated>) {
    if let Some(d) = policy::decide(route.auth) {
        return (d, None);
    }
    let bearer = matches!(route.auth, AuthMode::Bearer)
        || (route.auth == AuthMode::LoginOrBearer
            && headers.contains_key(http::header::AUTHORIZATION));
    let found = if bearer {
        from_bearer(rt, route, headers).await
    } else {
        from_session(rt, route, headers).await
    };
    match found {
        Err(d) => (d, None),
        Ok(a) => {
            let pops = &route.identity.populations;
            if !pops.is_empty()
                && !a
                    .identity
                    .population
                    .as_ref()
                    .is_some_and(|p| pops.contains(p))
            {
                return (
                    Decision::Deny {
                        reason: "population-not-allowed",
                    },
                    Some(a),
                );
            }
            let decision = policy::check(&route.identity.require, &a.identity);
            if decision != Decision::Allow {
                return (decision, Some(a));
            }
            let now_s = rt.clock.now_ms() / 1000;
            let risk = &route.identity.risk;
            if risk.decides() {
                if let Some(d) = decide_by_risk(rt, route, headers, client_ip, &a, now_s).await {
                    return (d, Some(a));
                }
            }
            if risk.step_up_at.is_none() {
                if let Some(step) = &route.identity.step_up {
                    // A step-up without a risk threshold applies to every request, also
                    // on a route that denies by risk (and whatever the risk mode).
                    if let Some(reason) = policy::step_up_needed(step, &a.identity, now_s) {
                        return (Decision::StepUp { reason }, Some(a));
                    }
                }
            }
            (Decision::Allow, Some(a))
        }
    }
}

/// Scores the request and decides by the route's thresholds: deny, step up, or nothing
/// (`None`). In shadow mode the decision is reported (metric, audit) but not taken.
async fn decide_by_risk(
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
    a: &Authenticated,
    now_s: u64,
) -> Option<Decision> {
    let rr = &route.identity.risk;
    let spec = &rt.config.risk;
    let mut counts = crate::risk::AddressCounts::default();
    if spec.reads_address_counts() {
        if let Some(ip) = client_ip {
            // Unknown (store down) counts as none: the store's own outage already
            // fails protected routes closed.
            counts = crate::regulation::address_counts(rt.store.as_ref(), ip, now_s * 1000)
                .await
                .unwrap_or_default();
        }
    }
    let facts = crate::risk::Facts {
        client_ip,
        user_agent: headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        now_s,
        counts,
    };
    let assessment = crate::risk::assess(spec, rr, &a.identity, &facts);
    let step_needed = route
        .identity
        .step_up
        .as_ref()
        .and_then(|st| policy::step_up_needed(st, &a.identity, now_s));
    let v = crate::risk::verdict(rr, assessment.score, step_needed.is_some());
    let (outcome, threshold) = (v.outcome, v.threshold);
    let decision = match outcome {
        "deny" => Some(Decision::Deny {
            reason: "risk-too-high",
        }),
        "step-up" => Some(Decision::StepUp {
            reason: "risk-step-up",
        }),
        _ => None,
    };
    let mode = rr.mode.unwrap_or(spec.mode);
    rt.metrics
        .risk_decision(&route.name, outcome, mode.label(), assessment.top_signal());
    if outcome != "allow" {
        let signals: serde_json::Map<String, serde_json::Value> = assessment
            .contributions
            .iter()
            .map(|c| (c.signal.to_string(), c.points.into()))
            .collect();
        rt.audit.emit(
            "risk-decision",
            serde_json::json!({
                "route": &*route.name,
                "user": crate::audit::pseudonym(&a.identity.user_key()),
                "score": assessment.score,
                "signals": signals,
                "threshold": threshold,
                "mode": mode.label(),
                "outcome": outcome,
            }),
        );
    }
    match mode {
        crate::config::RiskMode::Shadow => None,
        crate::config::RiskMode::Enforce => decision,
    }
}

/// The live session named by the request's cookie.
pub async fn session_of(rt: &Runtime, headers: &HeaderMap) -> Result<Authenticated, Decision> {
    let cookie = cookies::find(headers, &rt.config.session.cookie_name).ok_or(Decision::Login {
        reason: "user-unauthenticated",
    })?;
    let id = SessionId::parse(cookie).ok_or(Decision::Login {
        reason: "session-unknown",
    })?;
    match rt.sessions.load(&id).await {
        Err(e) => {
            log::warn!("session lookup failed: {e}");
            Err(Decision::Unavailable {
                reason: "session-store-unavailable",
            })
        }
        Ok(Err(ended)) => {
            if ended != crate::session::Ended::Unknown {
                rt.metrics.sessions_ended(ended.reason(), 1);
            }
            Err(Decision::Login {
                reason: ended.reason(),
            })
        }
        Ok(Ok(identity)) => Ok(Authenticated {
            identity,
            session_id: Some(id),
        }),
    }
}

async fn from_session(
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Authenticated, Decision> {
    let a = session_of(rt, headers).await?;
    // A session from a provider the route does not accept is no login for it.
    if !route.identity.providers.contains(&a.identity.provider) {
        return Err(Decision::Login {
            reason: "provider-not-accepted",
        });
    }
    if crate::refresh::needed(rt, &a.identity, route.identity.forward_access_token) {
        return crate::refresh::ensure_fresh(rt, a).await;
    }
    Ok(a)
}

async fn from_bearer(
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Authenticated, Decision> {
    let unauthorized = |reason, error| Decision::Unauthorized { reason, error };
    let Some(rules) = &route.identity.bearer else {
        return Err(Decision::Deny {
            reason: "route-denied",
        });
    };
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let raw = match (values.next(), values.next()) {
        (None, _) => return Err(unauthorized("token-missing", None)),
        (Some(_), Some(_)) => return Err(unauthorized("token-malformed", Some("invalid_request"))),
        (Some(v), None) => v,
    };
    let token = raw
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
        .ok_or(unauthorized("token-malformed", Some("invalid_request")))?;
    let issuers: Vec<&Provider> = route
        .identity
        .providers
        .iter()
        .filter_map(|p| rt.providers.get(p).map(|p| p.as_ref()))
        .collect();
    let now_s = rt.clock.now_ms() / 1000;
    let token_rules = token::AccessTokenRules {
        audience: &rules.audience,
        require_at_jwt: rules.require_at_jwt,
    };
    let (provider, claims) = token::validate_access_token(&issuers, token, &token_rules, now_s)
        .await
        .map_err(|reason| match reason {
            "provider-unavailable" => Decision::Unavailable { reason },
            _ => unauthorized(reason, Some("invalid_token")),
        })?;
    let mut identity = flow::identity(provider, &claims);
    let population = policy::population_of(&rt.config.populations, &identity);
    // As at login: the population's minimum level holds for its tokens too, or a token
    // below it would pass routes reserved for that population.
    if let Some(min) = population.and_then(|p| p.acr.as_ref()) {
        if !policy::meets_acr(min, &identity) {
            return Err(Decision::Deny {
                reason: "acr-insufficient",
            });
        }
    }
    identity.population = population.map(|p| p.name.clone());
    Ok(Authenticated {
        identity,
        session_id: None,
    })
}

/// True for a request a browser makes when the user navigates (so a redirect to the
/// login page makes sense); scripts and API clients get 401 instead.
pub fn is_navigation(method: &http::Method, headers: &HeaderMap) -> bool {
    if !(method == http::Method::GET || method == http::Method::HEAD) {
        return false;
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode") {
        if mode.as_bytes() != b"navigate" {
            return false;
        }
    }
    !crate::responses::wants_json(headers.get(http::header::ACCEPT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigations_are_told_from_scripts_and_apis() {
        let mut h = HeaderMap::new();
        assert!(is_navigation(&http::Method::GET, &h));
        assert!(!is_navigation(&http::Method::POST, &h));
        h.insert("accept", "application/json".parse().unwrap());
        assert!(!is_navigation(&http::Method::GET, &h));
        let mut h = HeaderMap::new();
        h.insert("x-requested-with", "XMLHttpRequest".parse().unwrap());
        assert!(!is_navigation(&http::Method::GET, &h));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-mode", "cors".parse().unwrap());
        assert!(!is_navigation(&http::Method::GET, &h));
        h.insert("sec-fetch-mode", "navigate".parse().unwrap());
        assert!(is_navigation(&http::Method::GET, &h));
    }
}
