//! The session manager: everything above the byte store. It makes session ids (256
//! random bits, only ever stored hashed), serializes sessions, enforces idle and absolute
//! timeouts on an injected clock, rotates ids, and keeps each user's index of sessions
//! so that they can be listed and ended together.

use super::keys;
use super::store::{SessionStore, StoreError};
use crate::clock::Clock;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of randomness in a session id.
const ID_BYTES: usize = 32;
/// Length of an id as it appears in the cookie (base64url, no padding).
const ID_CHARS: usize = 43;
/// How long a record outlives its deadline in the store, so that the manager, not the
/// store's expiry, finds it ended and can say why (idle or absolute).
const EXPIRY_GRACE: Duration = Duration::from_secs(300);

/// A session id as carried by the cookie. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// A new id from the operating system's CSPRNG (via `rand`'s thread-local generator,
    /// seeded from it).
    pub fn generate() -> SessionId {
        let mut bytes = [0u8; ID_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        SessionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts a cookie value only if it has exactly the shape of an id we issue.
    pub fn parse(value: &str) -> Option<SessionId> {
        (value.len() == ID_CHARS
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| SessionId(value.to_string()))
    }

    /// The cookie value.
    pub fn as_cookie_value(&self) -> &str {
        &self.0
    }

    /// What the store is keyed by: a copy of the store cannot be replayed as cookies.
    pub fn hash(&self) -> String {
        keys::sha256_hex(self.0.as_bytes())
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(redacted)")
    }
}

/// A signed-in user's session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The provider (from config) that authenticated the user.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    /// Claims mapped from the ID token and UserInfo.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub acr: Option<String>,
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the user authenticated at the provider (Unix seconds).
    pub auth_time: Option<u64>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    /// Where and with what the user signed in, for risk signals.
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Session {
    /// The user's key: issuer and subject together, so a `sub` from one provider can
    /// never be mistaken for the same `sub` from another.
    pub fn user_key(&self) -> String {
        user_key(&self.issuer, &self.subject)
    }
}

/// The key of a user (issuer + subject), hashed.
pub fn user_key(issuer: &str, subject: &str) -> String {
    // Length-prefixed so that no (issuer, subject) pair can collide with another.
    keys::sha256_hex(format!("{}:{issuer}|{subject}", issuer.len()).as_bytes())
}

/// Timeouts of sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, however active.
    pub absolute: Duration,
    /// `last_seen` is written back at most this often, so busy sessions do not cost a
    /// store write per request.
    pub touch_every: Duration,
}

/// Why a presented session is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No such session (never existed, ended, or evicted by the store).
    Unknown,
    IdleTimeout,
    AbsoluteTimeout,
}

impl Ended {
    /// Reason code for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Ended::Unknown => "session-unknown",
            Ended::IdleTimeout => "expired-idle",
            Ended::AbsoluteTimeout => "expired-absolute",
        }
    }
}

/// Creates, finds, rotates and ends sessions.
pub struct SessionManager {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    timeouts: SessionTimeouts,
}

