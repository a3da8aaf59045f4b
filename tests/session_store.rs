//! The session store conformance suite: the same behaviour, checked against the memory
//! store (with a fake clock) and a real `redis-server` (with real time, in short TTLs).

mod common;

use common::redis::RedisServer;
use portcullis::clock::{Clock, FakeClock, SystemClock};
use portcullis::session::{
    keys, MemoryStore, RedisStore, RedisStoreConfig, SessionStore, StoreError,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type Advance = Box<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Everything a store must do. `advance` moves time forward by at least the duration;
/// `clock` tells the time the store lives by.
async fn conformance(store: &dyn SessionStore, clock: &dyn Clock, advance: Advance) {
    let ttl = Duration::from_millis(300);
    let k = keys::session(&keys::sha256_hex(b"session-1"));

    // put / get / overwrite / delete
    assert_eq!(store.get(&k).await.unwrap(), None);
    store.put(&k, b"one", ttl).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"one"[..]));
    store.put(&k, b"two", ttl).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap().as_deref(), Some(&b"two"[..]));
    assert!(store.delete(&k).await.unwrap());
    assert!(!store.delete(&k).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), None);

    // binary values round-trip exactly
    let binary: Vec<u8> = (0..=255u8).collect();
    store.put(&k, &binary, ttl).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(binary));

    // put_if_equals replaces only what the caller read (a touch never clobbers a
    // concurrent update)
    let cas = keys::session(&keys::sha256_hex(b"session-cas"));
    store.put(&cas, b"as-read", ttl).await.unwrap();
    assert!(!store
        .put_if_equals(&cas, b"stale", b"touched", ttl)
        .await
        .unwrap());
    assert_eq!(
        store.get(&cas).await.unwrap().as_deref(),
        Some(&b"as-read"[..])
    );
    assert!(store
        .put_if_equals(&cas, b"as-read", b"touched", ttl)
        .await
        .unwrap());
    assert_eq!(
        store.get(&cas).await.unwrap().as_deref(),
        Some(&b"touched"[..])
    );
    let absent = keys::session(&keys::sha256_hex(b"session-absent"));
    assert!(!store.put_if_equals(&absent, b"", b"x", ttl).await.unwrap());
    assert_eq!(store.get(&absent).await.unwrap(), None);
    store.delete(&cas).await.unwrap();

    // gcra: a burst of 3, then one per period; keys are independent
    let rl = keys::lock("rl-test");
    let period = Duration::from_secs(60);
    for _ in 0..3 {
        assert_eq!(store.gcra(&rl, period, 3).await.unwrap(), Ok(()));
    }
    match store.gcra(&rl, period, 3).await.unwrap() {
        Err(wait) => assert!(
            wait > Duration::from_secs(58) && wait <= period,
            "about a period to wait: {wait:?}"
        ),
        Ok(()) => panic!("the fourth request of a burst of 3 must wait"),
    }
    assert_eq!(
        store
            .gcra(&keys::lock("rl-other"), period, 3)
            .await
            .unwrap(),
        Ok(())
    );

    // put_if_absent is a lock: only the first wins until it is released or expires
    let lock = keys::lock("refresh:abc");
    assert!(store.put_if_absent(&lock, b"owner-a", ttl).await.unwrap());
    assert!(!store.put_if_absent(&lock, b"owner-b", ttl).await.unwrap());
    // only the holder can release it
    assert!(!store.delete_if_equals(&lock, b"owner-b").await.unwrap());
    assert!(store.delete_if_equals(&lock, b"owner-a").await.unwrap());
    assert!(store.put_if_absent(&lock, b"owner-b", ttl).await.unwrap());

    // take is single use
    let state = keys::login_state(&keys::sha256_hex(b"state-1"));
    store.put(&state, b"pkce+nonce", ttl).await.unwrap();
    assert_eq!(
        store.take(&state).await.unwrap().as_deref(),
        Some(&b"pkce+nonce"[..])
    );
    assert_eq!(store.take(&state).await.unwrap(), None);

    // concurrent takes: exactly one caller gets the value
    store.put(&state, b"once", ttl).await.unwrap();
    let results = futures_join(store, &state).await;
    assert_eq!(
        results.iter().filter(|r| r.is_some()).count(),
        1,
        "{results:?}"
    );

    // the per-user index: members ordered by expiry, expired ones pruned, removal
    let user = keys::user_sessions(&keys::sha256_hex(b"issuer|alice"));
    let now = clock.now_ms();
    store.index_add(&user, "s-late", now + 600).await.unwrap();
    store.index_add(&user, "s-early", now + 150).await.unwrap();
    store.index_add(&user, "s-mid", now + 400).await.unwrap();
    assert_eq!(
        store.index_members(&user, now).await.unwrap(),
        ["s-early", "s-mid", "s-late"]
    );
    store.index_remove(&user, "s-mid").await.unwrap();
    assert_eq!(
        store.index_members(&user, now).await.unwrap(),
        ["s-early", "s-late"]
    );
    // updating a member moves its expiry
    store.index_add(&user, "s-early", now + 900).await.unwrap();
    assert_eq!(
        store.index_members(&user, now).await.unwrap(),
        ["s-late", "s-early"]
    );
    assert_eq!(
        store.index_members(&user, now + 700).await.unwrap(),
        ["s-early"],
        "members past their expiry are not listed"
    );
    assert!(store
        .index_members(&keys::user_sessions("nobody"), now)
        .await
        .unwrap()
        .is_empty());
    // several indexes counted at once (one round trip in Redis), live members only,
    // missing indexes as 0, in the order asked
    let (a, b) = ("reg:{addr}:accounts", "reg:{addr}:signups");
    store.index_add(a, "x", now + 600).await.unwrap();
    store.index_add(a, "y", now + 100).await.unwrap();
    store.index_add(b, "z", now + 600).await.unwrap();
    assert_eq!(
        store
            .index_counts(&[a, "reg:{addr}:none", b], now)
            .await
            .unwrap(),
        [2, 0, 1]
    );
    assert_eq!(
        store.index_counts(&[a, b], now + 100).await.unwrap(),
        [1, 1],
        "a member expiring now is not counted"
    );

    // the due queue: members stay past their time until taken, oldest first, once
    let q = "login:pending";
    store.queue_add(q, "late", now + 500).await.unwrap();
    store.queue_add(q, "early", now + 100).await.unwrap();
    store.queue_add(q, "gone", now + 50).await.unwrap();
    store.queue_add(q, "mid", now + 300).await.unwrap();
    assert!(store.queue_remove(q, "gone").await.unwrap());
    assert!(!store.queue_remove(q, "gone").await.unwrap());
    assert!(store.queue_take_due(q, now, 10).await.unwrap().is_empty());
    assert_eq!(
        store.queue_take_due(q, now + 400, 1).await.unwrap(),
        ["early"],
        "at most the limit, the earliest first"
    );
    assert_eq!(
        store.queue_take_due(q, now + 10_000, 10).await.unwrap(),
        ["mid", "late"],
        "long past their time, still there to take"
    );
    assert!(store
        .queue_take_due(q, now + 10_000, 10)
        .await
        .unwrap()
        .is_empty());

    // expiry
    let short = keys::session(&keys::sha256_hex(b"session-2"));
    store.put(&short, b"x", ttl).await.unwrap();
    store
        .put_if_absent(&keys::lock("short"), b"x", ttl)
        .await
        .unwrap();
    advance(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        store.get(&short).await.unwrap(),
        None,
        "expired values are gone"
    );
    assert_eq!(store.take(&short).await.unwrap(), None);
    assert!(
        store
            .put_if_absent(&keys::lock("short"), b"y", ttl)
            .await
            .unwrap(),
        "an expired lock can be taken again"
    );

    store.ping().await.unwrap();
}

