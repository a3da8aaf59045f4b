//! The session manager: everything above the byte store. It makes session ids (256
//! random bits, only ever stored hashed), serializes sessions, enforces idle and absolute
//! timeouts on an injected clock, rotates ids, and keeps each user's index of sessions
//! so that they can be listed and ended together.

use super::keys;
use super::sealing::Sealer;
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// The population the user was placed in at sign-in (first that matched).
    #[serde(default)]
    pub population: Option<String>,
    /// The provider's session id (`sid` in the ID token), for back-channel logout.
    #[serde(default)]
    pub sid: Option<String>,
    /// The provider's tokens, sealed (see [`super::sealing`]); kept only when needed.
    #[serde(default)]
    pub tokens: Option<SealedTokens>,
    /// The anti-forgery token of this session's forms (logout, ending sessions).
    #[serde(default)]
    pub csrf: String,
    /// While a step-up's higher level lasts: the level to fall back to, and when.
    #[serde(default)]
    pub elevation: Option<Elevation>,
    /// Signed in from a browser not seen before for this user (the `new_device` risk
    /// signal); cleared by a successful step-up.
    #[serde(default)]
    pub new_device: bool,
}

/// A session's base assurance while a step-up's higher one (in the session's own
/// `acr`, `amr` and `auth_time`) lasts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Elevation {
    pub base_acr: Option<String>,
    #[serde(default)]
    pub base_amr: Vec<String>,
    pub base_auth_time: Option<u64>,
    /// When the higher level lapses (Unix ms).
    pub until_ms: u64,
}

/// The provider's tokens of a session, each sealed for this user and kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SealedTokens {
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When the access token expires (Unix ms), if the provider said.
    #[serde(default)]
    pub access_expires_ms: Option<u64>,
    /// When the access token was obtained (Unix ms).
    #[serde(default)]
    pub access_issued_ms: Option<u64>,
}

/// Which token, as the sealing context names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Id,
    Access,
    Refresh,
}

impl Session {
    /// The user's key: issuer and subject together, so a `sub` from one provider can
    /// never be mistaken for the same `sub` from another.
    pub fn user_key(&self) -> String {
        user_key(&self.issuer, &self.subject)
    }

    /// The user as one string that cannot collide across providers: `provider:sub`
    /// (provider ids contain no `:`).
    pub fn namespaced_user(&self) -> String {
        format!("{}:{}", self.provider, self.subject)
    }
}

/// The public handle of a stored session (shown to its user and to operators): derived
/// from the store key, so it names a session without being its key or its cookie.
pub fn handle(id_hash: &str) -> String {
    keys::sha256_hex(format!("handle:{id_hash}").as_bytes())[..32].to_string()
}

