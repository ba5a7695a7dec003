//! The delivery loop: claim due deliveries from the ledger, send each as a
//! signed POST, record the attempt and the next state. Several processes may
//! run it against one ledger; leases keep them from sending one delivery twice
//! at the same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointConfig, Ordering};
use crate::dispatch::http::{self, AttemptRecord, Outcome};
use crate::dispatch::retry::{self, Decision};
use crate::dispatch::sign;
use crate::event::system;
use crate::ledger::queue::{AttemptRow, ClaimRequest, Claimed, NextState};
use crate::ledger::{Ledger, LedgerError, NewEvent};
use crate::metrics::Metrics;
use crate::pg::{self, unix_ms};

/// How long the loop sleeps at most when nothing is due and nothing woke it
/// (a safety net: wake-ups come from NOTIFY and the in-process signal).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// How often successes are written to the endpoints' health even when this
/// process saw no failure (another process may have).
const HEALTH_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// Runs dispatch until `shutdown`; reconnects to the ledger on errors.
pub async fn run(cfg: Arc<Config>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let client = match http::build_client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; dispatch is off");
            return;
        }
    };
    let owner = format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    );
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match Dispatcher::run(&cfg, &metrics, &client, &owner, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "dispatch interrupted; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "walhook".into())
}

struct Done {
    claimed: Claimed,
    record: AttemptRecord,
    headers: HeaderMap,
}

struct Dispatcher<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    http: &'a reqwest::Client,
    owner: &'a str,
    ledger: Ledger,
    db: Client,
    endpoints: HashMap<String, EndpointConfig>,
    endpoint_ids: Vec<String>,
    /// Endpoints whose failing clock may be running in the ledger: only
    /// their successes need a write to stop it. All of them at start and
    /// again every `HEALTH_REFRESH`, since another process may have started
    /// the clock meanwhile.
    maybe_failing: std::collections::HashSet<String>,
    health_refreshed: tokio::time::Instant,
}

