//! Policy decisions: what a route's rules say about a request, as a value with a reason.
//!
//! Reasons are kebab-case codes reused verbatim in responses, logs and metrics.

use crate::config::AuthMode;

/// The outcome of evaluating a route's policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the request on to the upstream.
    Allow,
    /// Refuse with 403.
    Deny { reason: &'static str },
}

/// Decides for a request that matched a route with `auth`.
pub fn decide(auth: AuthMode) -> Decision {
    match auth {
        AuthMode::Public => Decision::Allow,
        AuthMode::Deny => Decision::Deny {
            reason: "route-denied",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_allows_and_deny_denies_with_a_reason() {
        assert_eq!(decide(AuthMode::Public), Decision::Allow);
        assert_eq!(
            decide(AuthMode::Deny),
            Decision::Deny {
                reason: "route-denied"
            }
        );
    }
}
