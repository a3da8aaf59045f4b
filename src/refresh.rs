//! Keeping a session's access token fresh with its refresh token.
//!
//! A session needs a fresh access token when the route forwards it to the upstream, or
//! when its population keeps sessions alive with the provider. Shortly before expiry
//! ([`REFRESH_BEFORE`]) the next request refreshes it. Only one request, on one gateway,
//! refreshes at a time: it takes a lock in the store (`lock:{<session hash>}`), and the
//! others wait (up to [`WAIT_FOR_REFRESH`]) for the session to show the new token, then
//! use it. A refresh the provider refuses ends the session; a provider that cannot be
//! reached leaves the old token in use until it expires, then fails closed.

use crate::auth::Authenticated;
use crate::lifecycle;
use crate::oidc::{token, ProviderError};
use crate::policy::Decision;
use crate::runtime::Runtime;
use crate::session::{keys, Session, SessionId, TokenKind};
use std::time::{Duration, Instant};

/// Refresh this long before the access token expires (or, for tokens living less than
/// twice this, half-way through their life, so that short-lived tokens are not
/// refreshed on every request).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// How long the lock is held at most (a token endpoint answers within 5 s or fails).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a request waits for another's refresh.
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(6);
const POLL: Duration = Duration::from_millis(25);

/// Whether `s` should be kept fresh for this request.
pub fn needed(rt: &Runtime, s: &Session, forwards_token: bool) -> bool {
    forwards_token || rt.population(s).is_some_and(|p| p.refresh_tokens)
}

fn due(s: &Session, now_ms: u64) -> bool {
    let Some(t) = s.tokens.as_ref() else {
        return false;
    };
    let Some(exp) = t.access_expires_ms else {
        return false;
    };
    let margin = REFRESH_BEFORE.as_millis() as u64;
    let margin = match t.access_issued_ms {
        Some(issued) => margin.min(exp.saturating_sub(issued) / 2),
        None => margin,
    };
    now_ms.saturating_add(margin) >= exp
}

fn expired(s: &Session, now_ms: u64) -> bool {
    s.tokens
        .as_ref()
        .and_then(|t| t.access_expires_ms)
        .is_some_and(|exp| now_ms >= exp)
}

/// The session, its access token refreshed when due.
pub async fn ensure_fresh(rt: &Runtime, a: Authenticated) -> Result<Authenticated, Decision> {
    let Some(id) = a.session_id.clone() else {
        return Ok(a);
    };
    if !due(&a.identity, rt.clock.now_ms()) {
        return Ok(a);
    }
    let hash = id.hash();
    let lock = keys::lock(&hash);
    let me = crate::oidc::flow::random_token();
    let unavailable = |_| Decision::Unavailable {
        reason: "session-store-unavailable",
    };
    if rt
        .store
        .put_if_absent(&lock, me.as_bytes(), LOCK_TTL)
        .await
        .map_err(unavailable)?
    {
        let result = refresh(rt, &id, a.identity).await;
        let _ = rt.store.delete_if_equals(&lock, me.as_bytes()).await;
        return result.map(|identity| Authenticated {
            identity,
            session_id: Some(id),
        });
    }
    // Someone else is refreshing: wait for the session to show the result.
    let old = a.identity;
    let started = Instant::now();
    while started.elapsed() < WAIT_FOR_REFRESH {
        tokio::time::sleep(POLL).await;
        match rt.sessions.peek(&id).await.map_err(unavailable)? {
            None => {
                return Err(Decision::Login {
                    reason: "refresh-failed",
                })
            }
            Some(s) if s.tokens != old.tokens => {
                return Ok(Authenticated {
                    identity: s,
                    session_id: Some(id),
                })
            }
            Some(_) => {}
        }
    }
    if expired(&old, rt.clock.now_ms()) {
        return Err(Decision::Unavailable {
            reason: "refresh-timeout",
        });
    }
    Ok(Authenticated {
        identity: old,
        session_id: Some(id),
    })
}

