//! `walhook listen`: a local webhook receiver for developers. It prints every
//! request it gets (time, method, path, the walhook headers, the body
//! pretty-printed) and whether each signature on it verifies, then answers
//! with a fixed status (200 unless told otherwise, to simulate failures).
//!
//! The signature checks ([`Verifier`]) are also what the demo's in-process
//! receiver uses. Secrets are never printed: the verifier's `Debug` shows only
//! how many it holds, and verdicts name a secret by its position.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::{EndpointSecrets, Secret, SigningScheme, WhsecError};
use crate::dispatch::sign;

/// Environment variable `walhook listen` reads a secret from when no
/// `--secret` is given.
pub const SECRET_ENV: &str = "WALHOOK_LISTEN_SECRET";

/// A Standard Webhooks timestamp further than this from our clock fails
/// verification (replay protection, the libraries' default).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why `walhook listen` cannot start or stopped serving. No message quotes a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("no secret to verify signatures with: pass --secret (or set {SECRET_ENV})")]
    NoSecret,
    #[error(
        "--standard-webhooks needs at least one `whsec_<base64>` secret (Standard Webhooks keys HMAC with the decoded bytes)"
    )]
    NoWhsecSecret,
    #[error("secret #{index} looks like a Standard Webhooks secret but is not usable: {source}")]
    BadWhsecSecret {
        /// 1-based, in the order given.
        index: usize,
        #[source]
        source: WhsecError,
    },
    #[error("--status {0} is not an HTTP status code; expected 100 to 599")]
    BadStatus(u16),
    #[error("cannot listen on 127.0.0.1:{port}: {source}. Pick another --port.")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// Where human-readable output goes: whole blocks of lines are written and
/// flushed at once, so concurrent requests never interleave their lines.
#[derive(Clone)]
pub struct Printer(Arc<Mutex<Box<dyn Write + Send>>>);

impl Printer {
    /// Print to the process's standard output.
    pub fn stdout() -> Printer {
        Printer::new(Box::new(std::io::stdout()))
    }

    /// Print to any writer (tests capture the output this way).
    pub fn new(out: Box<dyn Write + Send>) -> Printer {
        Printer(Arc::new(Mutex::new(out)))
    }

    /// Write `text` (one or more lines) plus a final newline, then flush.
    /// Output errors (a closed pipe) are ignored: printing is best effort.
    pub fn print(&self, text: &str) {
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Printer")
    }
}

/// The outcome of checking one signature scheme on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The signature matches secret number `secret` (1-based, in the order given).
    Valid { secret: usize },
    /// A signature is there but does not verify; the reason names no secret.
    Invalid(String),
    /// The scheme is required and its header is absent.
    Missing,
    /// A signature is there but no secret can check it (e.g. Standard
    /// Webhooks headers and no `whsec_` secret).
    Unverifiable(String),
}

/// One scheme's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub scheme: SigningScheme,
    pub verdict: Verdict,
}

/// Whether a request's signatures are acceptable: at least one verified, and
/// none invalid or missing. Unverifiable ones count neither way.
pub fn all_verified(checks: &[Check]) -> bool {
    checks
        .iter()
        .any(|c| matches!(c.verdict, Verdict::Valid { .. }))
        && !checks
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Invalid(_) | Verdict::Missing))
}

/// A scheme's name as in the configuration (`signing = [...]`).
pub fn scheme_name(scheme: SigningScheme) -> &'static str {
    match scheme {
        SigningScheme::Superleap => "superleap",
        SigningScheme::StandardWebhooks => "standard-webhooks",
    }
}

