//! Request signing (SPEC §5): the `superleap` header, the Standard Webhooks
//! headers, and the matching verification helpers used by `walhook listen` and
//! the demo receiver.
//!
//! Everything here is pure: the caller passes the clock (`now_unix_secs`), so the
//! same inputs always give the same headers.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use sha2::Sha256;

use crate::config::{EndpointConfig, HeaderPrefix, SigningScheme};

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long keys are hashed), so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn standard_webhooks_mac(key: &[u8], msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// `sha256=` + lowercase hex HMAC-SHA256 of `body`, keyed with `secret` (the
/// configured secret's UTF-8 bytes, not decoded).
pub fn superleap_signature(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// One Standard Webhooks signature: `v1,` + base64 HMAC-SHA256 over
/// `{msg_id}.{timestamp}.{body}`, keyed with the decoded `whsec_` secret.
pub fn standard_webhooks_signature(
    key: &[u8],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let m = standard_webhooks_mac(key, msg_id, &timestamp.to_string(), body);
    format!("v1,{}", BASE64.encode(m.finalize().into_bytes()))
}

/// `text` with the bytes a header value cannot hold (controls, DEL)
/// percent-encoded. Event ids and names never contain any (SPEC §5), so for
/// them this is the text itself.
fn header_text(text: &str) -> Cow<'_, str> {
    let bad = |b: u8| b < 0x20 || b == 0x7f;
    if !text.bytes().any(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match u8::try_from(c) {
            Ok(b) if bad(b) => out.push_str(&format!("%{b:02X}")),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(&header_text(text)).expect("header_text leaves only valid bytes")
}

/// The headers of one attempt, in a stable order: `content-type`,
/// `user-agent`, `{prefix}-event-id`, `{prefix}-event`, then
/// `{prefix}-signature` when `superleap` is among the schemes (keyed with the
/// first secret), then `webhook-id`, `webhook-timestamp`, `webhook-signature`
/// (one `v1,...` per secret, space-separated) with `standard-webhooks`, then
/// the endpoint's extra `headers`, marked sensitive (their values may be
/// credentials: they are recorded masked, see
/// [`crate::dispatch::outcome::headers_json`]).
///
/// Cannot fail: the prefix's header names and the keys were checked when the
/// configuration loaded, which also guarantees that with `standard-webhooks`
/// every secret has a Standard Webhooks key (one without would be skipped).
/// `now_unix_secs` is the time of this attempt; only `webhook-timestamp` and
/// the Standard Webhooks signature depend on it.
pub fn signed_headers(
    endpoint: &EndpointConfig,
    prefix: &HeaderPrefix,
    event_id: &str,
    event_name: &str,
    body: &[u8],
    now_unix_secs: i64,
) -> HeaderMap {
    let event_id = header_text(event_id);
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(prefix.event_id().clone(), value(&event_id));
    headers.insert(prefix.event().clone(), value(event_name));
    if endpoint.signing.contains(&SigningScheme::Superleap) {
        let key = endpoint.secrets.primary().superleap_key();
        headers.insert(
            prefix.signature().clone(),
            value(&superleap_signature(key, body)),
        );
    }
    if endpoint.signing.contains(&SigningScheme::StandardWebhooks) {
        let signatures: Vec<String> = endpoint
            .secrets
            .iter()
            .filter_map(|k| k.standard_webhooks_key().ok())
            .map(|key| standard_webhooks_signature(key, &event_id, now_unix_secs, body))
            .collect();
        headers.insert(HeaderName::from_static("webhook-id"), value(&event_id));
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(now_unix_secs),
        );
        headers.insert(
            HeaderName::from_static("webhook-signature"),
            value(&signatures.join(" ")),
        );
    }
    for extra in &endpoint.headers {
        // Names and values were checked when the configuration loaded.
        let mut v = HeaderValue::from_str(extra.value.expose())
            .expect("extra header values are checked at load");
        v.set_sensitive(true);
        headers.insert(extra.name.clone(), v);
    }
    headers
}

/// Whether `header` (`sha256=<hex>`, hex in either case) is the HMAC-SHA256 of
/// `body` under `secret`. Constant-time comparison.
pub fn verify_superleap(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// Whether any `v1,<base64>` entry of the space-separated `header` is the
/// Standard Webhooks signature of (`msg_id`, `timestamp`, `body`) under `key`
/// (the decoded secret, see [`crate::config::decode_whsec`]). Entries of other versions are
/// ignored. Constant-time comparison per entry.
///
/// The timestamp is used exactly as received; checking that it is recent (replay
/// protection) is the caller's decision.
pub fn verify_standard_webhooks(
    key: &[u8],
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let expected = standard_webhooks_mac(key, msg_id, timestamp, body);
    header.split_ascii_whitespace().any(|entry| {
        let Some(("v1", encoded)) = entry.split_once(',') else {
            return false;
        };
        let Ok(sig) = BASE64.decode(encoded) else {
            return false;
        };
        expected.clone().verify_slice(&sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{EndpointSecrets, Secret, decode_whsec};

    const SW1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW1_TS: i64 = 1614265330;
    const SW1_BODY: &str = r#"{"test": 2432232314}"#;
    const SW1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const SW2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SW2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SW2_TS: i64 = 1649367553;
    const SW2_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const SW2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn endpoint(secrets: &[&str], signing: &[SigningScheme]) -> EndpointConfig {
        EndpointConfig {
            id: "crm".to_owned(),
            url: "http://127.0.0.1:9/hook".parse().unwrap(),
            secrets: EndpointSecrets::new(secrets.iter().map(|s| Secret::new(*s)).collect())
                .unwrap(),
            events: vec!["*".to_owned()],
            signing: signing.to_vec(),
            timeout: Duration::from_secs(10),
            allow_insecure_http: false,
            retry: Default::default(),
            headers: Vec::new(),
            rate_limit: None,
            max_in_flight: None,
            filter: None,
        }
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn prefix(text: &str) -> HeaderPrefix {
        HeaderPrefix::new(text).unwrap()
    }

    #[test]
    fn standard_webhooks_reference_vector_1() {
        let key = decode_whsec(SW1_SECRET).unwrap();
        assert_eq!(
            standard_webhooks_signature(&key, SW1_ID, SW1_TS, SW1_BODY.as_bytes()),
            SW1_SIG
        );
    }

    #[test]
    fn standard_webhooks_reference_vector_2() {
        let key = decode_whsec(SW2_SECRET).unwrap();
        assert_eq!(
            standard_webhooks_signature(&key, SW2_ID, SW2_TS, SW2_BODY.as_bytes()),
            SW2_SIG
        );
    }

    #[test]
    fn superleap_rfc4231_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            superleap_signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn superleap_cross_checked_with_python_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",
        //   b"{\"before\":{},\"after\":{\"id\":1},\"diff\":{\"id\":1}}", hashlib.sha256).hexdigest())'
        assert_eq!(
            superleap_signature(
                b"s3cret",
                br#"{"before":{},"after":{"id":1},"diff":{"id":1}}"#
            ),
            "sha256=e9dfe4535d1cbe5566166f5762186d99022bee102c1af8f251390ecd5172cb4e"
        );
    }

    #[test]
    fn headers_superleap_only() {
        let ep = endpoint(&["s3cret", "older"], &[SigningScheme::Superleap]);
        let body = br#"{"before":{},"after":{"id":1},"diff":{"id":1}}"#;
        let h = signed_headers(
            &ep,
            &prefix("X-Superleap"),
            "app:lead:1:1:lead.create:abcdefgh",
            "lead.create",
            body,
            1_700_000_000,
        );
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "user-agent",
                "x-superleap-event-id",
                "x-superleap-event",
                "x-superleap-signature"
            ]
        );
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert_eq!(
            header(&h, "user-agent"),
            Some(format!("walhook/{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        assert_eq!(
            header(&h, "x-superleap-event-id"),
            Some("app:lead:1:1:lead.create:abcdefgh")
        );
        assert_eq!(header(&h, "x-superleap-event"), Some("lead.create"));
        // Keyed with the first secret only.
        assert_eq!(
            header(&h, "x-superleap-signature"),
            Some(superleap_signature(b"s3cret", body).as_str())
        );
    }

    #[test]
    fn headers_standard_webhooks_only() {
        let ep = endpoint(&[SW1_SECRET], &[SigningScheme::StandardWebhooks]);
        let h = signed_headers(
            &ep,
            &HeaderPrefix::default(),
            SW1_ID,
            "lead.update",
            SW1_BODY.as_bytes(),
            SW1_TS,
        );
        assert_eq!(header(&h, "x-superleap-signature"), None);
        assert_eq!(header(&h, "x-superleap-event-id"), Some(SW1_ID));
        assert_eq!(header(&h, "x-superleap-event"), Some("lead.update"));
        assert_eq!(header(&h, "webhook-id"), Some(SW1_ID));
        assert_eq!(header(&h, "webhook-timestamp"), Some("1614265330"));
        assert_eq!(header(&h, "webhook-signature"), Some(SW1_SIG));
    }

    #[test]
    fn headers_both_schemes_with_rotation() {
        let ep = endpoint(
            &[SW1_SECRET, SW2_SECRET],
            &[SigningScheme::Superleap, SigningScheme::StandardWebhooks],
        );
        let body = SW1_BODY.as_bytes();
        let h = signed_headers(&ep, &prefix("x-acme"), SW1_ID, "lead.delete", body, SW1_TS);
        assert_eq!(
            header(&h, "x-acme-signature"),
            Some(superleap_signature(SW1_SECRET.as_bytes(), body).as_str())
        );
        let sigs: Vec<&str> = header(&h, "webhook-signature")
            .unwrap()
            .split(' ')
            .collect();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[0], SW1_SIG);
        let key2 = decode_whsec(SW2_SECRET).unwrap();
        assert_eq!(
            sigs[1],
            standard_webhooks_signature(&key2, SW1_ID, SW1_TS, body)
        );
        assert_ne!(sigs[0], sigs[1]);
        // A receiver that knows only the second (new) secret still verifies.
        assert!(verify_standard_webhooks(
            &key2,
            SW1_ID,
            "1614265330",
            body,
            header(&h, "webhook-signature").unwrap()
        ));
    }

    #[test]
    fn headers_skip_a_secret_without_a_standard_webhooks_key() {
        // The configuration rejects such an endpoint; signing still cannot fail.
        let ep = endpoint(
            &[SW1_SECRET, "plain-s3cret"],
            &[SigningScheme::StandardWebhooks],
        );
        let h = signed_headers(
            &ep,
            &HeaderPrefix::default(),
            SW1_ID,
            "lead.create",
            SW1_BODY.as_bytes(),
            SW1_TS,
        );
        assert_eq!(header(&h, "webhook-signature"), Some(SW1_SIG));
    }

    #[test]
    fn control_bytes_in_an_id_are_percent_encoded_and_signed_as_sent() {
        let ep = endpoint(&[SW1_SECRET], &[SigningScheme::StandardWebhooks]);
        let id = "app:lead:1:a\nb:lead.create:abcdefgh";
        let h = signed_headers(&ep, &HeaderPrefix::default(), id, "lead.create", b"{}", 1);
        let sent = "app:lead:1:a%0Ab:lead.create:abcdefgh";
        assert_eq!(header(&h, "x-superleap-event-id"), Some(sent));
        assert_eq!(header(&h, "webhook-id"), Some(sent));
        let key = decode_whsec(SW1_SECRET).unwrap();
        assert_eq!(
            header(&h, "webhook-signature"),
            Some(standard_webhooks_signature(&key, sent, 1, b"{}").as_str())
        );
        // Non-ASCII stays as it is, as before.
        let h = signed_headers(&ep, &HeaderPrefix::default(), "é", "lead.create", b"{}", 1);
        assert_eq!(h["webhook-id"].as_bytes(), "é".as_bytes());
    }

    #[test]
    fn extra_headers_come_last_and_are_sensitive() {
        let mut ep = endpoint(&["s3cret"], &[SigningScheme::Superleap]);
        ep.headers = vec![crate::config::ExtraHeader {
            name: HeaderName::from_static("x-api-key"),
            value: Secret::new("key-123"),
        }];
        let h = signed_headers(&ep, &HeaderPrefix::default(), "id", "lead.create", b"{}", 1);
        assert_eq!(header(&h, "x-api-key"), Some("key-123"));
        assert!(h["x-api-key"].is_sensitive());
        assert!(!h["x-superleap-signature"].is_sensitive());
        assert_eq!(h.keys().last().map(|k| k.as_str()), Some("x-api-key"));
        assert!(!format!("{h:?}").contains("key-123"));
        let recorded = crate::dispatch::outcome::headers_json(&h);
        assert!(recorded.contains(r#""x-api-key":"***""#), "{recorded}");
        assert!(!recorded.contains("key-123"), "{recorded}");
    }

    #[test]
    fn verify_superleap_true_and_false() {
        let body = b"what do ya want for nothing?";
        let good = superleap_signature(b"Jefe", body);
        assert!(verify_superleap(b"Jefe", body, &good));
        assert!(verify_superleap(
            b"Jefe",
            body,
            &good.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_superleap(b"jefe", body, &good));
        assert!(!verify_superleap(
            b"Jefe",
            b"what do ya want for nothing!",
            &good
        ));
        assert!(!verify_superleap(
            b"Jefe",
            body,
            good.trim_start_matches("sha256=")
        ));
        assert!(!verify_superleap(b"Jefe", body, "sha256=zz"));
        assert!(!verify_superleap(b"Jefe", body, &good[..good.len() - 2]));
        assert!(!verify_superleap(b"Jefe", body, ""));
    }

    #[test]
    fn verify_standard_webhooks_true_and_false() {
        let key = decode_whsec(SW1_SECRET).unwrap();
        let body = SW1_BODY.as_bytes();
        assert!(verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            body,
            SW1_SIG
        ));
        // Any matching entry among several, other versions ignored.
        let multi = format!("v1a,abc v1,AAAA {SW1_SIG}");
        assert!(verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            body,
            &multi
        ));
        assert!(!verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265331",
            body,
            SW1_SIG
        ));
        assert!(!verify_standard_webhooks(
            &key,
            "msg_other",
            "1614265330",
            body,
            SW1_SIG
        ));
        assert!(!verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            b"{\"test\": 1}",
            SW1_SIG
        ));
        let other = decode_whsec(SW2_SECRET).unwrap();
        assert!(!verify_standard_webhooks(
            &other,
            SW1_ID,
            "1614265330",
            body,
            SW1_SIG
        ));
        assert!(!verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            body,
            &SW1_SIG.replacen("v1,", "v2,", 1)
        ));
        assert!(!verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            body,
            ""
        ));
        assert!(!verify_standard_webhooks(
            &key,
            SW1_ID,
            "1614265330",
            body,
            "v1,!!!"
        ));
    }
}
