//! A store wrapper that records every operation's outcome in the metrics, so "the store
//! is down" is a metric and not only a log line.

use super::store::{SessionStore, StoreError};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

pub struct Metered {
    inner: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn SessionStore>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }

    async fn note<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let r = f.await;
        self.metrics
            .store_duration(op, started.elapsed().as_secs_f64());
        self.metrics
            .store_result(op, !matches!(r, Err(StoreError::Unavailable(_))));
        r
    }
}

#[async_trait]
impl SessionStore for Metered {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.note("get", self.inner.get(key)).await
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.note("put", self.inner.put(key, value, ttl)).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.note("put", self.inner.put_if_absent(key, value, ttl))
            .await
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.note("take", self.inner.take(key)).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.note("delete", self.inner.delete(key)).await
    }
    async fn put_if_equals(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.note("put", self.inner.put_if_equals(key, expected, value, ttl))
            .await
    }
    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.note("delete", self.inner.delete_if_equals(key, expected))
            .await
    }
    async fn index_add(
        &self,
        key: &str,
        member: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.note("index", self.inner.index_add(key, member, expires_at_ms))
            .await
    }
    async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        self.note("index", self.inner.index_remove(key, member))
            .await
    }
    async fn index_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError> {
        self.note("index", self.inner.index_members(key, now_ms))
            .await
    }
    async fn index_count(&self, key: &str, now_ms: u64) -> Result<u64, StoreError> {
        self.note("index", self.inner.index_count(key, now_ms))
            .await
    }
    async fn queue_add(&self, key: &str, member: &str, due_ms: u64) -> Result<(), StoreError> {
        self.note("queue", self.inner.queue_add(key, member, due_ms))
            .await
    }
    async fn queue_remove(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        self.note("queue", self.inner.queue_remove(key, member))
            .await
    }
    async fn queue_take_due(
        &self,
        key: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.note("queue", self.inner.queue_take_due(key, now_ms, limit))
            .await
    }
    async fn index_counts(&self, keys: &[&str], now_ms: u64) -> Result<Vec<u64>, StoreError> {
        self.note("index", self.inner.index_counts(keys, now_ms))
            .await
    }
    async fn gcra(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        self.note("rate-limit", self.inner.gcra(key, period, burst))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.note("ping", self.inner.ping()).await
    }
}
