//! The Redis store: sessions shared by a fleet of gateways. One multiplexed connection
//! (redis' `ConnectionManager`, which reconnects by itself) with explicit connect and
//! response timeouts, created lazily inside the server's runtime on first use. Every
//! failure to reach Redis is [`StoreError::Unavailable`], which callers turn into a
//! fail-closed answer.

use super::store::{SessionStore, StoreError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Prepended to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    /// Longest wait for any single reply; a slow Redis must not stall requests.
    pub response_timeout: Duration,
    /// PEM of the CA that signed the server's certificate (`rediss://` only); without
    /// it the system's trust store is used.
    pub ca_pem: Option<Vec<u8>>,
}

/// A [`SessionStore`] in Redis (standalone; keys are laid out for Cluster).
pub struct RedisStore {
    config: RedisStoreConfig,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    compare_and_delete: redis::Script,
    compare_and_put: redis::Script,
    index_add: redis::Script,
    gcra: redis::Script,
    take_due: redis::Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Validates the URL; connects on first use.
    pub fn new(config: RedisStoreConfig) -> Result<Self, String> {
        let client = match &config.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(config.url.as_str()),
        }
        .map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(RedisStore {
            config,
            client,
            conn: OnceCell::new(),
            compare_and_delete: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
            compare_and_put: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end",
            ),
            gcra: redis::Script::new(crate::ratelimit::GCRA_SCRIPT),
            // ZADD, then keep the index alive as long as its longest-lived member.
            take_due: redis::Script::new(
                "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2]) \
                 if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end return due",
            ),
            index_add: redis::Script::new(
                "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) \
                 local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES') \
                 redis.call('PEXPIREAT', KEYS[1], top[2]) return 1",
            ),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout))
                    .set_response_timeout(Some(self.config.response_timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await
            .map_err(unavailable)?;
        Ok(c.clone())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.config.key_prefix)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn().await?;
        c.get(self.key(key)).await.map_err(unavailable)
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        c.pset_ex(self.key(key), value, ttl_ms(ttl))
            .await
            .map_err(unavailable)
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(reply.is_some())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("GETDEL")
            .arg(self.key(key))
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = c.del(self.key(key)).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn put_if_equals(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = self
            .compare_and_put
            .key(self.key(key))
            .arg(expected)
            .arg(value)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: u64 = self
            .compare_and_delete
            .key(self.key(key))
            .arg(expected)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn index_add(
        &self,
        key: &str,
        member: &str,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = self
            .index_add
            .key(self.key(key))
            .arg(member)
            .arg(expires_at_ms)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = c.zrem(self.key(key), member).await.map_err(unavailable)?;
        Ok(())
    }

    async fn index_members(&self, key: &str, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let k = self.key(key);
        let (_, members): (i64, Vec<String>) = redis::pipe()
            .atomic()
            .zrembyscore(&k, "-inf", now_ms)
            .zrange(&k, 0, -1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(members)
    }

    async fn index_count(&self, key: &str, now_ms: u64) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let k = self.key(key);
        let (_, n): (i64, u64) = redis::pipe()
            .atomic()
            .zrembyscore(&k, "-inf", now_ms)
            .zcard(&k)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n)
    }

    async fn queue_add(&self, key: &str, member: &str, due_ms: u64) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = c
            .zadd(self.key(key), member, due_ms)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn queue_remove(&self, key: &str, member: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let n: i64 = c.zrem(self.key(key), member).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn queue_take_due(
        &self,
        key: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        self.take_due
            .key(self.key(key))
            .arg(now_ms)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn index_counts(&self, keys: &[&str], now_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            // Members expiring after now: the live ones (the bounds exclude `now_ms`).
            pipe.zcount(self.key(k), format!("({now_ms}"), "+inf");
        }
        pipe.query_async(&mut c).await.map_err(unavailable)
    }

    async fn gcra(
        &self,
        key: &str,
        period: Duration,
        burst: u32,
    ) -> Result<Result<(), Duration>, StoreError> {
        let mut c = self.conn().await?;
        let period_us = crate::ratelimit::micros(period);
        let wait_us: i64 = self
            .gcra
            .key(self.key(key))
            .arg(period_us)
            .arg(period_us.saturating_mul(u64::from(burst.max(1) - 1)))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(if wait_us < 0 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait_us as u64))
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
