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
use crate::dispatch::http::{self, AttemptRecord};
use crate::dispatch::leases::Leases;
use crate::dispatch::outcome::{self, BatchOutcomes, Health};
use crate::dispatch::sign;
use crate::dispatch::stream::StreamDeps;
use crate::ledger::queue::{ClaimRequest, Claimed, NextState};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::pg::{self, unix_ms};

/// On a stop, how long attempts in flight may still finish and be recorded.
const STOP_GRACE: Duration = Duration::from_millis(2_500);

/// How long the loop sleeps at most when nothing is due and nothing woke it
/// (a safety net: wake-ups come from NOTIFY and the in-process signal).
const IDLE_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// Runs dispatch until `shutdown`; reconnects to the ledger on errors.
pub async fn run(deps: StreamDeps, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match Dispatcher::run(&deps, &shutdown).await {
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

/// This process's lease owner id: host, pid and a random part.
pub fn owner_id() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
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

/// Concurrency: `max` attempts at once, and each endpoint a fair share of
/// them, so one that hangs until its timeout cannot hold back the others.
struct Slots {
    max: usize,
    per_endpoint: usize,
    used: HashMap<String, usize>,
}

impl Slots {
    fn new(max: usize, endpoints: &[String]) -> Slots {
        Slots {
            max,
            per_endpoint: (max / endpoints.len().max(1)).max(1),
            used: HashMap::new(),
        }
    }

    /// How many more each of `endpoints` may have in flight.
    fn limits(&self, endpoints: &[String]) -> Vec<i64> {
        endpoints
            .iter()
            .map(|id| {
                let used = self.used.get(id).copied().unwrap_or(0);
                self.per_endpoint.saturating_sub(used) as i64
            })
            .collect()
    }

    fn take(&mut self, endpoint: &str) {
        *self.used.entry(endpoint.to_string()).or_default() += 1;
    }

    fn release(&mut self, endpoint: &str) {
        if let Some(n) = self.used.get_mut(endpoint) {
            *n = n.saturating_sub(1);
        }
    }
}

struct Dispatcher<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    http: &'a reqwest::Client,
    owner: &'a str,
    leases: &'a Leases,
    ledger: Ledger,
    db: Client,
    endpoints: HashMap<String, EndpointConfig>,
    endpoint_ids: Vec<String>,
    health: Health,
    /// Deliveries this dispatcher has claimed and not yet recorded.
    held: std::collections::HashSet<i64>,
}

impl<'a> Dispatcher<'a> {
    async fn run(deps: &'a StreamDeps, shutdown: &CancellationToken) -> Result<(), DispatchError> {
        let cfg = &*deps.cfg;
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let db = pg::connect(cfg.ledger_url(), "walhook dispatch", login)
            .await
            .map_err(LedgerError::from)?;
        let ledger = Ledger::new(&cfg.ledger.schema);
        let endpoint_ids: Vec<String> = cfg.endpoints.iter().map(|e| e.id.clone()).collect();
        ledger.register_endpoints(&db, &endpoint_ids).await?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = ledger.listen(cfg.ledger_url(), login, wake.clone()).await?;
        let mut d = Dispatcher {
            cfg,
            metrics: &deps.metrics,
            http: &deps.http,
            owner: &deps.owner,
            leases: &deps.leases,
            ledger,
            db,
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.clone()))
                .collect(),
            health: Health::new(cfg),
            endpoint_ids,
            held: Default::default(),
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
        let mut slots = Slots::new(max, &self.endpoint_ids);
        let mut inflight: JoinSet<Done> = JoinSet::new();
        let mut done: Vec<Done> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                return self.stop(inflight, done).await;
            }
            let claimed_any = self.claim(&mut slots, &mut inflight).await?;
            // Collect whatever has finished, then record it in one statement.
            while let Some(r) = inflight.try_join_next() {
                done.extend(r.ok());
            }
            if !done.is_empty() {
                for d in &done {
                    slots.release(&d.claimed.endpoint_id);
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

    /// Graceful stop: no new attempts; those in flight may finish within
    /// `STOP_GRACE` and are recorded; the rest are dropped and their leases
    /// given back, so another process attempts them at once.
    async fn stop(
        &mut self,
        mut inflight: JoinSet<Done>,
        mut done: Vec<Done>,
    ) -> Result<(), DispatchError> {
        let grace = tokio::time::Instant::now() + STOP_GRACE;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(grace, inflight.join_next()).await {
                Ok(Some(r)) => done.extend(r.ok()),
                Ok(None) | Err(_) => break,
            }
        }
        inflight.abort_all();
        self.record(&mut done).await?;
        let held: Vec<i64> = self.held.drain().collect();
        for id in &held {
            self.leases.release(*id);
        }
        self.ledger.release(&self.db, self.owner, &held).await?;
        Ok(())
    }

    /// Lease what is due, within the free slots, and start each attempt.
    /// Returns whether anything was claimed.
    async fn claim(
        &mut self,
        slots: &mut Slots,
        inflight: &mut JoinSet<Done>,
    ) -> Result<bool, DispatchError> {
        let free = slots.max.saturating_sub(inflight.len());
        if free == 0 {
            return Ok(false);
        }
        let limits = slots.limits(&self.endpoint_ids);
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
                    per_record: self.cfg.delivery.ordering == Ordering::PerRecord,
                },
            )
            .await?;
        let any = !claimed.is_empty();
        for c in claimed {
            slots.take(&c.endpoint_id);
            self.leases.hold(c.delivery_id);
            self.held.insert(c.delivery_id);
            self.spawn(inflight, c);
        }
        Ok(any)
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
        let mut batch = BatchOutcomes::default();
        for d in done.drain(..) {
            let c = &d.claimed;
            let next = outcome::next_state(
                &self.cfg.delivery.retry,
                &d.record,
                c.cycle_started_unix_ms,
                (c.cycle_attempts + 1) as u32,
                now_ms,
            );
            tracing::debug!(
                delivery = c.delivery_id, endpoint = %c.endpoint_id, event = %c.event_id,
                attempt = c.attempts + 1, outcome = %d.record.outcome.message(), ?next,
                "attempt finished"
            );
            if matches!(next, NextState::Disabled) {
                tracing::warn!(delivery = c.delivery_id, endpoint = %c.endpoint_id, event = %c.event_id,
                    "delivery disabled after its retry window; retry it with `walhook deliveries retry`");
            }
            outcome::observe(self.metrics, &c.endpoint_id, &d.record, next);
            batch.add(&c.endpoint_id, &d.record.outcome);
            rows.push(outcome::attempt_row(
                c.delivery_id,
                &c.endpoint_id,
                &d.record,
                &d.headers,
                next,
            ));
        }
        self.ledger.record(&self.db, self.owner, &rows).await?;
        for r in &rows {
            self.leases.release(r.delivery_id);
            self.held.remove(&r.delivery_id);
        }
        self.health
            .apply(self.cfg, &self.ledger, &self.db, batch)
            .await?;
        Ok(())
    }
}
