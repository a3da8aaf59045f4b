//! Tokens at rest: the provider's ID, access and refresh tokens are kept in the session
//! store only sealed with AES-256-GCM (`ring`), so a copy of Redis does not hand out
//! tokens. Keys come from `session.encryption_keys`; the first seals, all of them open,
//! so a key can be rotated in by listing it first and rotated out once sessions sealed
//! with it have ended. Each sealed value names its key by a short fingerprint and is
//! bound (as associated data) to the user and the kind of token, so a sealed refresh
//! token cannot be moved to another user's session or used as another kind of token.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// One key, with the fingerprint that names it in sealed values.
pub struct SealingKey {
    id: String,
    key: LessSafeKey,
    /// For values the gateway signs rather than seals (the device cookie), derived from
    /// the same secret under its own label so the two uses never share a key.
    mac: hmac::Key,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    /// A key from its configured text: 32 bytes as base64 (standard or URL-safe, padded
    /// or not) or as 64 hex digits (`openssl rand -base64 32`).
    pub fn parse(text: &str) -> Result<SealingKey, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            STANDARD
                .decode(t)
                .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
                .map_err(|_| "not base64 or hex".to_string())?
        };
        if bytes.len() != 32 {
            return Err(format!(
                "a key is 32 random bytes, this one has {} (openssl rand -base64 32)",
                bytes.len()
            ));
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A random key for one process (the memory store, where nothing outlives it).
    pub fn generate() -> SealingKey {
        let mut b = [0u8; 32];
        SystemRandom::new()
            .fill(&mut b)
            .expect("the system random generator works");
        Self::from_bytes(&b)
    }

    fn from_bytes(b: &[u8]) -> SealingKey {
        let id = super::keys::sha256_hex(b)[..8].to_string();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, b).expect("32-byte key"));
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b),
            b"portcullis signed values v1",
        );
        let mac = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        SealingKey { id, key, mac }
    }
}

/// The configured keys; the first seals.
pub struct Sealer {
    keys: Vec<SealingKey>,
    /// Fingerprint of the key list, so a reload can tell whether it changed.
    pub fingerprint: String,
}

impl Sealer {
    pub fn new(keys: Vec<SealingKey>) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        let fingerprint = keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Some(Sealer { keys, fingerprint })
    }

    /// `v1.<key id>.<base64url(nonce | ciphertext | tag)>`.
    pub fn seal(&self, plaintext: &str, context: &str) -> Option<String> {
        let k = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut buf = plaintext.as_bytes().to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(format!("v1.{}.{}", k.id, URL_SAFE_NO_PAD.encode(out)))
    }

    /// `<value>.<base64url(HMAC-SHA256)>` with the first key: a value anyone may read but
    /// only the gateway can have issued, for `context`.
    pub fn sign(&self, value: &str, context: &str) -> String {
        let tag = hmac::sign(&self.keys[0].mac, &Self::signed_input(value, context));
        format!("{value}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The value of `signed`, when one of our keys signed it for `context`.
    pub fn verify<'a>(&self, signed: &'a str, context: &str) -> Option<&'a str> {
        let (value, tag) = signed.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let input = Self::signed_input(value, context);
        self.keys
            .iter()
            .any(|k| hmac::verify(&k.mac, &input, &tag).is_ok())
            .then_some(value)
    }

    fn signed_input(value: &str, context: &str) -> Vec<u8> {
        // Length-prefixed, so no (value, context) pair reads as another.
        let mut m = Vec::with_capacity(8 + value.len() + context.len());
        m.extend_from_slice(&(context.len() as u64).to_be_bytes());
        m.extend_from_slice(context.as_bytes());
        m.extend_from_slice(value.as_bytes());
        m
    }

    /// The plaintext, when `sealed` was sealed by one of our keys for `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Option<String> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let k = self.keys.iter().find(|k| k.id == id)?;
        let mut raw = URL_SAFE_NO_PAD.decode(data).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).ok()?;
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealingKey {
        SealingKey::parse(&STANDARD.encode([b; 32])).unwrap()
    }

    #[test]
    fn sealed_tokens_open_only_with_a_listed_key_and_the_same_context() {
        let s = Sealer::new(vec![key(1)]).unwrap();
        let sealed = s.seal("refresh-token-value", "alice|refresh").unwrap();
        assert!(!sealed.contains("refresh-token-value"));
        assert_eq!(
            s.open(&sealed, "alice|refresh").as_deref(),
            Some("refresh-token-value")
        );
        assert_eq!(s.open(&sealed, "bob|refresh"), None, "bound to the user");
        assert_eq!(s.open(&sealed, "alice|access"), None, "bound to the kind");
        let other = Sealer::new(vec![key(2)]).unwrap();
        assert_eq!(other.open(&sealed, "alice|refresh"), None);
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(s.open(&tampered, "alice|refresh"), None);
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_any() {
        let old = Sealer::new(vec![key(1)]).unwrap();
        let sealed_old = old.seal("t", "c").unwrap();
        let rotated = Sealer::new(vec![key(2), key(1)]).unwrap();
        assert_eq!(rotated.open(&sealed_old, "c").as_deref(), Some("t"));
        let sealed_new = rotated.seal("t", "c").unwrap();
        assert_eq!(old.open(&sealed_new, "c"), None, "sealed with the new key");
        assert_ne!(old.fingerprint, rotated.fingerprint);
    }

    #[test]
    fn signed_values_verify_only_with_a_listed_key_and_the_same_context() {
        let s = Sealer::new(vec![key(1)]).unwrap();
        let signed = s.sign("device-id", "device");
        assert!(signed.starts_with("device-id."));
        assert_eq!(s.verify(&signed, "device"), Some("device-id"));
        assert_eq!(s.verify(&signed, "other"), None, "bound to the context");
        assert_eq!(
            Sealer::new(vec![key(2)]).unwrap().verify(&signed, "device"),
            None
        );
        let rotated = Sealer::new(vec![key(2), key(1)]).unwrap();
        assert_eq!(rotated.verify(&signed, "device"), Some("device-id"));
        assert_eq!(s.verify("device-id", "device"), None, "no signature");
        let forged = format!("other-id.{}", signed.rsplit_once('.').unwrap().1);
        assert_eq!(
            s.verify(&forged, "device"),
            None,
            "signature of another value"
        );
        let mut tampered = signed.clone();
        tampered.pop();
        tampered.push(if signed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(s.verify(&tampered, "device"), None);
    }

    #[test]
    fn keys_are_32_bytes_of_base64_or_hex() {
        assert!(SealingKey::parse(&"ab".repeat(32)).is_ok());
        assert!(SealingKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
        assert!(SealingKey::parse(&STANDARD.encode([7u8; 16]))
            .unwrap_err()
            .contains("16"));
        assert!(SealingKey::parse("not a key!").is_err());
    }
}
