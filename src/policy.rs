//! Policy decisions: what a route's rules say about a request, as a value with a reason.
//!
//! Reasons are kebab-case codes reused verbatim in responses, logs and metrics. The one
//! place decisions become responses is `proxy::stages::answer`.

use crate::config::{AuthMode, ClaimValue, MinAcr, PopulationSpec, Requirements, StepUpSpec};
use crate::session::Session;
use serde_json::Value;

/// The outcome of evaluating a route's policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the request on to the upstream.
    Allow,
    /// Refuse with 403: the route denies everyone, or the user does not meet `require`.
    Deny { reason: &'static str },
    /// No (valid) session: browsers are sent to log in, other clients get 401.
    Login { reason: &'static str },
    /// A bearer route without a valid token: 401 with a `WWW-Authenticate: Bearer`
    /// challenge; `error` is the RFC 6750 error code, if any.
    Unauthorized {
        reason: &'static str,
        error: Option<&'static str>,
    },
    /// Something we depend on is down (session store, provider): fail closed, 503.
    Unavailable { reason: &'static str },
    /// The user is who the route wants, but must prove more (a higher `acr`, or a
    /// fresher authentication): browsers go back to the provider, APIs get 401 with an
    /// RFC 9470 challenge.
    StepUp { reason: &'static str },
}

impl Decision {
    /// The decision's kind, for the access log.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Login { .. } => "login",
            Decision::Unauthorized { .. } => "unauthorized",
            Decision::Unavailable { .. } => "unavailable",
            Decision::StepUp { .. } => "step-up",
        }
    }

    pub fn reason(&self) -> Option<&'static str> {
        match *self {
            Decision::Allow => None,
            Decision::Deny { reason }
            | Decision::StepUp { reason }
            | Decision::Login { reason }
            | Decision::Unauthorized { reason, .. }
            | Decision::Unavailable { reason } => Some(reason),
        }
    }
}

/// Decides for a request that matched a route with `auth`, before any identity is
/// looked at: public routes pass, deny routes refuse, the rest need an identity.
pub fn decide(auth: AuthMode) -> Option<Decision> {
    match auth {
        AuthMode::Public => Some(Decision::Allow),
        AuthMode::Deny => Some(Decision::Deny {
            reason: "route-denied",
        }),
        AuthMode::Login | AuthMode::Bearer | AuthMode::LoginOrBearer => None,
    }
}

/// Checks a route's `require:` against an identity. The first unmet requirement is the
/// reason.
pub fn check(req: &Requirements, id: &Session) -> Decision {
    match unmet(req, id) {
        None => Decision::Allow,
        Some(reason) => Decision::Deny { reason },
    }
}

fn unmet(req: &Requirements, id: &Session) -> Option<&'static str> {
    let groups: Vec<&str> = match id.claims.get("groups") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => Vec::new(),
    };
    if !req.groups_any.is_empty() && !req.groups_any.iter().any(|g| groups.contains(&g.as_str())) {
        return Some("group-missing");
    }
    if !req.groups_all.iter().all(|g| groups.contains(&g.as_str())) {
        return Some("group-missing");
    }
    if !claims_match(&req.claims, id) {
        return Some("claim-mismatch");
    }
    // Some providers (Amazon Cognito among them) send the boolean as a string.
    let verified = matches!(id.claims.get("email_verified"), Some(Value::Bool(true)))
        || matches!(id.claims.get("email_verified"), Some(Value::String(s)) if s == "true");
    if let Some(want) = req.email_verified {
        if want && !verified {
            return Some("email-unverified");
        }
    }
    if !req.email_domains.is_empty() {
        let domain = id
            .claims
            .get("email")
            .and_then(Value::as_str)
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase());
        // An unverified address proves nothing about the domain.
        if !verified || !domain.is_some_and(|d| req.email_domains.contains(&d)) {
            return Some("email-domain-not-allowed");
        }
    }
    if let Some(min) = &req.acr {
        if !meets_acr(min, id) {
            return Some("acr-insufficient");
        }
    }
    None
}

/// Whether the route's step-up asks this identity for more: its level is below the
/// route's, or its authentication is older than `max_age` (at `now_s`).
pub fn step_up_needed(step: &StepUpSpec, id: &Session, now_s: u64) -> Option<&'static str> {
    if !meets_acr(&step.acr, id) {
        return Some("step-up-required");
    }
    if let Some(max) = step.max_age {
        let fresh = id
            .auth_time
            .is_some_and(|t| now_s.saturating_sub(t) <= max.as_secs());
        if !fresh {
            return Some("authentication-too-old");
        }
    }
    None
}

/// The session's `acr` is one that meets `min` at the session's provider.
pub fn meets_acr(min: &MinAcr, id: &Session) -> bool {
    min.accepted
        .iter()
        .find(|(p, _)| p == &id.provider)
        .is_some_and(|(_, values)| id.acr.as_ref().is_some_and(|a| values.contains(a)))
}