/// Checks the signatures walhook puts on a request (SPEC §5) against a list
/// of secrets (several during a rotation): `{prefix}-signature` with every
/// secret's UTF-8 bytes, and the Standard Webhooks headers with every
/// `whsec_` secret's decoded key and a timestamp tolerance. A scheme whose
/// header is present is always checked; a required scheme whose header is
/// absent is reported [`Verdict::Missing`].
///
/// It holds secrets: its `Debug` shows only counts.
#[derive(Clone)]
pub struct Verifier {
    keys: EndpointSecrets,
    signature_header: String,
    require: Vec<SigningScheme>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("whsec_keys", &self.whsec_count())
            .field("signature_header", &self.signature_header)
            .field("require", &self.require)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `secrets` with the header prefix of `delivery.header_prefix`
    /// (e.g. `x-superleap`). Secrets that start with `whsec_` must decode
    /// (standard base64, non-empty); they also serve as Standard Webhooks keys.
    pub fn new(secrets: Vec<Secret>, header_prefix: &str) -> Result<Verifier, ListenError> {
        let keys = EndpointSecrets::new(secrets).ok_or(ListenError::NoSecret)?;
        Verifier::with_keys(keys, header_prefix)
    }

    /// As [`Verifier::new`], with secrets already parsed (an endpoint's).
    pub fn with_keys(keys: EndpointSecrets, header_prefix: &str) -> Result<Verifier, ListenError> {
        for (i, key) in keys.iter().enumerate() {
            match key.standard_webhooks_key() {
                Ok(_) | Err(WhsecError::MissingPrefix) => {}
                Err(source) => {
                    return Err(ListenError::BadWhsecSecret {
                        index: i + 1,
                        source,
                    });
                }
            }
        }
        Ok(Verifier {
            keys,
            signature_header: format!("{}-signature", header_prefix.to_ascii_lowercase()),
            require: Vec::new(),
            tolerance: TIMESTAMP_TOLERANCE,
        })
    }