/// The key of the index of sessions a provider session (`sid`) made.
pub fn sid_key(issuer: &str, sid: &str) -> String {
    keys::sha256_hex(format!("{}:{issuer}|{sid}", issuer.len()).as_bytes())
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

/// Timeouts and limits of one population's sessions.
#[derive(Debug, Clone)]
pub struct PopulationRules {
    pub name: String,
    pub timeouts: SessionTimeouts,
    pub max_sessions: Option<u32>,
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
    populations: Vec<PopulationRules>,
    sealer: Option<Arc<Sealer>>,
}

/// A new session, and the sessions ended to make room for it.
pub struct Created {
    pub id: SessionId,
    pub session: Session,
    /// Sessions ended to make room (over the population's `max_sessions`).
    pub evicted: Vec<Session>,
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
            populations: Vec::new(),
            sealer: None,
        }
    }

    /// Per-population timeouts and limits; sessions without a population (or of one
    /// not listed) use the defaults.
    pub fn with_populations(mut self, populations: Vec<PopulationRules>) -> Self {
        self.populations = populations;
        self
    }

    /// The keys sealing provider tokens; without them no token is kept.
    pub fn with_sealer(mut self, sealer: Option<Arc<Sealer>>) -> Self {
        self.sealer = sealer;
        self
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// True when tokens can be kept (keys are configured or generated).
    pub fn can_keep_tokens(&self) -> bool {
        self.sealer.is_some()
    }

    /// Seals `token` for this session's user.
    pub fn seal(&self, s: &Session, kind: TokenKind, token: &str) -> Option<String> {
        self.sealer.as_ref()?.seal(token, &seal_context(s, kind))
    }

    /// The session's token of `kind`, opened; `None` when absent or unreadable (sealed
    /// by a key no longer configured).
    pub fn token(&self, s: &Session, kind: TokenKind) -> Option<String> {
        let t = s.tokens.as_ref()?;
        let sealed = match kind {
            TokenKind::Id => t.id_token.as_deref(),
            TokenKind::Access => t.access_token.as_deref(),
            TokenKind::Refresh => t.refresh_token.as_deref(),
        }?;
        self.sealer.as_ref()?.open(sealed, &seal_context(s, kind))
    }

    fn rules(&self, s: &Session) -> (SessionTimeouts, Option<u32>) {
        s.population
            .as_deref()
            .and_then(|p| self.populations.iter().find(|r| r.name == p))
            .map_or((self.timeouts, None), |r| (r.timeouts, r.max_sessions))
    }

    /// The idle and absolute deadlines (Unix ms) of `s` as of `now`.
    fn deadlines(&self, s: &Session, now: u64) -> (u64, u64) {
        let (t, _) = self.rules(s);
        (
            now.saturating_add(t.idle.as_millis() as u64),
            s.created_ms.saturating_add(t.absolute.as_millis() as u64),
        )
    }

    /// The record to store for `s` as of `now`, and how long it lives; `None` when the
    /// session is already past a deadline.
    fn record(&self, s: &Session, now: u64) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        let (idle_end, abs_end) = self.deadlines(s, now);
        let end = idle_end.min(abs_end);
        if end <= now {
            return Ok(None);
        }
        // The record outlives its deadline a little, so that the manager, not the
        // store's expiry, finds it ended and can say why.
        let ttl = Duration::from_millis(end - now) + EXPIRY_GRACE;
        let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some((bytes, ttl)))
    }

    /// Why `s` has ended by `now` under its population's timeouts, if it has.
    fn timed_out(&self, s: &Session, now: u64) -> Option<Ended> {
        let (t, _) = self.rules(s);
        if now >= s.created_ms + t.absolute.as_millis() as u64 {
            Some(Ended::AbsoluteTimeout)
        } else if now >= s.last_seen_ms + t.idle.as_millis() as u64 {
            Some(Ended::IdleTimeout)
        } else {
            None
        }
    }

    async fn write(&self, id_hash: &str, s: &Session, now: u64) -> Result<(), StoreError> {
        let Some((bytes, ttl)) = self.record(s, now)? else {
            return Ok(());
        };
        self.store.put(&keys::session(id_hash), &bytes, ttl).await?;
        self.index(id_hash, s, now).await
    }

    /// Adds the session to the user's index, its provider session's index and the index
    /// of all sessions.
    async fn index(&self, id_hash: &str, s: &Session, now: u64) -> Result<(), StoreError> {
        let (idle_end, abs_end) = self.deadlines(s, now);
        self.store
            .index_add(&keys::user_sessions(&s.user_key()), id_hash, abs_end)
            .await?;
        if let Some(sid) = &s.sid {
            self.store
                .index_add(
                    &keys::provider_sessions(&sid_key(&s.issuer, sid)),
                    id_hash,
                    abs_end,
                )
                .await?;
        }
        self.store
            .index_add(keys::ALL_SESSIONS, id_hash, idle_end.min(abs_end))
            .await
    }

    /// Stores a new session under a fresh id. Any id the browser had before is not reused:
    /// a cookie present before login never becomes valid (no session fixation). When the
    /// user's population limits concurrent sessions, the oldest are ended to make room.
    pub async fn create(&self, mut s: Session) -> Result<Created, StoreError> {
        let now = self.clock.now_ms();
        s.created_ms = now;
        s.last_seen_ms = now;
        if s.csrf.is_empty() {
            s.csrf = SessionId::generate().0;
        }
        let mut evicted = Vec::new();
        if let (_, Some(max)) = self.rules(&s) {
            let existing = self.list_user(&s.user_key()).await?;
            let excess = (existing.len() + 1).saturating_sub(max as usize);
            for (hash, old) in existing.iter().take(excess) {
                if self.remove(hash, old).await? {
                    evicted.push(old.clone());
                }
            }
        }
        let id = SessionId::generate();
        self.write(&id.hash(), &s, now).await?;
        Ok(Created {
            id,
            session: s,
            evicted,
        })
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
        if let Some(reason) = self.timed_out(&s, now) {
            self.remove(&hash, &s).await?;
            return Ok(Err(reason));
        }
        let (t, _) = self.rules(&s);
        // A record written before sessions had an anti-forgery token (a rolling upgrade
        // over a shared store) gets one now; without it the user could not sign out.
        let backfill = s.csrf.is_empty();
        if backfill {
            s.csrf = SessionId::generate().0;
        }
        // A step-up's higher level lasts until its elevation lapses; then the session is
        // back at the level it had before.
        let lapsed = s.elevation.as_ref().is_some_and(|e| now >= e.until_ms);
        if lapsed {
            if let Some(e) = s.elevation.take() {
                s.acr = e.base_acr;
                s.amr = e.base_amr;
                s.auth_time = e.base_auth_time;
            }
        }
        if backfill || lapsed || now >= s.last_seen_ms + t.touch_every.as_millis() as u64 {
            s.last_seen_ms = now;
            // Only over the record as read: a concurrent update (new tokens from a
            // refresh) must not be overwritten by this request's older copy. If it was
            // replaced, that write was recent, and a later request touches again.
            if let Some((fresh, ttl)) = self.record(&s, now)? {
                if self.store.put_if_equals(&key, &bytes, &fresh, ttl).await? {
                    self.index(&hash, &s, now).await?;
                }
            }
        }
        Ok(Ok(s))
    }

    /// The stored session for `id` as it is, without timeout checks or touching it
    /// (for a request waiting on another's update).
    pub async fn peek(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.peek_hash(&id.hash()).await
    }

    /// The stored session under `hash`, as [`SessionManager::peek`].
    pub async fn peek_hash(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .store
            .get(&keys::session(hash))
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
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

    /// Ends the session; the session it was, when there was one.
    pub async fn destroy(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.destroy_hash(&id.hash()).await
    }

    /// Ends the session stored under `hash`; the session it was, when there was one.
    pub async fn destroy_hash(&self, hash: &str) -> Result<Option<Session>, StoreError> {
        let Some(bytes) = self.store.take(&keys::session(hash)).await? else {
            self.store.index_remove(keys::ALL_SESSIONS, hash).await?;
            return Ok(None);
        };
        match serde_json::from_slice::<Session>(&bytes) {
            Ok(s) => {
                self.unindex(hash, &s).await?;
                Ok(Some(s))
            }
            Err(_) => {
                self.store.index_remove(keys::ALL_SESSIONS, hash).await?;
                Ok(None)
            }
        }
    }

    /// Removes the record and its index entries; true when the record was still there.
    async fn remove(&self, hash: &str, s: &Session) -> Result<bool, StoreError> {
        let removed = self.store.delete(&keys::session(hash)).await?;
        self.unindex(hash, s).await?;
        Ok(removed)
    }

    async fn unindex(&self, hash: &str, s: &Session) -> Result<(), StoreError> {
        self.store
            .index_remove(&keys::user_sessions(&s.user_key()), hash)
            .await?;
        if let Some(sid) = &s.sid {
            self.store
                .index_remove(&keys::provider_sessions(&sid_key(&s.issuer, sid)), hash)
                .await?;
        }
        self.store.index_remove(keys::ALL_SESSIONS, hash).await
    }

    /// Sessions live in the store now (across every gateway sharing it), give or take
    /// idle sessions not yet noticed within one `touch_every`.
    pub async fn count_active(&self) -> Result<u64, StoreError> {
        self.store
            .index_count(keys::ALL_SESSIONS, self.clock.now_ms())
            .await
    }

    /// Ends the sessions a provider session made (back-channel logout by `sid`), only
    /// those of `subject` when given. Returns the sessions ended.
    pub async fn destroy_provider_session(
        &self,
        issuer: &str,
        sid: &str,
        subject: Option<&str>,
    ) -> Result<Vec<Session>, StoreError> {
        let index = keys::provider_sessions(&sid_key(issuer, sid));
        let mut ended = Vec::new();
        for hash in self.store.index_members(&index, 0).await? {
            let Some(bytes) = self.store.get(&keys::session(&hash)).await? else {
                self.store.index_remove(&index, &hash).await?;
                continue;
            };
            let Ok(s) = serde_json::from_slice::<Session>(&bytes) else {
                continue;
            };
            if s.issuer != issuer || subject.is_some_and(|sub| sub != s.subject) {
                continue;
            }
            if let Some(s) = self.destroy_hash(&hash).await? {
                ended.push(s);
            }
        }
        Ok(ended)
    }

    /// The user's live sessions as (id hash, session), oldest first. Sessions past their
    /// idle timeout are left out although their records linger until the store expires
    /// them (or a request ends them): listed, they would be offered to the user and the
    /// operator as live, and counted against `max_sessions` at the next login.
    pub async fn list_user(&self, user_key: &str) -> Result<Vec<(String, Session)>, StoreError> {
        let now = self.clock.now_ms();
        let index = keys::user_sessions(user_key);
        let mut out = Vec::new();
        for hash in self.store.index_members(&index, now).await? {
            match self.store.get(&keys::session(&hash)).await? {
                Some(bytes) => {
                    if let Ok(s) = serde_json::from_slice::<Session>(&bytes) {
                        if self.timed_out(&s, now).is_none() {
                            out.push((hash, s));
                        }
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
    /// the sessions ended.
    pub async fn destroy_user(&self, user_key: &str) -> Result<Vec<Session>, StoreError> {
        let index = keys::user_sessions(user_key);
        let mut ended = Vec::new();
        for hash in self.store.index_members(&index, 0).await? {
            match self.destroy_hash(&hash).await? {
                Some(s) => ended.push(s),
                None => self.store.index_remove(&index, &hash).await?,
            }
        }
        Ok(ended)
    }
}

fn seal_context(s: &Session, kind: TokenKind) -> String {
    let k = match kind {
        TokenKind::Id => "id",
        TokenKind::Access => "access",
        TokenKind::Refresh => "refresh",
    };
    format!("{}|{k}", s.user_key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::session::MemoryStore;

    const MIN: Duration = Duration::from_secs(60);

    fn pair(c: Created) -> (SessionId, Session) {
        (c.id, c.session)
    }

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
            ..Session::default()
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
        let (id, _) = pair(m.create(alice()).await.unwrap());
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
        let (id, _) = pair(m.create(alice()).await.unwrap());
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
        let (id, _) = pair(m.create(alice()).await.unwrap());
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
        let (old, created) = pair(m.create(alice()).await.unwrap());
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
        let (a, _) = pair(m.create(alice()).await.unwrap());
        clock.advance(MIN);
        let (b, s) = pair(m.create(alice()).await.unwrap());
        let mut bob = alice();
        bob.subject = "bob".into();
        let (c, _) = pair(m.create(bob).await.unwrap());
        let listed = m.list_user(&s.user_key()).await.unwrap();
        assert_eq!(
            listed.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
            [a.hash(), b.hash()]
        );
        assert!(m.destroy(&a).await.unwrap().is_some());
        assert!(m.destroy(&a).await.unwrap().is_none());
        assert_eq!(m.list_user(&s.user_key()).await.unwrap().len(), 1);
        assert_eq!(m.destroy_user(&s.user_key()).await.unwrap().len(), 1);
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
        let (id, s) = pair(m.create(alice()).await.unwrap());
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