/// Every `(claim, value)` holds for the session.
fn claims_match(claims: &[(String, ClaimValue)], id: &Session) -> bool {
    claims.iter().all(|(name, want)| {
        let have = match name.as_str() {
            "sub" => Some(Value::String(id.subject.clone())),
            "provider" => Some(Value::String(id.provider.clone())),
            "user" => Some(Value::String(id.namespaced_user())),
            "population" => id.population.clone().map(Value::String),
            "acr" => id.acr.clone().map(Value::String),
            _ => id.claims.get(name).cloned(),
        };
        claim_equals(have.as_ref(), want)
    })
}

/// The population a signed-in user belongs to: the first (in `gateway.yaml` order)
/// that lists their provider and whose claims they have.
pub fn population_of<'a>(pops: &'a [PopulationSpec], id: &Session) -> Option<&'a PopulationSpec> {
    pops.iter()
        .find(|p| p.providers.contains(&id.provider) && claims_match(&p.claims, id))
}

/// A claim equals the wanted value; for a list claim, when the list contains it.
fn claim_equals(have: Option<&Value>, want: &ClaimValue) -> bool {
    let one = |v: &Value| match (v, want) {
        (Value::String(s), ClaimValue::Str(w)) => s == w,
        (Value::Bool(b), ClaimValue::Bool(w)) => b == w,
        (Value::Number(n), ClaimValue::Int(w)) => n.as_i64() == Some(*w),
        _ => false,
    };
    match have {
        Some(Value::Array(items)) => items.iter().any(one),
        Some(v) => one(v),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MinAcr;
    use serde_json::json;

    fn user(claims: Value, acr: Option<&str>) -> Session {
        Session {
            provider: "corp".into(),
            issuer: "https://id.example".into(),
            subject: "u1".into(),
            claims: claims.as_object().unwrap().clone(),
            acr: acr.map(str::to_string),
            amr: vec![],
            auth_time: None,
            ..Session::default()
        }
    }

    #[test]
    fn public_allows_and_deny_denies_with_a_reason() {
        assert_eq!(decide(AuthMode::Public), Some(Decision::Allow));
        assert_eq!(
            decide(AuthMode::Deny),
            Some(Decision::Deny {
                reason: "route-denied"
            })
        );
        assert_eq!(decide(AuthMode::Login), None);
    }

    #[test]
    fn groups_any_and_all() {
        let u = user(json!({"groups": ["staff", "ops"]}), None);
        let any = Requirements {
            groups_any: vec!["admins".into(), "ops".into()],
            ..Default::default()
        };
        assert_eq!(check(&any, &u), Decision::Allow);
        let all = Requirements {
            groups_all: vec!["staff".into(), "admins".into()],
            ..Default::default()
        };
        assert_eq!(
            check(&all, &u),
            Decision::Deny {
                reason: "group-missing"
            }
        );
        let none = user(json!({}), None);
        assert_eq!(
            check(&any, &none),
            Decision::Deny {
                reason: "group-missing"
            }
        );
    }

    #[test]
    fn claims_email_and_domain() {
        let u = user(
            json!({"email": "a@Example.com", "email_verified": true, "dept": "sales", "level": 3}),
            None,
        );
        let r = Requirements {
            claims: vec![
                ("dept".into(), ClaimValue::Str("sales".into())),
                ("level".into(), ClaimValue::Int(3)),
            ],
            email_verified: Some(true),
            email_domains: vec!["example.com".into()],
            ..Default::default()
        };
        assert_eq!(check(&r, &u), Decision::Allow);
        let wrong = Requirements {
            claims: vec![("dept".into(), ClaimValue::Str("ops".into()))],
            ..Default::default()
        };
        assert_eq!(
            check(&wrong, &u),
            Decision::Deny {
                reason: "claim-mismatch"
            }
        );
        let unverified = user(
            json!({"email": "a@example.com", "email_verified": false}),
            None,
        );
        let domain_only = Requirements {
            email_domains: vec!["example.com".into()],
            ..Default::default()
        };
        assert_eq!(
            check(&domain_only, &unverified),
            Decision::Deny {
                reason: "email-domain-not-allowed"
            }
        );
        let r2 = Requirements {
            email_verified: Some(true),
            ..Default::default()
        };
        assert_eq!(
            check(&r2, &unverified),
            Decision::Deny {
                reason: "email-unverified"
            }
        );
    }

    #[test]
    fn acr_levels_count_from_the_minimum_up() {
        let r = Requirements {
            acr: Some(MinAcr {
                level: "mfa".into(),
                accepted: vec![("corp".into(), vec!["loa2".into(), "loa3".into()])],
            }),
            ..Default::default()
        };
        assert_eq!(check(&r, &user(json!({}), Some("loa3"))), Decision::Allow);
        assert_eq!(
            check(&r, &user(json!({}), Some("loa1"))),
            Decision::Deny {
                reason: "acr-insufficient"
            }
        );
        assert_eq!(
            check(&r, &user(json!({}), None)),
            Decision::Deny {
                reason: "acr-insufficient"
            }
        );
    }
}
