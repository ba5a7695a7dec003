//! The HTTP side of one delivery attempt: a shared client and [`attempt`], which
//! turns whatever happens into an [`AttemptRecord`] (never an error).
//!
//! Redirects are not followed (a 3xx is a failed attempt, SPEC §5). The per-
//! attempt timeout covers connecting, sending, reading the response head and
//! reading the response excerpt. Messages never contain the endpoint URL, whose
//! userinfo, path or query may hold credentials.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};

use super::retry::{Failure, FailureKind};
use crate::pg::unix_ms;

/// At most this many bytes of a response body are read and kept.
pub const EXCERPT_LIMIT: usize = 4096;

/// At most this many characters of a kept response header value.
pub const HEADER_LIMIT: usize = 2048;

/// Errors at the HTTP boundary that are not attempt outcomes.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// The client shared by every attempt: rustls, redirects not followed, pooled
/// keep-alive connections, `TCP_NODELAY`, and no global timeout (each attempt
/// has its own). Proxies from the usual environment variables are honoured.
pub fn build_client() -> Result<reqwest::Client, HttpError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .pool_idle_timeout(Some(Duration::from_secs(90)))
        .build()
        .map_err(HttpError::Build)
}

/// How an attempt ended. Only `Success` counts as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx status within the timeout.
    Success(u16),
    /// Any other status, redirects (3xx) included.
    Status(u16),
    /// The timeout expired before the status, or while reading the excerpt.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake...). The message
    /// holds no URL.
    Connect(String),
    /// Anything else, e.g. the connection closed mid-request. No URL in the message.
    Other(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// The HTTP status, when a response head was received.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Success(code) | Outcome::Status(code) => Some(*code),
            _ => None,
        }
    }

    /// A short stable label for metrics and the ledger: `none` (success),
    /// `status`, `timeout`, `connect` or `other`.
    pub fn error_kind(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "none",
            Outcome::Status(_) => "status",
            Outcome::Timeout => "timeout",
            Outcome::Connect(_) => "connect",
            Outcome::Other(_) => "other",
        }
    }

    /// A one-line human description, free of secrets: `HTTP 404 Not Found`,
    /// `timed out`, or the transport error.
    pub fn message(&self) -> String {
        match self {
            Outcome::Success(code) | Outcome::Status(code) => {
                let reason = reqwest::StatusCode::from_u16(*code)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                match reason {
                    Some(reason) => format!("HTTP {code} {reason}"),
                    None => format!("HTTP {code}"),
                }
            }
            Outcome::Timeout => "timed out".to_owned(),
            Outcome::Connect(message) | Outcome::Other(message) => message.clone(),
        }
    }
}

/// What one attempt did, ready to be recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Wall-clock start of the attempt, unix milliseconds.
    pub started_at_unix_ms: i64,
    /// From the start to the outcome (monotonic clock).
    pub duration: Duration,
    pub outcome: Outcome,
    /// The first [`EXCERPT_LIMIT`] bytes of the response body, as lossy UTF-8 (a
    /// multi-byte character cut by the limit is dropped). `None` when no
    /// response arrived or its body was empty. Nothing past the limit is read.
    pub response_excerpt: Option<String>,
    /// The response's `Retry-After`, whatever the status (delta-seconds or
    /// HTTP-date, a date in the past giving zero).
    pub retry_after: Option<Duration>,
    /// Response headers kept in the attempt's history.
    pub kept: KeptHeaders,
}

/// The response headers an attempt's history keeps, as received (lossy
/// UTF-8, at most [`HEADER_LIMIT`] characters): where a redirect points, and
/// when the receiver asked to be called again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptHeaders {
    pub location: Option<String>,
    pub retry_after: Option<String>,
}

impl KeptHeaders {
    fn of(headers: &HeaderMap) -> KeptHeaders {
        let text = |name| {
            headers.get(name).map(|v: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(HEADER_LIMIT)
                    .collect()
            })
        };
        KeptHeaders {
            location: text(LOCATION),
            retry_after: text(RETRY_AFTER),
        }
    }
}