impl SessionManager {
    pub fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        timeouts: SessionTimeouts,
    ) -> Self {
        SessionManager {
            store,
            clock,
            timeouts,
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// How long the stored record should live from `now`: the sooner of the idle and the
    /// absolute deadline, plus [`EXPIRY_GRACE`].
    fn remaining(&self, s: &Session, now: u64) -> Option<Duration> {
        let idle_end = now.saturating_add(self.timeouts.idle.as_millis() as u64);
        let abs_end = s
            .created_ms
            .saturating_add(self.timeouts.absolute.as_millis() as u64);
        let end = idle_end.min(abs_end);
        (end > now).then(|| Duration::from_millis(end - now) + EXPIRY_GRACE)
    }

    async fn write(&self, id_hash: &str, s: &Session, now: u64) -> Result<(), StoreError> {
        let Some(ttl) = self.remaining(s, now) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store.put(&keys::session(id_hash), &bytes, ttl).await?;
        let abs_end = s
            .created_ms
            .saturating_add(self.timeouts.absolute.as_millis() as u64);
        self.store
            .index_add(&keys::user_sessions(&s.user_key()), id_hash, abs_end)
            .await
    }

    /// Stores a new session under a fresh id. Any id the browser had before is not reused:
    /// a cookie present before login never becomes valid (no session fixation).
    pub async fn create(&self, mut s: Session) -> Result<(SessionId, Session), StoreError> {
        let now = self.clock.now_ms();
        s.created_ms = now;
        s.last_seen_ms = now;
        let id = SessionId::generate();
        self.write(&id.hash(), &s, now).await?;
        Ok((id, s))
    }

    /// The live session for `id`, after the timeout checks. Ended sessions are removed.
    pub async fn load(&self, id: &SessionId) -> Result<Result<Session, Ended>, StoreError> {
        let hash = id.hash();
        let key = keys::session(&hash);
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(Err(Ended::Unknown));
        };
        let Ok(mut s) = serde_json::from_slice::<Session>(&bytes) else {
            // Unreadable (an older format, or tampering with the store): not a session.
            log::warn!("unreadable session record removed");
            self.store.delete(&key).await?;
            return Ok(Err(Ended::Unknown));
        };
        let now = self.clock.now_ms();
        let ended = if now >= s.created_ms + self.timeouts.absolute.as_millis() as u64 {
            Some(Ended::AbsoluteTimeout)
        } else if now >= s.last_seen_ms + self.timeouts.idle.as_millis() as u64 {
            Some(Ended::IdleTimeout)
        } else {
            None
        };
        if let Some(reason) = ended {
            self.remove(&hash, &s).await?;
            return Ok(Err(reason));
        }
        if now >= s.last_seen_ms + self.timeouts.touch_every.as_millis() as u64 {
            s.last_seen_ms = now;
            self.write(&hash, &s, now).await?;
        }
        Ok(Ok(s))
    }

    /// Moves the session to a new id (at step-up, or any privilege change); the old id
    /// stops working at once. `None` when the old session is not live.
    pub async fn rotate(&self, id: &SessionId) -> Result<Option<SessionId>, StoreError> {
        let Ok(s) = self.load(id).await? else {
            return Ok(None);
        };
        let old = id.hash();
        let new = SessionId::generate();
        let now = self.clock.now_ms();
        self.write(&new.hash(), &s, now).await?;
        self.remove(&old, &s).await?;
        Ok(Some(new))
    }

    /// Replaces the stored session (after a step-up upgraded it, say) under the same id.
    pub async fn update(&self, id: &SessionId, s: &Session) -> Result<(), StoreError> {
        self.write(&id.hash(), s, self.clock.now_ms()).await
    }

    /// Ends the session; true when there was one.
    pub async fn destroy(&self, id: &SessionId) -> Result<bool, StoreError> {
        let hash = id.hash();
        let key = keys::session(&hash);
        let Some(bytes) = self.store.take(&key).await? else {
            return Ok(false);
        };
        if let Ok(s) = serde_json::from_slice::<Session>(&bytes) {
            self.store
                .index_remove(&keys::user_sessions(&s.user_key()), &hash)
                .await?;
        }
        Ok(true)
    }

    async fn remove(&self, hash: &str, s: &Session) -> Result<(), StoreError> {
        self.store.delete(&keys::session(hash)).await?;
        self.store
            .index_remove(&keys::user_sessions(&s.user_key()), hash)
            .await
    }

    /// The user's live sessions as (id hash, session), oldest first.
    pub async fn list_user(&self, user_key: &str) -> Result<Vec<(String, Session)>, StoreError> {
        let now = self.clock.now_ms();
        let index = keys::user_sessions(user_key);
        let mut out = Vec::new();
        for hash in self.store.index_members(&index, now).await? {
            match self.store.get(&keys::session(&hash)).await? {
                Some(bytes) => {
                    if let Ok(s) = serde_json::from_slice::<Session>(&bytes) {
                        out.push((hash, s));
                    }
                }
                // Expired or ended elsewhere: keep the index honest.
                None => self.store.index_remove(&index, &hash).await?,
            }
        }
        out.sort_by_key(|(_, s)| s.created_ms);
        Ok(out)
    }

    /// Ends every session of the user (the response to an account takeover); returns
    /// how many were ended.
    pub async fn destroy_user(&self, user_key: &str) -> Result<usize, StoreError> {
        let index = keys::user_sessions(user_key);
        let mut n = 0;
        for hash in self.store.index_members(&index, 0).await? {
            if self.store.delete(&keys::session(&hash)).await? {
                n += 1;
            }
            self.store.index_remove(&index, &hash).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::session::MemoryStore;

    const MIN: Duration = Duration::from_secs(60);

    fn setup() -> (SessionManager, FakeClock, Arc<MemoryStore>) {
        let clock = FakeClock::new();
        let store = Arc::new(MemoryStore::with_clock(Arc::new(clock.clone())));
        let m = SessionManager::new(
            store.clone(),
            Arc::new(clock.clone()),
            SessionTimeouts {
                idle: 30 * MIN,
                absolute: 12 * 60 * MIN,
                touch_every: MIN,
            },
        );
        (m, clock, store)
    }

    fn alice() -> Session {
        Session {
            provider: "customers".into(),
            issuer: "https://login.example.com".into(),
            subject: "alice".into(),
            claims: serde_json::Map::new(),
            acr: Some("loa1".into()),
            amr: vec!["pwd".into()],
            auth_time: Some(1_767_225_600),
            created_ms: 0,
            last_seen_ms: 0,
            client_ip: Some("203.0.113.7".into()),
            user_agent: Some("test".into()),
        }
    }

    #[test]
    fn ids_have_256_bits_and_parse_only_their_own_shape() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_cookie_value().len(), ID_CHARS);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(a.as_cookie_value()).unwrap().len(),
            32
        );
        assert!(SessionId::parse(a.as_cookie_value()).is_some());
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse(&"=".repeat(ID_CHARS)).is_none());
        assert!(!format!("{a:?}").contains(a.as_cookie_value()));
    }

    #[test]
    fn users_are_namespaced_by_issuer() {
        assert_ne!(
            user_key("https://a.example", "42"),
            user_key("https://b.example", "42")
        );
        assert_ne!(user_key("a|b", "c"), user_key("a", "b|c"));
    }

    #[tokio::test]
    async fn the_store_is_keyed_by_a_hash_of_the_id() {
        let (m, _, store) = setup();
        let (id, _) = m.create(alice()).await.unwrap();
        assert!(store
            .get(&keys::session(id.as_cookie_value()))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .get(&keys::session(&id.hash()))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn idle_sessions_end_and_active_ones_are_kept_alive() {
        let (m, clock, _) = setup();
        let (id, _) = m.create(alice()).await.unwrap();
        for _ in 0..5 {
            clock.advance(20 * MIN);
            assert!(
                m.load(&id).await.unwrap().is_ok(),
                "used every 20 minutes, still alive"
            );
        }
        clock.advance(31 * MIN);
        assert_eq!(m.load(&id).await.unwrap(), Err(Ended::IdleTimeout));
        assert_eq!(
            m.load(&id).await.unwrap(),
            Err(Ended::Unknown),
            "and removed"
        );
    }

    #[tokio::test]
    async fn absolute_timeout_ends_even_busy_sessions() {
        let (m, clock, _) = setup();
        let (id, _) = m.create(alice()).await.unwrap();
        let mut last = Ok(alice());
        for _ in 0..(12 * 60 / 20 + 1) {
            clock.advance(20 * MIN);
            last = m.load(&id).await.unwrap();
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last.map(|_| ()), Err(Ended::AbsoluteTimeout));
    }

    #[tokio::test]
    async fn rotation_invalidates_the_old_id_and_keeps_the_session() {
        let (m, clock, _) = setup();
        let (old, created) = m.create(alice()).await.unwrap();
        clock.advance(MIN);
        let new = m.rotate(&old).await.unwrap().unwrap();
        assert_eq!(m.load(&old).await.unwrap(), Err(Ended::Unknown));
        let s = m.load(&new).await.unwrap().unwrap();
        assert_eq!(
            s.created_ms, created.created_ms,
            "absolute timeout still counts from login"
        );
        let listed = m.list_user(&s.user_key()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, new.hash());
    }

    #[tokio::test]
    async fn a_users_sessions_can_be_listed_and_ended_together() {
        let (m, clock, _) = setup();
        let (a, _) = m.create(alice()).await.unwrap();
        clock.advance(MIN);
        let (b, s) = m.create(alice()).await.unwrap();
        let mut bob = alice();
        bob.subject = "bob".into();
        let (c, _) = m.create(bob).await.unwrap();
        let listed = m.list_user(&s.user_key()).await.unwrap();
        assert_eq!(
            listed.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
            [a.hash(), b.hash()]
        );
        assert!(m.destroy(&a).await.unwrap());
        assert!(!m.destroy(&a).await.unwrap());
        assert_eq!(m.list_user(&s.user_key()).await.unwrap().len(), 1);
        assert_eq!(m.destroy_user(&s.user_key()).await.unwrap(), 1);
        assert_eq!(m.load(&b).await.unwrap(), Err(Ended::Unknown));
        assert!(
            m.load(&c).await.unwrap().is_ok(),
            "other users are untouched"
        );
    }

    #[tokio::test]
    async fn unreadable_records_are_not_sessions() {
        let (m, _, store) = setup();
        let id = SessionId::generate();
        store
            .put(
                &keys::session(&id.hash()),
                b"{not json",
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(m.load(&id).await.unwrap(), Err(Ended::Unknown));
        assert!(store
            .get(&keys::session(&id.hash()))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn last_seen_is_written_back_at_most_once_a_minute() {
        let (m, clock, store) = setup();
        let (id, s) = m.create(alice()).await.unwrap();
        clock.advance(Duration::from_secs(10));
        m.load(&id).await.unwrap().unwrap();
        let raw = store
            .get(&keys::session(&id.hash()))
            .await
            .unwrap()
            .unwrap();
        let stored: Session = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            stored.last_seen_ms, s.last_seen_ms,
            "no write within a minute"
        );
        clock.advance(MIN);
        let loaded = m.load(&id).await.unwrap().unwrap();
        let raw = store
            .get(&keys::session(&id.hash()))
            .await
            .unwrap()
            .unwrap();
        let stored: Session = serde_json::from_slice(&raw).unwrap();
        assert_eq!(stored.last_seen_ms, loaded.last_seen_ms);
        assert!(stored.last_seen_ms > s.last_seen_ms);
    }
}
