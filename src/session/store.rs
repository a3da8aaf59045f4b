//! The storage interface every session store implements.

use async_trait::async_trait;
use std::time::Duration;

/// Why a store operation failed. `Unavailable` is the one callers must handle by failing
/// closed (503 on protected routes); `Corrupt` means data that should not exist.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store returned unexpected data: {0}")]
    Corrupt(String),
}

/// Bytes under keys, with expiry, plus per-user indexes. Keys come from
/// [`super::keys`]; values are opaque to the store.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The value, or `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` for `ttl`, replacing any previous value.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Stores `value` only if `key` holds nothing; true when it was stored. The building
    /// block of locks.
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Returns and removes the value in one step, so at most one caller ever gets it
    /// (single-use login state, codes).
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes `key`; true when something was removed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Replaces the value only while `key` still holds `expected`; true when replaced.
    /// A write that must not clobber a concurrent one (touching `last_seen` while a
    /// refresh stores new tokens) uses this.
    async fn put_if_equals(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Removes `key` only while it still holds `expected` (releasing a lock one holds,
    /// never one that expired and was taken by someone else).
    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError>;

    /// Adds (or updates) `member` in the index at `key`, expiring at `expires_at_ms`
    /// (Unix milliseconds). The index itself lives as long as its longest-lived member.
    async fn index_add(
        &self,
        key: &str,
        member: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError>;

    /// Removes `member` from the index.
    async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError>;

    /// Members not yet expired at `now_ms`, soonest-expiring first; expired ones are
    /// pruned.
    async fn index_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError>;

    /// How many members are not yet expired at `now_ms`; expired ones are pruned.
    async fn index_count(&self, key: &str, now_ms: u64) -> Result<u64, StoreError>;

    /// [`Self::index_count`] of several indexes in one round trip, without pruning.
    /// The keys should share a hash tag (one Redis Cluster slot).
    async fn index_counts(&self, keys: &[&str], now_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.index_count(k, now_ms).await?);
        }
        Ok(out)
    }

    /// Puts `member` in the due queue at `key`, due at `due_ms`. Unlike an index, members
    /// stay past their time until taken by [`Self::queue_take_due`].
    async fn queue_add(&self, key: &str, member: &str, due_ms: u64) -> Result<(), StoreError>;

    /// Removes `member` from the due queue (it will not be taken).
    async fn queue_remove(&self, key: &str, member: &str) -> Result<bool, StoreError>;

    /// Takes up to `limit` members due at `now_ms`, atomically: across every gateway
    /// sharing the store, each member is taken once.
    async fn queue_take_due(
        &self,
        key: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// One step of GCRA rate limiting on `key`: a budget of `burst` requests, one more
    /// earned every `period`. `Ok(Err(wait))` when over the budget: allowed again after
    /// `wait`. Atomic across every gateway sharing the store.
    async fn gcra(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError>;

    /// Cheap liveness check for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;
}
