//! Endpoint signing secrets, parsed once: the raw secret (the `superleap`
//! scheme's key) and, for a `whsec_<base64>` secret, the decoded Standard
//! Webhooks key. Signing then has nothing left that can fail.

use std::fmt;
use std::ops::Deref;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::secret::Secret;

/// Prefix every Standard Webhooks secret carries.
const WHSEC_PREFIX: &str = "whsec_";

/// Why a secret is not a usable Standard Webhooks key. Messages never contain
/// secret material: the base64 decoder's own error is dropped on purpose
/// because it quotes the offending character of the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WhsecError {
    #[error("a standard-webhooks secret must start with `whsec_`")]
    MissingPrefix,
    #[error("a standard-webhooks secret must be standard base64 after `whsec_`")]
    InvalidBase64,
    #[error("a standard-webhooks secret must not decode to an empty key")]
    EmptyKey,
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` followed by standard
/// base64 (with padding when the length needs it). An empty key is rejected.
pub fn decode_whsec(secret: &str) -> Result<Vec<u8>, WhsecError> {
    let encoded = secret
        .strip_prefix(WHSEC_PREFIX)
        .ok_or(WhsecError::MissingPrefix)?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| WhsecError::InvalidBase64)?;
    if key.is_empty() {
        return Err(WhsecError::EmptyKey);
    }
    Ok(key)
}

/// One signing secret, parsed once. The `superleap` scheme keys HMAC with the
/// secret's UTF-8 bytes; the Standard Webhooks key is there when the secret is
/// a valid `whsec_<base64>`. Its `Debug` never shows either.
#[derive(Clone)]
pub struct SigningKey {
    secret: Secret,
    whsec: Result<Vec<u8>, WhsecError>,
}

impl SigningKey {
    /// Never fails: a secret that is not a valid `whsec_` secret simply has no
    /// Standard Webhooks key (see [`SigningKey::standard_webhooks_key`]).
    pub fn new(secret: Secret) -> SigningKey {
        let whsec = decode_whsec(secret.expose());
        SigningKey { secret, whsec }
    }

    /// The secret as configured.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The `superleap` HMAC key: the secret's UTF-8 bytes, not decoded.
    pub fn superleap_key(&self) -> &[u8] {
        self.secret.expose().as_bytes()
    }

    /// The decoded Standard Webhooks key, or why this secret has none
    /// ([`WhsecError::MissingPrefix`]: it is not a `whsec_` secret at all).
    pub fn standard_webhooks_key(&self) -> Result<&[u8], WhsecError> {
        match &self.whsec {
            Ok(key) => Ok(key),
            Err(e) => Err(*e),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("secret", &self.secret)
            .field("standard_webhooks", &self.whsec.is_ok())
            .finish()
    }
}

/// An endpoint's secrets in configuration order: never empty. The first
/// ([`EndpointSecrets::primary`]) signs the `superleap` header; with Standard
/// Webhooks every secret signs (rotation).
#[derive(Clone, Debug)]
pub struct EndpointSecrets(Vec<SigningKey>);

impl EndpointSecrets {
    /// Parse each secret; `None` when there is none.
    pub fn new(secrets: Vec<Secret>) -> Option<EndpointSecrets> {
        if secrets.is_empty() {
            return None;
        }
        Some(EndpointSecrets(
            secrets.into_iter().map(SigningKey::new).collect(),
        ))
    }

    /// The first secret.
    pub fn primary(&self) -> &SigningKey {
        &self.0[0]
    }
}

impl Deref for EndpointSecrets {
    type Target = [SigningKey];
    fn deref(&self) -> &[SigningKey] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_whsec_rejects_bad_secrets() {
        assert_eq!(
            decode_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(WhsecError::MissingPrefix)
        );
        assert_eq!(
            decode_whsec("whsec_not*base64!"),
            Err(WhsecError::InvalidBase64)
        );
        assert_eq!(decode_whsec("whsec_"), Err(WhsecError::EmptyKey));
        assert_eq!(decode_whsec("whsec_AAEC").unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn invalid_base64_error_does_not_quote_the_secret() {
        let err = decode_whsec("whsec_abc$def").unwrap_err();
        assert!(!err.to_string().contains('$'));
        assert!(!format!("{err:?}").contains('$'));
    }

    #[test]
    fn keys_are_parsed_once_and_never_shown() {
        let key = SigningKey::new(Secret::new("whsec_AAEC"));
        assert_eq!(key.standard_webhooks_key(), Ok(&[0u8, 1, 2][..]));
        assert_eq!(key.superleap_key(), b"whsec_AAEC");
        let plain = SigningKey::new(Secret::new("plain-s3cret"));
        assert_eq!(
            plain.standard_webhooks_key(),
            Err(WhsecError::MissingPrefix)
        );
        let dbg = format!("{key:?} {plain:?}");
        assert!(
            !dbg.contains("AAEC") && !dbg.contains("plain-s3cret"),
            "{dbg}"
        );
    }

    #[test]
    fn secrets_are_never_empty() {
        assert!(EndpointSecrets::new(Vec::new()).is_none());
        let s = EndpointSecrets::new(vec![Secret::new("new"), Secret::new("old")]).unwrap();
        assert_eq!(s.primary().secret().expose(), "new");
        assert_eq!(s.len(), 2);
    }
}
