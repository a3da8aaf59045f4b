//! Key names, in one place. Values in `{}` are Redis Cluster hash tags: keys with the
//! same tag live in the same slot.
//!
//! | key | holds |
//! |---|---|
//! | `s:{<id-hash>}` | one session, addressed by the SHA-256 of its cookie id |
//! | `u:{<user-hash>}:sessions` | the user's index: session id hashes scored by expiry |
//! | `u:{<user-hash>}:<name>` | any other per-user state, in the user's slot (`devices`: the user's known browsers) |
//! | `p:{<sid-hash>}:sessions` | sessions a provider session (`sid`) made, for back-channel logout |
//! | `{all}:sessions` | every session, scored by when it lapses (counting) |
//! | `l:{<state-hash>}` | short-lived login state (single use) |
//! | `{logins}:pending` | due queue of logins waiting for their callback, due when they time out (abandoned-login count) |
//! | `jti:{<hash>}` | a logout token already used (replay) |
//! | `lock:{<name>}` | a lock |

/// Lower-case hex of a digest; ids and user keys are only ever stored hashed.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// SHA-256 of `data`, hex encoded.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

pub fn session(id_hash: &str) -> String {
    format!("s:{{{id_hash}}}")
}

pub fn user_sessions(user_hash: &str) -> String {
    format!("u:{{{user_hash}}}:sessions")
}

pub fn user_key(user_hash: &str, name: &str) -> String {
    format!("u:{{{user_hash}}}:{name}")
}

pub fn provider_sessions(sid_hash: &str) -> String {
    format!("p:{{{sid_hash}}}:sessions")
}

/// The index of every session.
pub const ALL_SESSIONS: &str = "{all}:sessions";

pub fn used_token(hash: &str) -> String {
    format!("jti:{{{hash}}}")
}

/// The due queue of pending logins.
pub const LOGINS_PENDING: &str = "{logins}:pending";

pub fn login_state(state_hash: &str) -> String {
    format!("l:{{{state_hash}}}")
}

pub fn lock(name: &str) -> String {
    format!("lock:{{{name}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_lower_case_hex() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_users_keys_share_one_hash_tag() {
        let u = sha256_hex(b"issuer|subject");
        assert_eq!(u.len(), 64);
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        assert_eq!(tag(&user_sessions(&u)), tag(&user_key(&u, "devices")));
        assert_ne!(tag(&session(&sha256_hex(b"x"))), tag(&user_sessions(&u)));
    }
}