impl AttemptRecord {
    /// The failure to feed to [`super::retry::after_failure`]; `None` on success.
    pub fn failure(&self) -> Option<Failure> {
        let kind = match &self.outcome {
            Outcome::Success(_) => return None,
            Outcome::Status(code) => FailureKind::Status(*code),
            Outcome::Timeout => FailureKind::Timeout,
            Outcome::Connect(_) => FailureKind::Connect,
            Outcome::Other(_) => FailureKind::Other,
        };
        Some(Failure {
            retry_after: self.retry_after,
            kind,
        })
    }
}

/// POST `body` to `url` with `headers`, within `timeout`. Never fails: every
/// error becomes an [`Outcome`].
pub async fn attempt(
    client: &reqwest::Client,
    url: &url::Url,
    headers: &HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> AttemptRecord {
    let started_at_unix_ms = unix_ms(SystemTime::now());
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + timeout);
    let record = |outcome, response_excerpt, retry_after, kept| AttemptRecord {
        started_at_unix_ms,
        duration: start.elapsed(),
        outcome,
        response_excerpt,
        retry_after,
        kept,
    };

    let send = client
        .post(url.clone())
        .headers(headers.clone())
        .body(body)
        .send();
    let mut response = match tokio::time::timeout_at(deadline, send).await {
        Err(_elapsed) => return record(Outcome::Timeout, None, None, KeptHeaders::default()),
        Ok(Err(err)) => {
            let outcome = transport_outcome(err, url);
            return record(outcome, None, None, KeptHeaders::default());
        }
        Ok(Ok(response)) => response,
    };

    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let kept = KeptHeaders::of(response.headers());

    let mut excerpt = Vec::new();
    let mut timed_out = false;
    while excerpt.len() < EXCERPT_LIMIT {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_elapsed) => {
                timed_out = true;
                break;
            }
            Ok(Ok(Some(chunk))) => {
                let take = chunk.len().min(EXCERPT_LIMIT - excerpt.len());
                excerpt.extend_from_slice(&chunk[..take]);
            }
            Ok(Ok(None)) => break,
            // The status line has been received, and it is the receiver's answer;
            // a body cut short afterwards only shortens the excerpt.
            Ok(Err(_)) => break,
        }
    }
    // Dropping `response` here abandons the rest of a long body unread.
    drop(response);

    let outcome = if timed_out {
        Outcome::Timeout
    } else if (200..300).contains(&code) {
        Outcome::Success(code)
    } else {
        Outcome::Status(code)
    };
    record(outcome, lossy_excerpt(&excerpt), retry_after, kept)
}

/// Classify a transport error and describe it without the URL.
fn transport_outcome(err: reqwest::Error, url: &url::Url) -> Outcome {
    let is_timeout = err.is_timeout();
    let is_connect = err.is_connect();
    let message = redact(&error_chain(&err.without_url()), url);
    if is_timeout {
        Outcome::Timeout
    } else if is_connect {
        Outcome::Connect(message)
    } else {
        Outcome::Other(message)
    }
}

/// `error: cause: cause...`, skipping a cause whose text repeats the previous one.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut last = message.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    message
}

/// Belt and braces: the chain is built without the URL, but a lower layer could
/// still quote it, or its userinfo. A user name is redacted only when long enough
/// to be a token (`https://<token>@host`); a short one would mangle the text.
fn redact(message: &str, url: &url::Url) -> String {
    let mut out = message.replace(url.as_str(), "<endpoint url>");
    if let Some(password) = url.password().filter(|p| !p.is_empty()) {
        out = out.replace(password, "***");
    }
    if url.username().len() >= 8 {
        out = out.replace(url.username(), "***");
    }
    out
}