    fn whsec_count(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| k.standard_webhooks_key().is_ok())
            .count()
    }

    /// Also report `scheme` when its headers are absent (as [`Verdict::Missing`]).
    /// Requiring Standard Webhooks needs a `whsec_` secret.
    pub fn require(mut self, scheme: SigningScheme) -> Result<Verifier, ListenError> {
        if scheme == SigningScheme::StandardWebhooks && self.whsec_count() == 0 {
            return Err(ListenError::NoWhsecSecret);
        }
        if !self.require.contains(&scheme) {
            self.require.push(scheme);
        }
        Ok(self)
    }

    /// The superleap signature header this verifier reads, e.g. `x-superleap-signature`.
    pub fn signature_header(&self) -> &str {
        &self.signature_header
    }

    /// How many secrets, and how many of them are Standard Webhooks keys.
    pub fn secret_counts(&self) -> (usize, usize) {
        (self.keys.len(), self.whsec_count())
    }

    /// Check every signature on a request. `now_unix_secs` is the clock for the
    /// Standard Webhooks timestamp tolerance.
    pub fn check(&self, headers: &HeaderMap, body: &[u8], now_unix_secs: i64) -> Vec<Check> {
        let mut out = Vec::new();
        match header(headers, &self.signature_header) {
            Some(value) => out.push(Check {
                scheme: SigningScheme::Superleap,
                verdict: self.check_superleap(value, body),
            }),
            None if self.require.contains(&SigningScheme::Superleap) => out.push(Check {
                scheme: SigningScheme::Superleap,
                verdict: Verdict::Missing,
            }),
            None => {}
        }
        match header(headers, "webhook-signature") {
            Some(value) => out.push(Check {
                scheme: SigningScheme::StandardWebhooks,
                verdict: self.check_standard(headers, value, body, now_unix_secs),
            }),
            None if self.require.contains(&SigningScheme::StandardWebhooks) => out.push(Check {
                scheme: SigningScheme::StandardWebhooks,
                verdict: Verdict::Missing,
            }),
            None => {}
        }
        out
    }

    fn check_superleap(&self, value: &str, body: &[u8]) -> Verdict {
        if !value.trim_start().starts_with("sha256=") {
            return Verdict::Invalid("not of the form sha256=<hex>".into());
        }
        match self
            .keys
            .iter()
            .position(|k| sign::verify_superleap(k.superleap_key(), body, value))
        {
            Some(i) => Verdict::Valid { secret: i + 1 },
            None => Verdict::Invalid("does not match any secret".into()),
        }
    }

    fn check_standard(
        &self,
        headers: &HeaderMap,
        signature: &str,
        body: &[u8],
        now_unix_secs: i64,
    ) -> Verdict {
        if self.whsec_count() == 0 {
            return Verdict::Unverifiable("needs a whsec_ secret".into());
        }
        let (Some(id), Some(ts)) = (
            header(headers, "webhook-id"),
            header(headers, "webhook-timestamp"),
        ) else {
            return Verdict::Invalid("webhook-id or webhook-timestamp is missing".into());
        };
        let Ok(ts_secs) = ts.trim().parse::<i64>() else {
            return Verdict::Invalid("webhook-timestamp is not a number of seconds".into());
        };
        let skew = now_unix_secs.abs_diff(ts_secs);
        if skew > self.tolerance.as_secs() {
            return Verdict::Invalid(format!(
                "webhook-timestamp is {skew}s away from now (tolerance {}s)",
                self.tolerance.as_secs()
            ));
        }
        let verifies = |key: &crate::config::SigningKey| {
            key.standard_webhooks_key()
                .is_ok_and(|k| sign::verify_standard_webhooks(k, id, ts, body, signature))
        };
        match self.keys.iter().position(verifies) {
            Some(i) => Verdict::Valid { secret: i + 1 },
            None => Verdict::Invalid("no v1 signature matches any whsec_ secret".into()),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The current time in unix seconds.
pub fn now_unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Wall-clock time of day in UTC, `HH:MM:SS.mmmZ`.
pub fn clock() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// One line per check: `✓ superleap  verified (secret 1)`.
pub fn describe_checks(checks: &[Check], signature_header: &str) -> Vec<String> {
    if checks.is_empty() {
        return vec![format!(
            "✗ unsigned: no {signature_header} or webhook-signature header"
        )];
    }
    checks
        .iter()
        .map(|c| {
            let name = scheme_name(c.scheme);
            match &c.verdict {
                Verdict::Valid { secret } => format!("✓ {name:<18} verified (secret {secret})"),
                Verdict::Invalid(why) => format!("✗ {name:<18} INVALID: {why}"),
                Verdict::Missing => {
                    format!("✗ {name:<18} MISSING: the request carries no such signature")
                }
                Verdict::Unverifiable(why) => format!("? {name:<18} not checked: {why}"),
            }
        })
        .collect()
}

/// Whether a header is one walhook sets (and so worth printing).
fn is_walhook_header(name: &str, prefix: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name.starts_with("webhook-")
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// The body as pretty JSON (digits kept as sent), or as text when it is not JSON.
pub fn pretty_body(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()),
        Err(_) if body.is_empty() => "(empty body)".into(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// What `walhook listen` was asked to do.
#[derive(Debug)]
pub struct ListenOptions {
    /// Port on 127.0.0.1; 0 picks a free one (printed at start).
    pub port: u16,
    /// At least one; several for a rotation.
    pub secrets: Vec<Secret>,
    /// `delivery.header_prefix` of the sender. Default `x-superleap`.
    pub header_prefix: String,
    /// Require the Standard Webhooks headers on every request.
    pub standard_webhooks: bool,
    /// The status every request is answered with.
    pub status: u16,
}

struct ListenState {
    verifier: Verifier,
    prefix: String,
    status: StatusCode,
    printer: Printer,
    count: AtomicU64,
}

/// Bind 127.0.0.1:`port` and serve until `shutdown`. Prints a banner with the
/// address first, then one block per request.
pub async fn run(
    opts: ListenOptions,
    printer: Printer,
    shutdown: CancellationToken,
) -> Result<(), ListenError> {
    let status = StatusCode::from_u16(opts.status)
        .ok()
        .filter(|_| (100..=599).contains(&opts.status))
        .ok_or(ListenError::BadStatus(opts.status))?;
    let mut verifier = Verifier::new(opts.secrets, &opts.header_prefix)?;
    if opts.standard_webhooks {
        verifier = verifier.require(SigningScheme::StandardWebhooks)?;
    }
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
            .await
            .map_err(|source| ListenError::Bind {
                port: opts.port,
                source,
            })?;
    let addr = listener.local_addr().map_err(ListenError::Serve)?;
    let (n, whsec) = verifier.secret_counts();
    let schemes = if whsec > 0 {
        format!("{} and standard-webhooks", verifier.signature_header())
    } else {
        verifier.signature_header().to_string()
    };
    printer.print(&format!(
        "walhook listen: http://{addr}/ (any path), answering {status_code}; checking {schemes} with {n} secret(s). Ctrl-C to stop.",
        status_code = status.as_u16()
    ));
    let state = Arc::new(ListenState {
        verifier,
        prefix: opts.header_prefix.to_ascii_lowercase(),
        status,
        printer,
        count: AtomicU64::new(0),
    });
    let app = axum::Router::new().fallback(handle).with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ListenError::Serve)
}

async fn handle(
    State(state): State<Arc<ListenState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = state.count.fetch_add(1, Ordering::Relaxed) + 1;
    let checks = state.verifier.check(&headers, &body, now_unix_secs());
    let mut text = format!(
        "\n#{n}  {}  {method} {uri}  ({} bytes)",
        clock(),
        body.len()
    );
    for (name, value) in &headers {
        if is_walhook_header(name.as_str(), &state.prefix) {
            let value = String::from_utf8_lossy(value.as_bytes());
            text.push_str(&format!("\n    {name}: {value}"));
        }
    }
    let verdict = if all_verified(&checks) {
        "signature ✓"
    } else {
        "signature ✗"
    };
    text.push_str(&format!("\n  {verdict}"));
    for line in describe_checks(&checks, state.verifier.signature_header()) {
        text.push_str(&format!("\n    {line}"));
    }
    text.push_str("\n  body:");
    for line in pretty_body(&body).lines() {
        text.push_str(&format!("\n    {line}"));
    }
    text.push_str(&format!("\n  → answered {}", state.status.as_u16()));
    state.printer.print(&text);
    state.status
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::{EndpointConfig, HeaderPrefix};

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const WHSEC2: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const NOW: i64 = 1_700_000_000;

    fn signed(secrets: &[&str], signing: &[SigningScheme], body: &[u8], ts: i64) -> HeaderMap {
        let ep = EndpointConfig {
            id: "t".into(),
            url: "http://127.0.0.1:9/".parse().unwrap(),
            secrets: EndpointSecrets::new(secrets.iter().map(|s| Secret::new(*s)).collect())
                .unwrap(),
            events: vec!["*".into()],
            signing: signing.to_vec(),
            timeout: Duration::from_secs(1),
            allow_insecure_http: false,
            retry: Default::default(),
            headers: Vec::new(),
            rate_limit: None,
            max_in_flight: None,
            filter: None,
        };
        sign::signed_headers(
            &ep,
            &HeaderPrefix::default(),
            "app:lead:1:L1:lead.create:abcdefgh",
            "lead.create",
            body,
            ts,
        )
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(
            secrets.iter().map(|s| Secret::new(*s)).collect(),
            "x-superleap",
        )
        .unwrap()
    }

    #[test]
    fn superleap_valid_with_any_rotated_secret() {
        let body = br#"{"before":{},"after":{"id":1},"diff":{"id":1}}"#;
        let h = signed(&["new"], &[SigningScheme::Superleap], body, NOW);
        let checks = verifier(&["old", "new"]).check(&h, body, NOW);
        assert_eq!(
            checks,
            vec![Check {
                scheme: SigningScheme::Superleap,
                verdict: Verdict::Valid { secret: 2 }
            }]
        );
        assert!(all_verified(&checks));
    }

    #[test]
    fn superleap_wrong_secret_or_tampered_body_is_invalid() {
        let body = b"{}";
        let h = signed(&["right"], &[SigningScheme::Superleap], body, NOW);
        let wrong = verifier(&["wrong"]).check(&h, body, NOW);
        assert!(matches!(wrong[0].verdict, Verdict::Invalid(_)));
        assert!(!all_verified(&wrong));
        let tampered = verifier(&["right"]).check(&h, b"{ }", NOW);
        assert!(!all_verified(&tampered));
    }

    #[test]
    fn standard_webhooks_valid_and_timestamp_tolerance() {
        let body = b"{\"a\":1}";
        let h = signed(&[WHSEC], &[SigningScheme::StandardWebhooks], body, NOW);
        let v = verifier(&["plain", WHSEC]);
        let ok = v.check(&h, body, NOW + 10);
        assert_eq!(ok[0].verdict, Verdict::Valid { secret: 2 });
        assert!(all_verified(&ok));
        let late = v.check(&h, body, NOW + 301);
        assert!(matches!(late[0].verdict, Verdict::Invalid(ref why) if why.contains("301s")));
        let other_key = verifier(&[WHSEC2]).check(&h, body, NOW);
        assert!(matches!(other_key[0].verdict, Verdict::Invalid(_)));
    }

    #[test]
    fn both_schemes_are_checked_and_one_bad_one_fails_the_request() {
        let body = b"{}";
        let h = signed(
            &[WHSEC],
            &[SigningScheme::Superleap, SigningScheme::StandardWebhooks],
            body,
            NOW,
        );
        let checks = verifier(&[WHSEC]).check(&h, body, NOW);
        assert_eq!(checks.len(), 2);
        assert!(all_verified(&checks));
        let mut broken = h.clone();
        broken.insert("webhook-timestamp", HeaderValue::from_static("1700000001"));
        let checks = verifier(&[WHSEC]).check(&broken, body, NOW);
        assert!(matches!(checks[0].verdict, Verdict::Valid { .. }));
        assert!(matches!(checks[1].verdict, Verdict::Invalid(_)));
        assert!(!all_verified(&checks));
    }

    #[test]
    fn required_scheme_missing_and_unsigned_requests() {
        let body = b"{}";
        let h = signed(&["s"], &[SigningScheme::Superleap], body, NOW);
        let v = verifier(&["s", WHSEC])
            .require(SigningScheme::StandardWebhooks)
            .unwrap();
        let checks = v.check(&h, body, NOW);
        assert_eq!(checks[1].verdict, Verdict::Missing);
        assert!(!all_verified(&checks));
        let none = verifier(&["s"]).check(&HeaderMap::new(), body, NOW);
        assert!(none.is_empty());
        assert!(!all_verified(&none));
        assert!(describe_checks(&none, "x-superleap-signature")[0].starts_with("✗ unsigned"));
        assert!(matches!(
            verifier(&["s"]).require(SigningScheme::StandardWebhooks),
            Err(ListenError::NoWhsecSecret)
        ));
    }

    #[test]
    fn standard_headers_without_whsec_secret_are_unverifiable() {
        let body = b"{}";
        let h = signed(&[WHSEC], &[SigningScheme::StandardWebhooks], body, NOW);
        let checks = verifier(&["plain"]).check(&h, body, NOW);
        assert!(matches!(checks[0].verdict, Verdict::Unverifiable(_)));
        assert!(!all_verified(&checks));
    }

    #[test]
    fn custom_header_prefix() {
        let body = b"{}";
        let mut h = HeaderMap::new();
        h.insert(
            "x-acme-signature",
            HeaderValue::from_str(&sign::superleap_signature(b"s", body)).unwrap(),
        );
        let v = Verifier::new(vec![Secret::new("s")], "X-Acme").unwrap();
        assert!(all_verified(&v.check(&h, body, NOW)));
        assert!(is_walhook_header("x-acme-event", "x-acme"));
        assert!(!is_walhook_header("x-acmefoo", "x-acme"));
        assert!(!is_walhook_header("accept", "x-acme"));
    }

    #[test]
    fn bad_whsec_secret_is_rejected_without_quoting_it() {
        let err = Verifier::new(vec![Secret::new("whsec_abc$def")], "x-superleap").unwrap_err();
        assert!(matches!(err, ListenError::BadWhsecSecret { index: 1, .. }));
        assert!(!err.to_string().contains("abc$def"));
        let v = verifier(&["topsecret", WHSEC]);
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("topsecret") && !dbg.contains(WHSEC), "{dbg}");
    }

    #[test]
    fn pretty_body_keeps_digits_and_handles_non_json() {
        assert_eq!(
            pretty_body(br#"{"amount":12.500000}"#),
            "{\n  \"amount\": 12.500000\n}"
        );
        assert_eq!(pretty_body(b"not json"), "not json");
        assert_eq!(pretty_body(b""), "(empty body)");
    }
}