impl<'a> Dispatcher<'a> {
    async fn run(
        cfg: &'a Config,
        metrics: &'a Metrics,
        http: &'a reqwest::Client,
        owner: &'a str,
        shutdown: &CancellationToken,
    ) -> Result<(), DispatchError> {
        let db = pg::connect(
            &cfg.source.url,
            "walhook dispatch",
            pg::DEFAULT_LOGIN_TIMEOUT,
        )
        .await
        .map_err(LedgerError::from)?;
        let ledger = Ledger::new(&cfg.ledger.schema);
        let endpoint_ids: Vec<String> = cfg.endpoints.iter().map(|e| e.id.clone()).collect();
        ledger.register_endpoints(&db, &endpoint_ids).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = ledger
            .listen(&cfg.source.url, pg::DEFAULT_LOGIN_TIMEOUT, wake.clone())
            .await?;
        let mut d = Dispatcher {
            cfg,
            metrics,
            http,
            owner,
            ledger,
            db,
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.clone()))
                .collect(),
            maybe_failing: endpoint_ids.iter().cloned().collect(),
            health_refreshed: tokio::time::Instant::now(),
            endpoint_ids,
        };
        let result = d.run_loop(&wake, shutdown).await;
        drop(listener);
        result
    }

    async fn run_loop(
        &mut self,
        wake: &tokio::sync::Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), DispatchError> {
        let max = self.cfg.delivery.max_in_flight;
        let per_record = self.cfg.delivery.ordering == Ordering::PerRecord;
        // Each endpoint gets a fair share of the slots, so one that hangs
        // until its timeout cannot hold back the others.
        let per_endpoint = (max / self.endpoint_ids.len().max(1)).max(1);
        let mut by_endpoint: HashMap<String, usize> = HashMap::new();
        let mut inflight: JoinSet<Done> = JoinSet::new();
        let mut done: Vec<Done> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                // Graceful stop: no new attempts; those in flight finish
                // within their own timeout and are recorded.
                while let Some(r) = inflight.join_next().await {
                    if let Ok(d) = r {
                        done.push(d);
                    }
                }
                self.record(&mut done).await?;
                return Ok(());
            }
            let free = max.saturating_sub(inflight.len());
            let mut claimed_any = false;
            if free > 0 {
                let limits: Vec<i64> = self
                    .endpoint_ids
                    .iter()
                    .map(|id| {
                        let used = by_endpoint.get(id).copied().unwrap_or(0);
                        per_endpoint.saturating_sub(used) as i64
                    })
                    .collect();
                let claimed = self
                    .ledger
                    .claim(
                        &self.db,
                        self.owner,
                        &ClaimRequest {
                            endpoints: &self.endpoint_ids,
                            limits: &limits,
                            total: free as i64,
                            lease: self.cfg.delivery.lease,
                            per_record,
                        },
                    )
                    .await?;
                claimed_any = !claimed.is_empty();
                for c in claimed {
                    *by_endpoint.entry(c.endpoint_id.clone()).or_default() += 1;
                    self.spawn(&mut inflight, c);
                }
            }
            // Collect whatever has finished, then record it in one transaction.
            while let Some(r) = inflight.try_join_next() {
                if let Ok(d) = r {
                    done.push(d);
                }
            }
            if !done.is_empty() {
                for d in &done {
                    if let Some(n) = by_endpoint.get_mut(&d.claimed.endpoint_id) {
                        *n = n.saturating_sub(1);
                    }
                }
                self.record(&mut done).await?;
                continue;
            }
            if claimed_any && inflight.len() < max {
                continue;
            }
            let idle = if inflight.is_empty() {
                self.idle_wait().await?
            } else {
                IDLE_POLL
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = inflight.join_next(), if !inflight.is_empty() => {
                    if let Some(Ok(d)) = r { done.push(d); }
                }
                _ = wake.notified() => {}
                _ = self.metrics.new_deliveries() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// How long to sleep when nothing is in flight: until the next retry is
    /// due, at most `IDLE_POLL`.
    async fn idle_wait(&self) -> Result<Duration, DispatchError> {
        Ok(match self.ledger.next_due(&self.db).await? {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::from_millis(10))
                .clamp(Duration::from_millis(10), IDLE_POLL),
            None => IDLE_POLL,
        })
    }

    fn spawn(&self, set: &mut JoinSet<Done>, claimed: Claimed) {
        let Some(ep) = self.endpoints.get(&claimed.endpoint_id).cloned() else {
            return;
        };
        let prefix = self.cfg.delivery.header_prefix.clone();
        let http = self.http.clone();
        set.spawn(async move {
            let body = Bytes::from(claimed.body.clone());
            let now = unix_ms(SystemTime::now()) / 1000;
            let headers = sign::signed_headers(
                &ep,
                &prefix,
                &claimed.event_id,
                &claimed.event_name,
                &body,
                now,
            );
            let record = http::attempt(&http, &ep.url, &headers, body, ep.timeout).await;
            Done {
                claimed,
                record,
                headers,
            }
        });
    }

    async fn record(&mut self, done: &mut Vec<Done>) -> Result<(), DispatchError> {
        if done.is_empty() {
            return Ok(());
        }
        let now_ms = unix_ms(SystemTime::now());
        let mut rows = Vec::with_capacity(done.len());
        let mut ok_eps: Vec<String> = Vec::new();
        let mut failed_eps: Vec<String> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for d in done.iter() {
            let ep = &d.claimed.endpoint_id;
            let outcome = &d.record.outcome;
            let next = if let Some(failure) = d.record.failure() {
                if !failed_eps.contains(ep) {
                    failed_eps.push(ep.clone());
                }
                if matches!(outcome, Outcome::Status(410)) && !gone.contains(ep) {
                    gone.push(ep.clone());
                }
                match retry::after_failure(
                    &self.cfg.delivery.retry,
                    d.claimed.cycle_started_unix_ms,
                    (d.claimed.cycle_attempts + 1) as u32,
                    now_ms,
                    &failure,
                    rand::random::<f64>(),
                ) {
                    Decision::RetryAt(at) => NextState::RetryAt(at),
                    Decision::Disable => NextState::Disabled,
                }
            } else {
                if !ok_eps.contains(ep) {
                    ok_eps.push(ep.clone());
                }
                NextState::Succeeded
            };
            tracing::debug!(
                delivery = d.claimed.delivery_id,
                endpoint = %ep,
                event = %d.claimed.event_id,
                attempt = d.claimed.attempts + 1,
                outcome = %outcome.message(),
                ?next,
                "attempt finished"
            );
            let outcome_label = match next {
                NextState::Succeeded => "success",
                NextState::RetryAt(_) => "failure",
                NextState::Disabled => "disabled",
            };
            self.metrics.delivery_outcome(ep, outcome_label);
            self.metrics
                .observe_attempt_seconds(d.record.duration.as_secs_f64());
            rows.push(AttemptRow {
                delivery_id: d.claimed.delivery_id,
                endpoint_id: ep.clone(),
                started_unix_ms: d.record.started_at_unix_ms,
                duration_ms: d.record.duration.as_millis().min(i32::MAX as u128) as i32,
                status_code: outcome.status().map(i32::from),
                error_kind: (!outcome.is_success()).then(|| outcome.error_kind().to_string()),
                error: (!outcome.is_success()).then(|| outcome.message()),
                response_excerpt: d.record.response_excerpt.clone(),
                request_headers: headers_json(&d.headers),
                next,
            });
            if matches!(next, NextState::Disabled) {
                tracing::warn!(delivery = d.claimed.delivery_id, endpoint = %ep, event = %d.claimed.event_id,
                    "delivery disabled after its retry window; retry it with `walhook deliveries retry`");
            }
        }
        done.clear();
        self.ledger.record(&self.db, self.owner, &rows).await?;
        for ep in &gone {
            if self
                .ledger
                .set_endpoint_enabled(&self.db, ep, false, Some("the endpoint answered 410 Gone"))
                .await?
            {
                tracing::warn!(endpoint = %ep, "endpoint answered 410 Gone: disabled; enable it again with `walhook endpoints enable`");
                self.notify_disabled(ep, "410 Gone").await?;
            }
        }
        // Successes of endpoints not known to be failing need no write.
        if self.health_refreshed.elapsed() >= HEALTH_REFRESH {
            self.maybe_failing.extend(self.endpoint_ids.iter().cloned());
            self.health_refreshed = tokio::time::Instant::now();
        }
        ok_eps.retain(|ep| self.maybe_failing.contains(ep));
        let disabled = if ok_eps.is_empty() && failed_eps.is_empty() {
            Vec::new()
        } else {
            self.ledger
                .endpoint_health(
                    &self.db,
                    &ok_eps,
                    &failed_eps,
                    self.cfg.delivery.endpoint_disable_after,
                )
                .await?
        };
        for ep in &ok_eps {
            self.maybe_failing.remove(ep);
        }
        self.maybe_failing.extend(failed_eps.iter().cloned());
        for ep in disabled {
            tracing::warn!(endpoint = %ep, "endpoint failed continuously for endpoint_disable_after: disabled");
            self.notify_disabled(&ep, "failing continuously").await?;
        }
        Ok(())
    }

    /// Send an `endpoint.disabled` event to the notification endpoint, if one
    /// is configured (and is not the endpoint that was disabled).
    async fn notify_disabled(&mut self, endpoint: &str, reason: &str) -> Result<(), DispatchError> {
        let Some(target) = self.cfg.delivery.notify_endpoint.clone() else {
            return Ok(());
        };
        if target == endpoint {
            return Ok(());
        }
        let now_ms = unix_ms(SystemTime::now());
        let event = system::endpoint_disabled(&self.cfg.source.name, endpoint, reason, now_ms);
        let ev = NewEvent {
            event,
            commit_lsn: crate::pg::Lsn::ZERO,
            change_index: 0,
            commit_time_unix_micros: now_ms * 1000,
            endpoints: vec![target],
        };
        self.ledger.append(&mut self.db, &[ev], None).await?;
        Ok(())
    }
}

/// The request headers as a JSON object, for the attempt's ledger row. Every
/// value was built from a `&str`, so reading it back as UTF-8 loses nothing.
fn headers_json(headers: &HeaderMap) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), serde_json::Value::String(text))
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}
