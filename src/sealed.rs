//! Secrets at rest: the signing secrets of endpoints created at runtime are
//! kept in the ledger sealed with AES-256-GCM (RustCrypto `aes-gcm`) under a
//! 32-byte key that only the environment holds. A sealed value is
//! `nonce (12 bytes) || ciphertext || tag (16 bytes)`; each seal draws a
//! fresh random nonce. The endpoint id is bound as associated data, so a
//! sealed secret copied onto another endpoint's row does not open.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Length of the key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the nonce at the start of a sealed value.
const NONCE_LEN: usize = 12;

/// Why a key cannot be used or a sealed value does not open. Messages never
/// hold key or secret material (the base64 decoder's error, which quotes
/// the offending character, is dropped on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the key is not standard base64")]
    KeyNotBase64,
    #[error("the key decodes to {0} bytes; it must be exactly 32 (e.g. `openssl rand -base64 32`)")]
    KeyLength(usize),
    #[error(
        "a sealed secret does not open with this key (another key sealed it, or the ledger row was changed)"
    )]
    DoesNotOpen,
}

/// The key that seals endpoint secrets. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SealKey(Aes256Gcm);

impl SealKey {
    /// A key from its standard base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<SealKey, SealError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| SealError::KeyNotBase64)?;
        if bytes.len() != KEY_LEN {
            return Err(SealError::KeyLength(bytes.len()));
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::KeyLength(0))?;
        Ok(SealKey(cipher))
    }

    /// `plaintext` sealed for `context` (the endpoint id) under a fresh
    /// random nonce: `nonce || ciphertext || tag`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        let ct = self
            .0
            .encrypt(&nonce, payload)
            .expect("AES-GCM encrypts any message shorter than 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The plaintext of a value [`SealKey::seal`] made for `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::DoesNotOpen);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ct,
            aad: context.as_bytes(),
        };
        self.0
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SealError::DoesNotOpen)
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey::from_base64(&BASE64.encode([byte; KEY_LEN])).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key(7);
        let sealed = k.seal("crm", b"whsec_abc");
        assert_eq!(k.open("crm", &sealed).unwrap(), b"whsec_abc");
        assert_eq!(sealed.len(), NONCE_LEN + 9 + 16);
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"));
    }

    #[test]
    fn wrong_key_or_context_fails() {
        let sealed = key(7).seal("crm", b"whsec_abc");
        assert_eq!(key(8).open("crm", &sealed), Err(SealError::DoesNotOpen));
        assert_eq!(key(7).open("billing", &sealed), Err(SealError::DoesNotOpen));
    }

    #[test]
    fn tampering_fails() {
        let k = key(7);
        let sealed = k.seal("crm", b"whsec_abc");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(k.open("crm", &bad), Err(SealError::DoesNotOpen), "byte {i}");
        }
        assert_eq!(
            k.open("crm", &sealed[..sealed.len() - 1]),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(k.open("crm", &sealed[..5]), Err(SealError::DoesNotOpen));
    }

    #[test]
    fn nonces_are_unique() {
        let k = key(7);
        let mut nonces: Vec<Vec<u8>> = (0..1000)
            .map(|_| k.seal("crm", b"same")[..NONCE_LEN].to_vec())
            .collect();
        nonces.sort();
        nonces.dedup();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        assert_eq!(
            SealKey::from_base64("not base64!").unwrap_err(),
            SealError::KeyNotBase64
        );
        assert_eq!(
            SealKey::from_base64(&BASE64.encode([1u8; 16])).unwrap_err(),
            SealError::KeyLength(16)
        );
        assert_eq!(format!("{:?}", key(1)), "SealKey(***)");
    }
}