fn lossy_excerpt(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    // A character cut by the byte limit would become U+FFFD (3 bytes) and push
    // the excerpt past the limit: drop the incomplete tail instead.
    let bytes = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// `Retry-After` as a delay from `now`: delta-seconds (`120`) or an HTTP-date
/// (RFC 9110 §5.6.7: IMF-fixdate, or the obsolete RFC 850 and asctime forms
/// that recipients must accept). A date in the past gives zero; anything else
/// unparsable gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const NOV_6_1994: u64 = 784111777;

    /// `Retry-After` as an HTTP-date, measured from the epoch.
    fn date(value: &str) -> Option<Duration> {
        parse_retry_after(value, UNIX_EPOCH)
    }

    #[test]
    fn retry_after_date_three_forms() {
        let expected = Some(Duration::from_secs(NOV_6_1994));
        assert_eq!(date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(
            date("Thu, 01 Jan 2043 00:00:00 GMT"),
            Some(Duration::from_secs(2_303_683_200))
        );
    }

    #[test]
    fn retry_after_date_rejects_garbage() {
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "tomorrow",
        ] {
            assert_eq!(date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_delta_and_date() {
        let now = UNIX_EPOCH + Duration::from_secs(NOV_6_1994);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn excerpt_is_lossy_and_never_longer_than_the_limit() {
        assert_eq!(lossy_excerpt(b""), None);
        assert_eq!(lossy_excerpt(b"ok").as_deref(), Some("ok"));
        assert_eq!(lossy_excerpt(b"a\xffb").as_deref(), Some("a\u{fffd}b"));
        // "é" is C3 A9; the limit cut it after C3.
        let mut cut = vec![b'x'; EXCERPT_LIMIT - 1];
        cut.push(0xC3);
        let excerpt = lossy_excerpt(&cut).unwrap();
        assert_eq!(excerpt.len(), EXCERPT_LIMIT - 1);
        assert!(excerpt.bytes().all(|b| b == b'x'));
    }

    #[test]
    fn outcome_labels_and_messages() {
        assert!(Outcome::Success(204).is_success());
        assert!(!Outcome::Status(302).is_success());
        assert_eq!(Outcome::Success(200).error_kind(), "none");
        assert_eq!(Outcome::Status(404).error_kind(), "status");
        assert_eq!(Outcome::Timeout.error_kind(), "timeout");
        assert_eq!(Outcome::Connect("x".into()).error_kind(), "connect");
        assert_eq!(Outcome::Other("x".into()).error_kind(), "other");
        assert_eq!(Outcome::Status(404).message(), "HTTP 404 Not Found");
        assert_eq!(Outcome::Status(599).message(), "HTTP 599");
        assert_eq!(Outcome::Status(503).status(), Some(503));
        assert_eq!(Outcome::Timeout.status(), None);
    }

    #[test]
    fn failure_from_record() {
        let mut rec = AttemptRecord {
            started_at_unix_ms: 0,
            duration: Duration::ZERO,
            outcome: Outcome::Success(200),
            response_excerpt: None,
            retry_after: Some(Duration::from_secs(3)),
            kept: KeptHeaders::default(),
        };
        assert_eq!(rec.failure(), None);
        rec.outcome = Outcome::Status(429);
        assert_eq!(
            rec.failure(),
            Some(Failure {
                retry_after: Some(Duration::from_secs(3)),
                kind: FailureKind::Status(429)
            })
        );
        rec.outcome = Outcome::Connect("refused".into());
        assert_eq!(rec.failure().unwrap().kind, FailureKind::Connect);
    }

    #[test]
    fn kept_headers_are_bounded_text() {
        let mut h = HeaderMap::new();
        assert_eq!(KeptHeaders::of(&h), KeptHeaders::default());
        h.insert(LOCATION, "https://example.com/new".parse().unwrap());
        let long = "9".repeat(HEADER_LIMIT + 10);
        h.insert(RETRY_AFTER, long.parse().unwrap());
        let kept = KeptHeaders::of(&h);
        assert_eq!(kept.location.as_deref(), Some("https://example.com/new"));
        assert_eq!(kept.retry_after.map(|r| r.len()), Some(HEADER_LIMIT));
    }

    #[test]
    fn redact_removes_url_and_password() {
        let url: url::Url = "https://bob:hunter22@example.com/hook?token=abc"
            .parse()
            .unwrap();
        let msg = format!("error for {url}: bad password hunter22");
        let out = redact(&msg, &url);
        assert!(!out.contains("hunter22"), "{out}");
        assert!(!out.contains("token=abc"), "{out}");
        let url: url::Url = "https://ghp_0123456789abcdef@example.com/".parse().unwrap();
        let out = redact("auth failed for ghp_0123456789abcdef", &url);
        assert_eq!(out, "auth failed for ***");
    }
}
