//! Failed-login regulation (`login.regulation`), in the session store so that every
//! gateway sharing it sees the same counts.
//!
//! Failures are counted per client address (IPv6 by /64, so a host cannot step through
//! its own addresses) and per account (the email given for home-realm discovery). Past
//! `backoff_after` failures within `window`, each new login must wait `backoff`,
//! doubling with every further failure; at `max_failures` (per account) or
//! `max_failures_per_ip` the login start is refused for `ban`.
//!
//! | key | holds |
//! |---|---|
//! | `reg:{<hash>}:failures` | failure times (an index, members expire after `window`) |
//! | `reg:{<hash>}:last` | the latest failure (Unix ms) |
//! | `reg:{<hash>}:ban` | present while banned; its value is the end (Unix ms) |
//! | `reg:{<hash>}:accounts` | per address: the accounts (hashed) that signed in or tried to, for the `credential_stuffing` risk signal |
//! | `reg:{<hash>}:signups` | per address: sign-up journeys started, for `signup_velocity` |
//!
//! An address's keys share its hash tag, so the risk engine reads all its counts in one
//! round trip ([`address_counts`]).

use crate::config::RegulationSpec;
use crate::session::{keys, SessionStore, StoreError};
use std::net::IpAddr;
use std::time::Duration;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Ip(IpAddr),
    Account(&'a str),
}

impl Subject<'_> {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Ip(_) => "ip",
            Subject::Account(_) => "account",
        }
    }

    fn hash(&self) -> String {
        let text = match self {
            // `ip|<address>`, `ip6|<first four groups>::/64` (docs/abuse.md).
            Subject::Ip(ip @ IpAddr::V4(_)) => format!("ip|{}", crate::ratelimit::client_key(*ip)),
            Subject::Ip(ip @ IpAddr::V6(_)) => format!("ip6|{}", crate::ratelimit::client_key(*ip)),
            Subject::Account(a) => format!("account|{}", a.trim().to_lowercase()),
        };
        keys::sha256_hex(text.as_bytes())
    }

    fn threshold(&self, spec: &RegulationSpec) -> u32 {
        match self {
            Subject::Ip(_) => spec.max_failures_per_ip,
            Subject::Account(_) => spec.max_failures,
        }
    }
}

fn key(s: &Subject<'_>, what: &str) -> String {
    key_of(&s.hash(), what)
}

fn key_of(hash: &str, what: &str) -> String {
    format!("reg:{{{hash}}}:{what}")
}

/// Why a login may not start now, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub action: &'static str,
    pub kind: &'static str,
    pub wait: Duration,
}

fn read_ms(v: Option<Vec<u8>>) -> Option<u64> {
    v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
}

