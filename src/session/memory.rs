//! The in-memory store: the embedded default for a single gateway process. Expiry follows
//! the injected clock; expired entries are dropped when touched and swept as the map grows.

use super::store::{SessionStore, StoreError};
use crate::clock::{Clock, SystemClock};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

struct Entry {
    value: Vec<u8>,
    expires_at_ms: u64,
}

#[derive(Default)]
struct Inner {
    values: HashMap<String, Entry>,
    /// index key -> (member -> expiry)
    indexes: HashMap<String, BTreeMap<String, u64>>,
    /// due queue key -> (member -> due time)
    queues: HashMap<String, BTreeMap<String, u64>>,
    /// Entry count at which the next full sweep of expired values runs.
    sweep_at: usize,
}

/// A [`SessionStore`] in process memory.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                sweep_at: 1024,
                ..Inner::default()
            }),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters (every operation is a single insert or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self, ttl: Duration) -> u64 {
        self.clock.now_ms().saturating_add(ttl.as_millis() as u64)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    /// The live value of `key`, dropping it if it has expired.
    fn live(&mut self, key: &str, now: u64) -> Option<&Entry> {
        if self.values.get(key).is_some_and(|e| e.expires_at_ms <= now) {
            self.values.remove(key);
        }
        self.values.get(key)
    }

    fn insert(&mut self, key: &str, value: &[u8], expires_at_ms: u64, now: u64) {
        self.values.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                expires_at_ms,
            },
        );
        // Amortised sweep: memory stays proportional to live entries.
        if self.values.len() >= self.sweep_at {
            self.values.retain(|_, e| e.expires_at_ms > now);
            self.indexes.retain(|_, m| {
                m.retain(|_, exp| *exp > now);
                !m.is_empty()
            });
            self.sweep_at = (self.values.len() * 2).max(1024);
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self.lock().live(key, now).map(|e| e.value.clone()))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let deadline = self.deadline(ttl);
        self.lock().insert(key, value, deadline, now);
        Ok(())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let deadline = self.deadline(ttl);
        let mut inner = self.lock();
        if inner.live(key, now).is_some() {
            return Ok(false);
        }
        inner.insert(key, value, deadline, now);
        Ok(true)
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        inner.live(key, now);
        Ok(inner.values.remove(key).map(|e| e.value))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        inner.live(key, now);
        Ok(inner.values.remove(key).is_some())
    }

    async fn put_if_equals(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let deadline = self.deadline(ttl);
        let mut inner = self.lock();
        if inner.live(key, now).is_some_and(|e| e.value == expected) {
            inner.insert(key, value, deadline, now);
            return Ok(true);
        }
        Ok(false)
    }

    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        if inner.live(key, now).is_some_and(|e| e.value == expected) {
            inner.values.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn index_add(
        &self,
        key: &str,
        member: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.lock()
            .indexes
            .entry(key.to_string())
            .or_default()
            .insert(member.to_string(), expires_at_ms);
        Ok(())
    }

    async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(m) = inner.indexes.get_mut(key) {
            m.remove(member);
            if m.is_empty() {
                inner.indexes.remove(key);
            }
        }
        Ok(())
    }

    async fn index_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock();
        let Some(m) = inner.indexes.get_mut(key) else {
            return Ok(Vec::new());
        };
        m.retain(|_, exp| *exp > now_ms);
        let mut members: Vec<(u64, String)> = m.iter().map(|(k, v)| (*v, k.clone())).collect();
        if m.is_empty() {
            inner.indexes.remove(key);
        }
        members.sort();
        Ok(members.into_iter().map(|(_, k)| k).collect())
    }

    async fn queue_add(&self, key: &str, member: &str, due_ms: u64) -> Result<(), StoreError> {
        self.lock()
            .queues
            .entry(key.to_string())
            .or_default()
            .insert(member.to_string(), due_ms);
        Ok(())
    }

    async fn queue_remove(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(key) else {
            return Ok(false);
        };
        let removed = q.remove(member).is_some();
        if q.is_empty() {
            inner.queues.remove(key);
        }
        Ok(removed)
    }

    async fn queue_take_due(
        &self,
        key: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(key) else {
            return Ok(Vec::new());
        };
        let mut due: Vec<(u64, String)> = q
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(m, at)| (*at, m.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        for (_, m) in &due {
            q.remove(m);
        }
        if q.is_empty() {
            inner.queues.remove(key);
        }
        Ok(due.into_iter().map(|(_, m)| m).collect())
    }

    async fn index_counts(&self, keys: &[&str], now_ms: u64) -> Result<Vec<u64>, StoreError> {
        // One lock for all of them.
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|k| {
                inner.indexes.get(*k).map_or(0, |m| {
                    m.values().filter(|exp| **exp > now_ms).count() as u64
                })
            })
            .collect())
    }

    async fn index_count(&self, key: &str, now_ms: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let Some(m) = inner.indexes.get_mut(key) else {
            return Ok(0);
        };
        m.retain(|_, exp| *exp > now_ms);
        let n = m.len() as u64;
        if n == 0 {
            inner.indexes.remove(key);
        }
        Ok(n)
    }

    async fn gcra(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        // The same step as the Redis script, in microseconds on the injected clock.
        let now = self.clock.now_ms().saturating_mul(1000);
        let period_us = crate::ratelimit::micros(period);
        let tolerance = period_us.saturating_mul(u64::from(burst.max(1) - 1));
        let mut inner = self.lock();
        let tat = inner
            .live(key, now / 1000)
            .and_then(|e| e.value.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(now)
            .max(now);
        if now + tolerance < tat {
            return Ok(Err(Duration::from_micros(tat - tolerance - now)));
        }
        let next = tat + period_us;
        let expires_ms = next.div_ceil(1000) + 1;
        inner.insert(key, &next.to_be_bytes(), expires_ms, now / 1000);
        Ok(Ok(()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
