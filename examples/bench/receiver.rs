//! The receiver: an axum server on 127.0.0.1 that checks every request's
//! signature and answers 204 at once (or never, for the memory benchmark),
//! counting requests; and the HTTP-only ceiling measured against it.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use walhook::dispatch::sign::{superleap_signature, verify_superleap};

use crate::procfs::Proc;
use crate::workload::lead_number;

/// The endpoint's signing secret in every benchmark config.
pub const SECRET: &str = "bench-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 204 at once.
    Ok = 0,
    /// 204 at once, and each request's arrival is recorded.
    Latency = 1,
    /// Never answers: the request waits until walhook's timeout drops it.
    Hang = 2,
}

/// One request's arrival.
pub struct Arrival {
    /// The lead number of the body's after image.
    pub lead: u64,
    pub event_id: String,
    pub at: Instant,
    /// Wall-clock time, in microseconds since the Unix epoch.
    pub unix_micros: i64,
}

#[derive(Default)]
pub struct Receiver {
    mode: AtomicU8,
    count: AtomicU64,
    target: AtomicU64,
    bad_signatures: AtomicU64,
    largest_body: AtomicU64,
    reached_at: Mutex<Option<Instant>>,
    /// Every request's arrival, in latency mode.
    pub arrivals: Mutex<Vec<Arrival>>,
}

impl Receiver {
    /// Starts counting from zero; `target` requests mark the end of a run.
    pub fn reset(&self, mode: Mode, target: u64) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.count.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.bad_signatures.store(0, Ordering::SeqCst);
        self.largest_body.store(0, Ordering::SeqCst);
        *self.reached_at.lock().unwrap() = None;
        self.arrivals.lock().unwrap().clear();
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.bad_signatures.load(Ordering::SeqCst)
    }

    pub fn largest_body(&self) -> u64 {
        self.largest_body.load(Ordering::SeqCst)
    }

    /// Waits until `target` requests were answered; returns when the last
    /// one arrived. Fails when walhook exits or `timeout` passes.
    pub async fn wait_target(&self, proc: &mut Proc, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = *self.reached_at.lock().unwrap() {
                return Ok(at);
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the receiver got {} of {} requests within {timeout:?}",
                    self.count(),
                    self.target.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signed = headers
        .get("x-superleap-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| verify_superleap(SECRET.as_bytes(), &body, sig));
    if !signed {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    r.largest_body
        .fetch_max(body.len() as u64, Ordering::SeqCst);
    let mode = r.mode.load(Ordering::Relaxed);
    if mode == Mode::Hang as u8 {
        r.count.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    if mode == Mode::Latency as u8 {
        let (at, wall) = (Instant::now(), std::time::SystemTime::now());
        let event_id = headers
            .get("x-superleap-event-id")
            .and_then(|v| v.to_str().ok());
        if let (Some(lead), Some(event_id), Ok(since)) = (
            after_id(&body),
            event_id,
            wall.duration_since(std::time::UNIX_EPOCH),
        ) {
            r.arrivals.lock().unwrap().push(Arrival {
                lead,
                event_id: event_id.to_string(),
                at,
                unix_micros: since.as_micros() as i64,
            });
        }
    }
    let n = r.count.fetch_add(1, Ordering::SeqCst) + 1;
    if n == r.target.load(Ordering::SeqCst) {
        *r.reached_at.lock().unwrap() = Some(Instant::now());
    }
    StatusCode::NO_CONTENT
}

/// The lead number of the row in the body's after image.
fn after_id(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    lead_number(v.get("after")?.get("id")?.as_str()?)
}

/// Starts the receiver; returns it and its URL.
pub async fn start() -> Result<(Arc<Receiver>, String)> {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((state, url))
}

/// A typical event body of the workload.
const BODY: &[u8] = br#"{"before":{},"after":{"id":"lead_000000001","name":"Lead Person 1","email":"lead.person.1@example.com","phone":"+1-555-0001","company":"Company 1 Ltd","stage":"contacted","score":1,"amount":0.37,"tags":["tag1","region1"],"updated_at":"2025-02-21T08:33:28.148123Z"},"diff":{"id":"lead_000000001","name":"Lead Person 1","email":"lead.person.1@example.com","phone":"+1-555-0001","company":"Company 1 Ltd","stage":"contacted","score":1,"amount":0.37,"tags":["tag1","region1"],"updated_at":"2025-02-21T08:33:28.148123Z"}}"#;

/// The HTTP ceiling: `n` POSTs of a typical event body from `concurrency`
/// tasks with walhook's HTTP client settings, each signed as walhook signs,
/// to the same receiver. No database.
pub async fn http_ceiling(url: &str, n: u64, concurrency: usize) -> Result<Duration> {
    let client = walhook::dispatch::http::build_client()?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.to_string(), next.clone());
        tasks.spawn(async move {
            let body = Bytes::from_static(BODY);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "x-superleap-event-id",
                        "bench:lead:1:lead_1:lead.create:abcdefgh",
                    )
                    .header("x-superleap-event", "lead.create")
                    .header(
                        "x-superleap-signature",
                        superleap_signature(SECRET.as_bytes(), &body),
                    )
                    .body(body.clone())
                    .send()
                    .await?;
                resp.error_for_status()?.bytes().await?;
            }
            Ok::<(), reqwest::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_after_id_is_read_from_the_body() {
        assert_eq!(after_id(BODY), Some(1));
        assert_eq!(after_id(br#"{"before":{"id":"lead_7"},"after":{}}"#), None);
    }
}
