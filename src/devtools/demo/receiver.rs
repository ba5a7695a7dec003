//! The demo's in-process receiver: it verifies each request's signatures,
//! answers (failing the flaky endpoint's first requests), logs the request
//! and prints it as a line of the live stream.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DemoError;
use super::script::{ANALYTICS_FAILURES, EXCLUDED_COLUMN, FLAKY_ENDPOINT};
use crate::config::Config;
use crate::devtools::listen::{self, Printer, Verifier};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(super) struct Received {
    pub(super) endpoint: String,
    pub(super) event: String,
    pub(super) event_id: String,
    /// 1 for the first request of this event at this endpoint.
    pub(super) attempt: usize,
    pub(super) verified: bool,
    pub(super) status: u16,
    pub(super) leaks_excluded: bool,
}

impl Received {
    pub(super) fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One receiving endpoint: its verifier and how many requests it still fails.
struct ReceiverEndpoint {
    id: String,
    verifier: Verifier,
    fail_next: AtomicU32,
}

impl ReceiverEndpoint {
    /// 401 to a request whose signatures do not verify; 500 while the
    /// endpoint still has failures to give; else 200.
    fn answer(&self, verified: bool) -> StatusCode {
        if !verified {
            StatusCode::UNAUTHORIZED
        } else if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    }
}

/// The in-process receiver: verifies, answers, logs and prints each request.
pub(super) struct Receiver {
    t0: Instant,
    printer: Printer,
    header_prefix: String,
    endpoints: Vec<ReceiverEndpoint>,
    log: Mutex<Vec<Received>>,
    /// Bumped after every request, to wake waiters.
    changed: tokio::sync::watch::Sender<usize>,
}

impl Receiver {
    pub(super) fn new(cfg: &Config, printer: Printer, t0: Instant) -> Result<Receiver, DemoError> {
        let prefix = &cfg.delivery.header_prefix;
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|ep| {
                let mut v = Verifier::with_keys(ep.secrets.clone(), prefix.as_str())
                    .map_err(|e| DemoError::Unexpected(e.to_string()))?;
                for scheme in &ep.signing {
                    v = v
                        .require(*scheme)
                        .map_err(|e| DemoError::Unexpected(e.to_string()))?;
                }
                let fail_next = if ep.id == FLAKY_ENDPOINT {
                    ANALYTICS_FAILURES
                } else {
                    0
                };
                Ok(ReceiverEndpoint {
                    id: ep.id.clone(),
                    verifier: v,
                    fail_next: AtomicU32::new(fail_next),
                })
            })
            .collect::<Result<Vec<_>, DemoError>>()?;
        Ok(Receiver {
            t0,
            printer,
            header_prefix: prefix.as_str().to_owned(),
            endpoints,
            log: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes after every request it answers.
    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.changed.subscribe()
    }

    pub(super) fn with_log<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        f(&self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Serves `receiver` at `/hooks/{endpoint}` on `listener` until `stop`.
pub(super) fn serve(
    listener: tokio::net::TcpListener,
    receiver: Arc<Receiver>,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    let app = axum::Router::new()
        .route("/hooks/{endpoint}", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    })
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(ep) = rx.endpoints.iter().find(|e| e.id == endpoint) else {
        return StatusCode::NOT_FOUND;
    };
    let checks = ep.verifier.check(&headers, &body, listen::now_unix_secs());
    let verified = listen::all_verified(&checks);
    let header = |suffix: &str| {
        headers
            .get(format!("{}-{suffix}", rx.header_prefix))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };
    let status = ep.answer(verified);
    let mut r = Received {
        endpoint: ep.id.clone(),
        event: header("event"),
        event_id: header("event-id"),
        attempt: 1,
        verified,
        status: status.as_u16(),
        leaks_excluded: String::from_utf8_lossy(&body).contains(EXCLUDED_COLUMN),
    };
    {
        let mut log = rx.log.lock().unwrap_or_else(|e| e.into_inner());
        r.attempt = 1 + log
            .iter()
            .filter(|p| p.endpoint == r.endpoint && p.event_id == r.event_id)
            .count();
        log.push(r.clone());
    }
    let diff = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("diff").map(|d| d.to_string()))
        .unwrap_or_else(|| "(body is not an event)".into());
    let mut text = stream_line(rx.t0.elapsed(), &r, &diff);
    if !verified {
        for line in listen::describe_checks(&checks, ep.verifier.signature_header()) {
            text.push_str(&format!("\n{:>9}{line}", ""));
        }
    }
    rx.printer.print(&text);
    rx.changed.send_modify(|n| *n += 1);
    status
}

/// The live stream's lines for one request: time since the demo started,
/// endpoint, event, attempt, signature verdict, answer and event id, then the
/// diff of a successful delivery.
fn stream_line(elapsed: Duration, r: &Received, diff: &str) -> String {
    let sig = if r.verified { "sig ✓" } else { "sig ✗" };
    let answer = if r.succeeded() {
        format!("{} ok", r.status)
    } else if r.verified {
        format!("{} failed, walhook will retry", r.status)
    } else {
        format!("{} rejected", r.status)
    };
    let mut line = format!(
        "{:>6.2}s  {:<9}  {:<18}  #{} {sig}  → {answer}   {}",
        elapsed.as_secs_f64(),
        r.endpoint,
        r.event,
        r.attempt,
        r.event_id
    );
    if r.succeeded() {
        line.push_str(&format!("\n{:>9}diff {diff}", ""));
    }
    line
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::devtools::demo::script::tests::demo_config;
    use crate::devtools::demo::summary::any_rejected;

    /// A logged request with attempt 1 and no excluded column.
    pub(in crate::devtools::demo) fn rec(
        endpoint: &str,
        event: &str,
        id: &str,
        status: u16,
        verified: bool,
    ) -> Received {
        Received {
            endpoint: endpoint.into(),
            event: event.into(),
            event_id: id.into(),
            attempt: 1,
            verified,
            status,
            leaks_excluded: false,
        }
    }

    #[test]
    fn stream_line_shows_the_diff_only_for_deliveries() {
        let ok = stream_line(
            Duration::from_millis(1234),
            &rec(
                "crm",
                "lead.update",
                "demo:lead:1:L-1:lead.update:abcdefgh",
                200,
                true,
            ),
            r#"{"score":85}"#,
        );
        assert!(ok.starts_with("  1.23s  crm        lead.update"), "{ok}");
        assert!(
            ok.contains("#1 sig ✓  → 200 ok   demo:lead:1:L-1:lead.update:abcdefgh"),
            "{ok}"
        );
        assert!(ok.ends_with(r#"diff {"score":85}"#), "{ok}");
        let failed = stream_line(
            Duration::from_secs(2),
            &rec("analytics", "lead.create", "x", 500, true),
            "{}",
        );
        assert!(
            failed.contains("→ 500 failed, walhook will retry"),
            "{failed}"
        );
        assert!(!failed.contains("diff"), "{failed}");
    }

    fn signed_request(cfg: &Config, endpoint: &str, event_id: &str, body: &[u8]) -> HeaderMap {
        let ep = cfg.endpoint(endpoint).unwrap();
        crate::dispatch::sign::signed_headers(
            ep,
            &cfg.delivery.header_prefix,
            event_id,
            "lead.create",
            body,
            listen::now_unix_secs(),
        )
    }

    #[tokio::test]
    async fn receiver_verifies_fails_analytics_twice_then_recovers() {
        let cfg = demo_config();
        let rx = Arc::new(
            Receiver::new(
                &cfg,
                Printer::new(Box::new(std::io::sink())),
                Instant::now(),
            )
            .unwrap(),
        );
        let body = Bytes::from_static(br#"{"before":{},"after":{"id":"L-1"},"diff":{"id":"L-1"}}"#);
        let call = |ep: &'static str, headers: HeaderMap, body: Bytes| {
            receive(State(rx.clone()), Path(ep.to_string()), headers, body)
        };
        let crm = signed_request(&cfg, "crm", "e1", &body);
        assert_eq!(call("crm", crm.clone(), body.clone()).await, StatusCode::OK);
        // The body was changed after signing: rejected, and logged as such.
        assert_eq!(
            call("crm", crm, Bytes::from_static(b"{}")).await,
            StatusCode::UNAUTHORIZED
        );
        let analytics = signed_request(&cfg, "analytics", "e1", &body);
        // crm's headers carry no Standard Webhooks signature, which analytics requires.
        let wrong = signed_request(&cfg, "crm", "e1", &body);
        assert_eq!(
            call("analytics", wrong, body.clone()).await,
            StatusCode::UNAUTHORIZED
        );
        for want in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK,
        ] {
            assert_eq!(
                call("analytics", analytics.clone(), body.clone()).await,
                want
            );
        }
        let log = rx.with_log(|l| l.to_vec());
        let summary: Vec<(&str, usize, bool, u16)> = log
            .iter()
            .map(|r| (r.endpoint.as_str(), r.attempt, r.verified, r.status))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("crm", 1, true, 200),
                ("crm", 2, false, 401),
                ("analytics", 1, false, 401),
                ("analytics", 2, true, 500),
                ("analytics", 3, true, 500),
                ("analytics", 4, true, 200),
            ]
        );
        assert!(any_rejected(&log));
        assert_eq!(log[0].event, "lead.create");
        assert_eq!(log[0].event_id, "e1");
    }
}
