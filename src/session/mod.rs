//! Session state storage.
//!
//! Stores are simple, managers are smart: a [`SessionStore`] keeps opaque bytes under
//! string keys with a time to live, offers the two atomic operations that single-use
//! state and locks need (set-if-absent, get-and-delete, compare-and-delete), and keeps
//! per-user indexes (sorted by expiry) for listing and revoking a user's sessions.
//! Hashing of session ids, serialization and encryption belong to the session manager,
//! written once above the stores. Every store passes the same conformance suite
//! (`tests/session_store.rs`), run against the memory store and a real `redis-server`.
//!
//! Key layout (see [`keys`]) is chosen for Redis Cluster: every key that belongs to one
//! user carries that user's hash tag, so a user's keys share a hash slot.

pub mod keys;
mod manager;
mod memory;
mod metered;
mod redis_store;
mod sealing;
mod store;

pub use manager::{
    handle, sid_key, user_key, Created, Elevation, Ended, PopulationRules, SealedTokens, Session,
    SessionId, SessionManager, SessionTimeouts, TokenKind,
};
pub use memory::MemoryStore;
pub use metered::Metered;
pub use redis_store::{RedisStore, RedisStoreConfig};
pub use sealing::{Sealer, SealingKey};
pub use store::{SessionStore, StoreError};
