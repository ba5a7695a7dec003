//! The delivery loop: claim due deliveries from the ledger, send each as a
//! signed POST, record the attempt and the next state. Several processes may
//! run it against one ledger; leases keep them from sending one delivery twice
//! at the same time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointConfig, Ordering};
use crate::dispatch::http::{self, AttemptRecord};
use crate::dispatch::leases::Leases;
use crate::dispatch::limits::Limits;
use crate::dispatch::outcome::{self, BatchOutcomes, Health};
use crate::dispatch::runtime::RuntimeWatch;
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
/// How soon due deliveries that could not be claimed are looked at again.
const BLOCKED_POLL: Duration = Duration::from_millis(10);
const LIMITED_POLL: Duration = Duration::from_millis(200);
/// How long after a runtime endpoint's removal its open deliveries are
/// still looked for (a spill written as it went).
const REMOVED_SWEEP: Duration = Duration::from_secs(60);

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

struct Dispatcher<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    http: &'a reqwest::Client,
    owner: &'a str,
    leases: &'a Leases,
    ledger: Ledger,
    db: Client,
    /// Config endpoints and the runtime ones, by id.
    endpoints: HashMap<String, EndpointConfig>,
    runtime: RuntimeWatch,
    /// Runtime endpoints removed lately, and when this process saw it: their
    /// open deliveries are disabled (again) for a while, for a spill that
    /// was still being written when the endpoint went.
    removed: Vec<(String, Instant)>,
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
            endpoints: HashMap::new(),
            runtime: deps.runtime.clone(),
            removed: Vec::new(),
            health: Health::new(cfg),
            held: Default::default(),
        };
        let result = d.run_loop(&wake, shutdown).await;
        drop(listener);
        if result.is_err() {
            // Their attempts are gone with this session: stop renewing the
            // leases, so the deliveries are claimed (and sent) again once
            // they run out instead of staying leased for good.
            for id in d.held.drain() {
                d.leases.release(id);
            }
        }
        result
    }

    async fn run_loop(
        &mut self,
        wake: &tokio::sync::Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), DispatchError> {
        let max = self.cfg.delivery.max_in_flight;
        let mut limits = Limits::new(max, &self.cfg.endpoints, Instant::now());
        self.runtime.mark_changed();
        let mut inflight: JoinSet<Done> = JoinSet::new();
        let mut done: Vec<Done> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                return self.stop(inflight, done).await;
            }
            if self.runtime.has_changed().unwrap_or(false) {
                self.on_runtime(&mut limits);
            }
            self.sweep_removed().await?;
            let claimed_any = self.claim(&mut limits, &mut inflight).await?;
            // Collect whatever has finished, then record it in one statement.
            while let Some(r) = inflight.try_join_next() {
                done.extend(r.ok());
            }
            if !done.is_empty() {
                for d in &done {
                    limits.released(&d.claimed.endpoint_id);
                }
                self.record(&mut done).await?;
                continue;
            }
            if claimed_any && inflight.len() < max {
                continue;
            }
            let mut idle = if inflight.is_empty() {
                self.idle_wait(limits.any_limited()).await?
            } else {
                IDLE_POLL
            };
            // A rate-limited endpoint out of tokens is looked at again as
            // soon as it has one.
            if let Some(at) = limits.wake_at() {
                idle = idle.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = inflight.join_next(), if !inflight.is_empty() => {
                    if let Some(Ok(d)) = r { done.push(d); }
                }
                _ = wake.notified() => {}
                _ = self.metrics.new_deliveries() => {}
                Ok(()) = self.runtime.changed() => self.runtime.mark_changed(),
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// The runtime endpoints changed: dispatch serves the new set from now
    /// on (deliveries claimed before go on with what they had).
    fn on_runtime(&mut self, limits: &mut Limits) {
        let set = self.runtime.borrow_and_update().clone();
        let mut all: Vec<EndpointConfig> = self.cfg.endpoints.clone();
        all.extend(set.endpoints.iter().cloned());
        let now = Instant::now();
        for id in self.endpoints.keys() {
            if self.cfg.endpoint(id).is_none() && set.get(id).is_none() {
                self.removed.push((id.clone(), now));
            }
        }
        limits.set_endpoints(&all, now);
        self.endpoints = all.into_iter().map(|e| (e.id.clone(), e)).collect();
    }

    /// Disables what is still open for runtime endpoints removed lately
    /// (see [`Dispatcher::removed`]).
    async fn sweep_removed(&mut self) -> Result<(), DispatchError> {
        let now = Instant::now();
        self.removed.retain(|(_, at)| now < *at + REMOVED_SWEEP);
        if self.removed.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = self.removed.iter().map(|(id, _)| id.clone()).collect();
        let n = self.ledger.disable_removed(&self.db, &ids).await?;
        if n > 0 {
            tracing::info!(deliveries = n, endpoints = ?ids, "deliveries of removed runtime endpoints disabled");
        }
        Ok(())
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
        limits: &mut Limits,
        inflight: &mut JoinSet<Done>,
    ) -> Result<bool, DispatchError> {
        let free = limits.max().saturating_sub(inflight.len());
        if free == 0 {
            return Ok(false);
        }
        let claimable = limits.claimable(Instant::now());
        if claimable.iter().all(|n| *n == 0) {
            return Ok(false);
        }
        let claimed = self
            .ledger
            .claim(
                &self.db,
                self.owner,
                &ClaimRequest {
                    endpoints: limits.ids(),
                    limits: &claimable,
                    caps: limits.caps(),
                    total: free as i64,
                    lease: self.cfg.delivery.lease,
                    per_record: self.cfg.delivery.ordering == Ordering::PerRecord,
                },
            )
            .await?;
        let any = !claimed.is_empty();
        let now = Instant::now();
        for c in claimed {
            limits.claimed(&c.endpoint_id, now);
            self.leases.hold(c.delivery_id);
            self.held.insert(c.delivery_id);
            self.spawn(inflight, c);
        }
        Ok(any)
    }

    /// How long to sleep when nothing is in flight: until the next retry is
    /// due, at most `IDLE_POLL`. Due deliveries this process could not claim
    /// (leased elsewhere, over an endpoint's `max_in_flight`) are looked at
    /// again after `BLOCKED_POLL`, or `LIMITED_POLL` with limited endpoints,
    /// whose backlogs wait for another process's attempt to end.
    async fn idle_wait(&self, limited: bool) -> Result<Duration, DispatchError> {
        let floor = if limited { LIMITED_POLL } else { BLOCKED_POLL };
        Ok(match self.ledger.next_due(&self.db).await? {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or(floor)
                .clamp(floor, IDLE_POLL),
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
            let policy = self
                .endpoints
                .get(&c.endpoint_id)
                .map_or(&self.cfg.delivery.retry, |e| &e.retry);
            let next = outcome::next_state(
                policy,
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