/// Holding the lock: refresh, store, and return the updated session.
async fn refresh(rt: &Runtime, id: &SessionId, stale: Session) -> Result<Session, Decision> {
    // Another gateway may have refreshed between our read and our lock.
    let mut s = match rt.sessions.peek(id).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(Decision::Login {
                reason: "session-unknown",
            })
        }
        Err(_) => {
            return Err(Decision::Unavailable {
                reason: "session-store-unavailable",
            })
        }
    };
    let now = rt.clock.now_ms();
    if !due(&s, now) {
        return Ok(s);
    }
    let provider = rt.providers.get(&s.provider);
    let pid = s.provider.clone();
    let Some(refresh_token) = rt.sessions.token(&s, TokenKind::Refresh) else {
        // Nothing to refresh with: the session lasts as long as its token.
        if expired(&s, now) {
            return end(rt, id).await;
        }
        return Ok(s);
    };
    let Some((provider, d)) = provider.and_then(|p| p.discovered().map(|d| (p, d))) else {
        return keep_or_fail(rt, stale, now, &pid);
    };
    match provider.refresh_tokens(&d, &refresh_token).await {
        Ok(resp) => {
            let Some(access) = resp.access_token.as_deref() else {
                rt.metrics.token_refresh(&pid, "invalid-response");
                return end(rt, id).await;
            };
            // A new ID token must be about the same user (OpenID Connect Core §12.2).
            if let Some(raw) = resp.id_token.as_deref() {
                if token::validate_refreshed_id_token(provider, raw, &s.subject, now / 1000)
                    .await
                    .is_err()
                {
                    rt.metrics.token_refresh(&pid, "invalid-response");
                    return end(rt, id).await;
                }
            }
            let mut t = s.tokens.clone().unwrap_or_default();
            t.access_token = rt.sessions.seal(&s, TokenKind::Access, access);
            t.access_expires_ms = resp
                .expires_in
                .map(|secs| now.saturating_add(secs.saturating_mul(1000)));
            t.access_issued_ms = Some(now);
            if let Some(r) = resp.refresh_token.as_deref() {
                t.refresh_token = rt.sessions.seal(&s, TokenKind::Refresh, r);
            }
            if let Some(i) = resp.id_token.as_deref() {
                t.id_token = rt.sessions.seal(&s, TokenKind::Id, i);
            }
            s.tokens = Some(t);
            if rt.sessions.update(id, &s).await.is_err() {
                return Err(Decision::Unavailable {
                    reason: "session-store-unavailable",
                });
            }
            rt.metrics.token_refresh(&pid, "success");
            Ok(s)
        }
        Err(ProviderError::Status { ref detail, .. }) if detail == "invalid_grant" => {
            // The provider refuses the grant: revoked, the user disabled, or the session
            // ended there. So it ends here. (Other errors, such as a wrong client secret
            // or a rate limit, are ours or passing, and must not end every session.)
            rt.metrics.token_refresh(&pid, "rejected");
            end(rt, id).await
        }
        Err(e) => {
            log::warn!("refresh at provider {pid} failed: {e}");
            keep_or_fail(rt, stale, now, &pid)
        }
    }
}

/// The provider cannot be reached: the old token serves until it expires.
fn keep_or_fail(rt: &Runtime, s: Session, now: u64, provider: &str) -> Result<Session, Decision> {
    rt.metrics.token_refresh(provider, "unavailable");
    if expired(&s, now) {
        Err(Decision::Unavailable {
            reason: "provider-unavailable",
        })
    } else {
        Ok(s)
    }
}

/// Ends the session whose refresh failed: browsers go back to login, APIs get 401.
async fn end(rt: &Runtime, id: &SessionId) -> Result<Session, Decision> {
    if let Ok(Some(s)) = rt.sessions.destroy(id).await {
        lifecycle::sessions_ended(rt, std::slice::from_ref(&s), "refresh-failed");
    }
    Err(Decision::Login {
        reason: "refresh-failed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SealedTokens;

    fn with_token(issued: Option<u64>, expires: u64) -> Session {
        Session {
            tokens: Some(SealedTokens {
                access_expires_ms: Some(expires),
                access_issued_ms: issued,
                ..SealedTokens::default()
            }),
            ..Session::default()
        }
    }

    #[test]
    fn tokens_are_due_a_minute_before_expiry_or_half_way_when_short_lived() {
        // An hour-long token: due in its last minute.
        let hour = with_token(Some(0), 3_600_000);
        assert!(!due(&hour, 3_539_999));
        assert!(due(&hour, 3_540_000));
        // A 30 s token: due half-way, not at once.
        let short = with_token(Some(0), 30_000);
        assert!(!due(&short, 14_999));
        assert!(due(&short, 15_000));
        // Unknown issue time (an older record): the minute's margin.
        assert!(due(&with_token(None, 30_000), 0));
        // No expiry known: never due.
        assert!(!due(&Session::default(), u64::MAX));
    }
}