/// May a login start for these subjects at `now_ms`? The longest hold, if any: the
/// login may start only when every subject's hold is over, and `Retry-After` says so.
pub async fn check(
    store: &dyn SessionStore,
    spec: &RegulationSpec,
    subjects: &[Subject<'_>],
    now_ms: u64,
) -> Result<Option<Held>, StoreError> {
    let mut longest: Option<Held> = None;
    for s in subjects {
        if let Some(held) = hold(store, spec, s, now_ms).await? {
            if longest.is_none_or(|l| held.wait > l.wait) {
                longest = Some(held);
            }
        }
    }
    Ok(longest)
}

/// One subject's hold at `now_ms`: its ban, else its back-off.
async fn hold(
    store: &dyn SessionStore,
    spec: &RegulationSpec,
    s: &Subject<'_>,
    now_ms: u64,
) -> Result<Option<Held>, StoreError> {
    if let Some(until) = read_ms(store.get(&key(s, "ban")).await?) {
        if until > now_ms {
            return Ok(Some(Held {
                action: "ban",
                kind: s.kind(),
                wait: Duration::from_millis(until - now_ms),
            }));
        }
    }
    let n = store.index_count(&key(s, "failures"), now_ms).await?;
    if n >= u64::from(spec.backoff_after) && n > 0 {
        let extra = (n - u64::from(spec.backoff_after)).min(20) as u32;
        let wait = spec
            .backoff
            .saturating_mul(1u32 << extra.min(16))
            .min(spec.ban);
        if let Some(last) = read_ms(store.get(&key(s, "last")).await?) {
            let until = last.saturating_add(wait.as_millis() as u64);
            if until > now_ms {
                return Ok(Some(Held {
                    action: "backoff",
                    kind: s.kind(),
                    wait: Duration::from_millis(until - now_ms),
                }));
            }
        }
    }
    Ok(None)
}

/// Failed logins counted against `subject` in the window (the `recent_failures` risk
/// signal).
pub async fn failures(
    store: &dyn SessionStore,
    subject: &Subject<'_>,
    now_ms: u64,
) -> Result<u64, StoreError> {
    store.index_count(&key(subject, "failures"), now_ms).await
}

/// What the risk signals count against a client address, in one round trip.
pub async fn address_counts(
    store: &dyn SessionStore,
    ip: IpAddr,
    now_ms: u64,
) -> Result<crate::risk::AddressCounts, StoreError> {
    let h = Subject::Ip(ip).hash();
    let (f, a, u) = (
        key_of(&h, "failures"),
        key_of(&h, "accounts"),
        key_of(&h, "signups"),
    );
    let n = store.index_counts(&[&f, &a, &u], now_ms).await?;
    let at = |i: usize| n.get(i).copied().unwrap_or(0);
    Ok(crate::risk::AddressCounts {
        failures: at(0),
        accounts: at(1),
        signups: at(2),
    })
}

/// Notes that `account` (an email given for home-realm discovery, or `provider:sub`)
/// signed in or tried to from `ip`; returns how many distinct accounts did within
/// `window` (the `credential_stuffing` signal).
pub async fn note_account(
    store: &dyn SessionStore,
    ip: IpAddr,
    account: &str,
    window: Duration,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let k = key(&Subject::Ip(ip), "accounts");
    let member = Subject::Account(account).hash();
    let until = now_ms.saturating_add(window.as_millis() as u64);
    store.index_add(&k, &member, until).await?;
    store.index_count(&k, now_ms).await
}

/// Notes a sign-up journey started from `ip`; returns how many did within `window`
/// (the `signup_velocity` signal).
pub async fn note_signup(
    store: &dyn SessionStore,
    ip: IpAddr,
    window: Duration,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let k = key(&Subject::Ip(ip), "signups");
    let until = now_ms.saturating_add(window.as_millis() as u64);
    store
        .index_add(&k, &crate::oidc::flow::random_token(), until)
        .await?;
    store.index_count(&k, now_ms).await
}

/// Counts a failed login against each subject; returns the kinds of the subjects whose
/// ban this failure began (reached the threshold).
pub async fn record_failure(
    store: &dyn SessionStore,
    spec: &RegulationSpec,
    subjects: &[Subject<'_>],
    now_ms: u64,
) -> Result<Vec<&'static str>, StoreError> {
    let mut banned = Vec::new();
    let window_end = now_ms.saturating_add(spec.window.as_millis() as u64);
    for s in subjects {
        let failures = key(s, "failures");
        // A unique member per failure: the count is how many happened in the window.
        let member = crate::oidc::flow::random_token();
        store.index_add(&failures, &member, window_end).await?;
        store
            .put(&key(s, "last"), now_ms.to_string().as_bytes(), spec.window)
            .await?;
        let n = store.index_count(&failures, now_ms).await?;
        if n >= u64::from(s.threshold(spec)) {
            // Every failure at or over the threshold (re)starts the ban; the ban is
            // reported once, when the threshold is reached.
            let until = now_ms.saturating_add(spec.ban.as_millis() as u64);
            store
                .put(&key(s, "ban"), until.to_string().as_bytes(), spec.ban)
                .await?;
            if n == u64::from(s.threshold(spec)) {
                banned.push(s.kind());
            }
        }
    }
    Ok(banned)
}

/// Callback failures that count against the account: the user's own doing at the
/// provider or a login refused for who they are. Every 4xx failure counts against the
/// address (forged or replayed callbacks included).
pub fn counts_against_account(reason: &str) -> bool {
    matches!(
        reason,
        "access-denied"
            | "acr-insufficient"
            | "population-unmatched"
            | "step-up-acr-insufficient"
            | "step-up-authentication-too-old"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::session::MemoryStore;
    use std::sync::Arc;

    fn spec() -> RegulationSpec {
        RegulationSpec {
            window: Duration::from_secs(600),
            max_failures: 5,
            max_failures_per_ip: 8,
            backoff_after: 3,
            backoff: Duration::from_secs(1),
            ban: Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn failures_back_off_then_ban_and_the_ban_expires() {
        let clock = FakeClock::new();
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let spec = spec();
        let alice = [Subject::Account("Alice@Example.com")];
        let now = |c: &FakeClock| c.now_ms();
        use crate::clock::Clock;
        for _ in 0..2 {
            record_failure(&store, &spec, &alice, now(&clock))
                .await
                .unwrap();
            assert_eq!(
                check(&store, &spec, &alice, now(&clock)).await.unwrap(),
                None
            );
        }
        // The third failure: each login now waits 1 s, then 2 s after the fourth.
        record_failure(&store, &spec, &alice, now(&clock))
            .await
            .unwrap();
        let held = check(&store, &spec, &alice, now(&clock))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((held.action, held.kind), ("backoff", "account"));
        assert_eq!(held.wait, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            check(&store, &spec, &alice, now(&clock)).await.unwrap(),
            None
        );
        record_failure(&store, &spec, &alice, now(&clock))
            .await
            .unwrap();
        let held = check(&store, &spec, &alice, now(&clock))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.wait, Duration::from_secs(2));
        // The fifth: banned for 15 minutes, whatever the case of the address.
        clock.advance(Duration::from_secs(2));
        let banned = record_failure(&store, &spec, &alice, now(&clock))
            .await
            .unwrap();
        assert_eq!(banned, ["account"]);
        let other_case = [Subject::Account("alice@example.com")];
        let held = check(&store, &spec, &other_case, now(&clock))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((held.action, held.wait), ("ban", Duration::from_secs(900)));
        assert_eq!(
            check(
                &store,
                &spec,
                &[Subject::Account("bob@example.com")],
                now(&clock)
            )
            .await
            .unwrap(),
            None,
            "another account is not held"
        );
        clock.advance(Duration::from_secs(901));
        assert_eq!(
            check(&store, &spec, &alice, now(&clock)).await.unwrap(),
            None,
            "ban and window over"
        );
    }

    #[tokio::test]
    async fn an_address_counts_distinct_accounts_and_signups_in_their_windows() {
        use crate::clock::Clock;
        let clock = FakeClock::new();
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let ten_min = Duration::from_secs(600);
        for account in ["a@example.com", "A@Example.com", "b@example.com", "c:sub"] {
            note_account(&store, ip, account, ten_min, clock.now_ms())
                .await
                .unwrap();
        }
        for _ in 0..2 {
            note_signup(&store, ip, Duration::from_secs(3600), clock.now_ms())
                .await
                .unwrap();
        }
        record_failure(&store, &spec(), &[Subject::Ip(ip)], clock.now_ms())
            .await
            .unwrap();
        let counts = address_counts(&store, ip, clock.now_ms()).await.unwrap();
        assert_eq!(
            counts,
            crate::risk::AddressCounts {
                failures: 1,
                accounts: 3,
                signups: 2
            },
            "the same address in another case is one account"
        );
        assert_eq!(
            address_counts(&store, other, clock.now_ms()).await.unwrap(),
            crate::risk::AddressCounts::default()
        );
        clock.advance(Duration::from_secs(601));
        let later = address_counts(&store, ip, clock.now_ms()).await.unwrap();
        assert_eq!(
            (later.accounts, later.signups),
            (0, 2),
            "accounts window over"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a = Subject::Ip("2001:db8:1:2::1".parse().unwrap());
        let b = Subject::Ip("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = Subject::Ip("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        // The texts docs/abuse.md gives for lifting a ban by hand.
        assert_eq!(a.hash(), keys::sha256_hex(b"ip6|2001:db8:1:2::/64"));
        assert_eq!(
            Subject::Ip("192.0.2.7".parse().unwrap()).hash(),
            keys::sha256_hex(b"ip|192.0.2.7")
        );
    }
}
