//! What happens when sessions end by someone's action (logout, back-channel logout,
//! revocation, eviction, a refused refresh): the metric moves, an audit event is
//! written per session, and when `logout.notify` is configured the upstream is told,
//! off the request path, once per user.

use crate::runtime::Runtime;
use crate::session::Session;
use std::collections::BTreeMap;

/// Records that `ended` sessions ended for `reason` and notifies the upstream.
pub fn sessions_ended(rt: &Runtime, ended: &[Session], reason: &'static str) {
    rt.metrics.sessions_ended(reason, ended.len());
    for s in ended {
        let mut f = serde_json::json!({
            "reason": reason,
            "user": crate::audit::pseudonym(&s.user_key()),
            "provider": s.provider,
        });
        if let Some(p) = &s.population {
            f["population"] = p.as_str().into();
        }
        rt.audit.emit("session-ended", f);
    }
    let Some(url) = rt.config.logout.notify.clone() else {
        return;
    };
    // One event per user, however many of their sessions ended.
    let mut users: BTreeMap<String, (&Session, usize)> = BTreeMap::new();
    for s in ended {
        users.entry(s.namespaced_user()).or_insert((s, 0)).1 += 1;
    }
    for (user, (s, n)) in users {
        let event = serde_json::json!({
            "event": "session-ended",
            "reason": reason,
            "user": user,
            "provider": s.provider,
            "iss": s.issuer,
            "sub": s.subject,
            "sid": s.sid,
            "population": s.population,
            "sessions": n,
        });
        let http = rt.http.clone();
        let url = url.clone();
        let metrics = rt.metrics.clone();
        tokio::spawn(async move {
            let ok = matches!(
                http.post(url).json(&event).send().await,
                Ok(r) if r.status().is_success()
            );
            metrics.logout_notification(ok);
            if !ok {
                log::warn!("logout notification for a session end ({reason}) failed");
            }
        });
    }
}