/// Four concurrent `take`s of the same key.
async fn futures_join(store: &dyn SessionStore, key: &str) -> Vec<Option<Vec<u8>>> {
    let (a, b, c, d) = tokio::join!(
        store.take(key),
        store.take(key),
        store.take(key),
        store.take(key)
    );
    vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
}

#[tokio::test]
async fn memory_store_conforms() {
    let clock = FakeClock::new();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let c2 = clock.clone();
    let advance: Advance = Box::new(move |d| {
        c2.advance(d);
        Box::pin(async {})
    });
    conformance(&store, &clock, advance).await;
}

fn redis_store(url: String, prefix: &str) -> RedisStore {
    RedisStore::new(RedisStoreConfig {
        ca_pem: None,
        url,
        key_prefix: prefix.to_string(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
    })
    .unwrap()
}

#[tokio::test]
async fn redis_store_conforms() {
    let redis = RedisServer::start().await;
    let store = redis_store(redis.url(), "pc-test:");
    // Redis expires keys by its own clock; the suite waits for real.
    let advance: Advance = Box::new(|d| Box::pin(tokio::time::sleep(d)));
    conformance(&store, &SystemClock, advance).await;
}

#[tokio::test]
async fn redis_over_tls_conforms_with_a_private_ca() {
    let (redis, ca) = RedisServer::start_tls().await;
    let store = RedisStore::new(RedisStoreConfig {
        ca_pem: Some(ca.into_bytes()),
        url: redis.tls_url(),
        key_prefix: "tls:".into(),
        connect_timeout: Duration::from_millis(1000),
        response_timeout: Duration::from_millis(1000),
    })
    .unwrap();
    store.ping().await.unwrap();
    let advance: Advance = Box::new(|d| Box::pin(tokio::time::sleep(d)));
    conformance(&store, &SystemClock, advance).await;
    // Without the CA the server's certificate is not trusted: unavailable, not a hang.
    let untrusted = redis_store(redis.tls_url(), "tls:");
    assert!(matches!(
        untrusted.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn redis_keys_carry_the_prefix() {
    let redis = RedisServer::start().await;
    let a = redis_store(redis.url(), "tenant-a:");
    let b = redis_store(redis.url(), "tenant-b:");
    let k = keys::session("same");
    a.put(&k, b"a", Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        b.get(&k).await.unwrap(),
        None,
        "prefixes keep deployments apart"
    );
    assert_eq!(a.get(&k).await.unwrap().as_deref(), Some(&b"a"[..]));
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_not_a_hang_or_a_panic() {
    let port = common::free_port(); // nothing listens there
    let store = redis_store(format!("redis://127.0.0.1:{port}/0"), "pc:");
    let started = std::time::Instant::now();
    match store.get("s:{x}").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast enough: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_redis_store_recovers_when_redis_comes_back() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let store = redis_store(redis.url(), "pc:");
    store
        .put("s:{k}", b"v", Duration::from_secs(30))
        .await
        .unwrap();
    drop(redis);
    assert!(matches!(
        store.get("s:{k}").await,
        Err(StoreError::Unavailable(_))
    ));
    let _again = RedisServer::start_on(port).await;
    // The connection manager reconnects on its own; the data is gone (no persistence).
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(v) = store.get("s:{k}").await {
            assert_eq!(v, None);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the store did not reconnect");
}

/// The session manager over real Redis: what one gateway creates, another (sharing the
/// store) finds, rotates and ends.
#[tokio::test]
async fn sessions_made_by_one_gateway_work_on_another_sharing_redis() {
    use portcullis::session::{Ended, Session, SessionManager, SessionTimeouts};
    let redis = RedisServer::start().await;
    let timeouts = SessionTimeouts {
        idle: Duration::from_secs(60),
        absolute: Duration::from_secs(600),
        touch_every: Duration::from_secs(10),
    };
    let gw = |prefix: &str| {
        SessionManager::new(
            Arc::new(redis_store(redis.url(), prefix)),
            Arc::new(SystemClock),
            timeouts,
        )
    };
    let (one, two) = (gw("pc:"), gw("pc:"));
    let s = Session {
        provider: "customers".into(),
        issuer: "https://login.example.com".into(),
        subject: "alice".into(),
        ..Session::default()
    };
    let created = one.create(s).await.unwrap();
    let (id, s) = (created.id, created.session);
    assert_eq!(two.load(&id).await.unwrap().unwrap().subject, "alice");
    let rotated = two.rotate(&id).await.unwrap().unwrap();
    assert_eq!(one.load(&id).await.unwrap(), Err(Ended::Unknown));
    assert!(one.load(&rotated).await.unwrap().is_ok());
    assert_eq!(two.list_user(&s.user_key()).await.unwrap().len(), 1);
    assert_eq!(two.destroy_user(&s.user_key()).await.unwrap().len(), 1);
    assert_eq!(one.load(&rotated).await.unwrap(), Err(Ended::Unknown));
}
