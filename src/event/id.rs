//! Deterministic event ids (SPEC §5).
//!
//! An id depends only on where the change sits in the WAL and what it is, so a
//! replay after a crash produces the same id and the ledger can dedupe on it.

use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the id suffix.
pub const SUFFIX_LEN: usize = 8;

/// `{source}:{slug}:{commit_ms}:{record_key}:{event_name}:{suffix}`, where
/// `commit_ms` is the commit time in whole milliseconds, floored (also before
/// 1970), and `suffix` is `suffix(commit_lsn, change_index)`.
///
/// Promises: the same inputs give the same id on every call, process and
/// version; two changes of one database differ in (commit LSN, index), so
/// their suffixes differ unless the 48-bit hashes collide.
pub fn event_id(
    source: &str,
    slug: &str,
    commit_time_unix_micros: i64,
    record_key: &str,
    event_name: &str,
    commit_lsn: u64,
    change_index: u32,
) -> String {
    let commit_ms = commit_time_unix_micros.div_euclid(1000);
    let suffix = suffix(commit_lsn, change_index);
    format!("{source}:{slug}:{commit_ms}:{record_key}:{event_name}:{suffix}")
}

/// 8 characters of `[0-9A-Za-z]` for a change's WAL position.
///
/// Derivation (fixed: changing it changes every id and breaks dedup across an
/// upgrade): SHA-256 over the 12 bytes `commit_lsn` (big-endian u64) ++
/// `change_index` (big-endian u32); the first 8 digest bytes read as a
/// big-endian u64, reduced modulo 62^8, written as 8 base-62 digits, most
/// significant first, zero-padded, with digits `0-9`, `A-Z`, `a-z` for 0..62.
pub fn suffix(commit_lsn: u64, change_index: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(commit_lsn.to_be_bytes());
    hasher.update(change_index.to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut n = u64::from_be_bytes(first);
    let mut out = [b'0'; SUFFIX_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// 8 random `[0-9A-Za-z]` characters, for events walhook makes itself
/// (`endpoint.disabled`, `walhook.ping`): they have no commit position to
/// derive a suffix from.
pub fn random_suffix() -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(SUFFIX_LEN)
        .map(char::from)
        .collect()
}

/// A key value as it goes into a record key (SPEC §5): `%`, `:`, `,` and
/// every byte outside printable ASCII (0x21-0x7E: space, controls, the UTF-8
/// bytes of non-ASCII characters) percent-encoded as `%XX`, so that the
/// record key splits back into its parts, never breaks the `:`-separated
/// event id, and an event id is always a valid HTTP header value. Keys of
/// plain printable ASCII come out unchanged.
pub fn escape_key(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if matches!(b, 0x21..=0x7E) && !matches!(b, b'%' | b':' | b',') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn is_suffix(s: &str) -> bool {
        s.len() == SUFFIX_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    #[test]
    fn shape_matches_the_spec_example() {
        // SPEC: app:lead:1741686315971:lead_987654321:lead.create:9qRSOzKs
        let id = event_id(
            "app",
            "lead",
            1_741_686_315_971_842,
            "lead_987654321",
            "lead.create",
            0x16B_3740_0028,
            0,
        );
        let parts: Vec<&str> = id.split(':').collect();
        assert_eq!(parts.len(), 6, "{id}");
        assert_eq!(
            parts[..5],
            [
                "app",
                "lead",
                "1741686315971",
                "lead_987654321",
                "lead.create"
            ]
        );
        assert!(is_suffix(parts[5]), "{id}");
    }

    #[test]
    fn deterministic() {
        let a = event_id("app", "lead", 5_000, "1", "lead.update", 42, 3);
        let b = event_id("app", "lead", 5_000, "1", "lead.update", 42, 3);
        assert_eq!(a, b);
        // Pinned: the derivation must never change silently.
        assert_eq!(suffix(0, 0), "NcPlhB4O");
        assert_eq!(suffix(0x16B_3740_0028, 7), "fJccjy6s");
        assert_eq!(suffix(0x16B_3740_0028, 7), pinned_suffix());
    }

    /// The documented derivation, spelled out independently.
    fn pinned_suffix() -> String {
        let mut bytes = 0x16B_3740_0028u64.to_be_bytes().to_vec();
        bytes.extend_from_slice(&7u32.to_be_bytes());
        let digest = Sha256::digest(&bytes);
        let mut n = u64::from_be_bytes(digest[..8].try_into().unwrap()) % 62u64.pow(8);
        let mut digits = Vec::new();
        for _ in 0..8 {
            digits.push(BASE62[(n % 62) as usize] as char);
            n /= 62;
        }
        digits.iter().rev().collect()
    }

    #[test]
    fn index_and_lsn_change_the_suffix() {
        let mut seen = HashSet::new();
        for lsn in [0u64, 1, 0x16B_3740_0028, u64::MAX] {
            for index in 0..500u32 {
                let s = suffix(lsn, index);
                assert!(is_suffix(&s), "{s}");
                assert!(seen.insert(s), "collision at {lsn} {index}");
            }
        }
        assert_ne!(suffix(1, 0), suffix(0, 1));
    }

    #[test]
    fn commit_ms_is_floored() {
        let ms = |micros| {
            event_id("s", "o", micros, "k", "o.create", 1, 0)
                .split(':')
                .nth(2)
                .unwrap()
                .to_owned()
        };
        assert_eq!(ms(1_999), "1");
        assert_eq!(ms(1_000), "1");
        assert_eq!(ms(0), "0");
        assert_eq!(ms(-1), "-1");
        assert_eq!(ms(-1_000), "-1");
        assert_eq!(ms(-1_001), "-2");
    }

    #[test]
    fn record_keys_are_always_header_safe() {
        assert_eq!(escape_key("lead_987654321"), "lead_987654321");
        assert_eq!(escape_key("a:b,c%d"), "a%3Ab%2Cc%25d");
        assert_eq!(escape_key("two words"), "two%20words");
        assert_eq!(escape_key("line\r\nbreak"), "line%0D%0Abreak");
        assert_eq!(escape_key("Zoë"), "Zo%C3%AB");
        assert_eq!(escape_key("🎉"), "%F0%9F%8E%89");
        for key in ["x\u{7f}y", "tab\tz", "é:,%"] {
            let escaped = escape_key(key);
            assert!(
                escaped.bytes().all(|b| matches!(b, 0x21..=0x7E)),
                "{escaped}"
            );
            let id = event_id("app", "lead", 0, &escaped, "lead.create", 1, 0);
            assert!(reqwest::header::HeaderValue::from_str(&id).is_ok(), "{id}");
        }
    }
}
