//! The capture loop: reads the slot, maps changes to events and hands them
//! to the delivery stream ([`crate::dispatch::stream`]). The slot is
//! acknowledged only up to the position the stream reports resolved (every
//! delivery before it recorded or durably in the retry ledger), so a crash at
//! any moment replays from there: at worst an event is sent again, with the
//! same id and body.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::backfill;
use super::error::CaptureError;
use super::notices::Reporter;
use super::objects;
use super::policy::{self, Backoff, Policy};
use super::relations::{RelState, Relations};
use super::setup;
use crate::config::Config;
use crate::dispatch::stream::{Stream, StreamDeps};
use crate::event::stream::{Captured, StreamItem};
use crate::event::{ChangeContext, custom, map_change};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pg::{self, ConnectError, Lsn, PG_EPOCH_OFFSET_MICROS, Progress};
use crate::pgoutput::{self, Message};

/// Session settings for the walsender, so the text of every value has one
/// known format whatever the database's own settings are.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=1 -c bytea_output=hex";

/// Events handed to the stream per item at most; also bounds what a large
/// transaction holds here (it is handed over in chunks of this many).
pub const CHUNK: usize = 500;

/// Body bytes per item at most: with wide rows this, not `CHUNK`, bounds
/// memory.
pub const CHUNK_BYTES: usize = 4 << 20;

/// How long a graceful stop waits for the stream to settle.
const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// Replication messages buffered between the socket and the decoder.
const STREAM_BUFFER: usize = 1024;

/// How often a running session checks that the publication still covers
/// the mapped tables as walhook needs (someone may ALTER it by hand).
const PUBLICATION_RECHECK: Duration = Duration::from_secs(10);

/// A session that streamed this long was healthy: the next outage starts
/// again at the first reconnect delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The replication connection settings for this config, one per host of
/// `source.url` ([`super::primary`] picks the primary).
pub fn replication_configs(cfg: &Config) -> Result<Vec<ReplicationConfig>, ConnectError> {
    let all = pg::replication_configs(&cfg.source.url, &cfg.source.slot, &cfg.source.publication)?;
    let session = |rc: ReplicationConfig| {
        rc
            // The slot's confirmed position is the source of truth: start there.
            .with_start_lsn(pgwire_replication::Lsn::ZERO)
            .with_status_interval(cfg.source.status_interval)
            .with_wakeup_interval(Duration::from_secs(5))
            .with_buffer_size(STREAM_BUFFER)
            .with_options(SESSION_OPTIONS)
            .with_application_name(format!("walhook capture {}", cfg.source.name))
    };
    Ok(all.into_iter().map(session).collect())
}

/// Runs capture until `shutdown`: one session after another, for ever, each
/// failure handled as [`policy::policy`] says.
pub async fn run(deps: StreamDeps, shutdown: CancellationToken) {
    let (cfg, metrics) = (deps.cfg.clone(), deps.metrics.clone());
    let mut backoff = Backoff::default();
    let mut standing_by = false;
    let mut reporter = Reporter::new(&cfg, metrics.clone());
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let result = Session::run(&deps, &shutdown, &mut reporter).await;
        metrics.set_streaming(false);
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        let policy = policy::policy(&e);
        match policy {
            Policy::StandBy if !standing_by => tracing::info!(
                slot = %cfg.source.slot,
                "the replication slot is in use by another walhook process; standing by to take over"
            ),
            Policy::StandBy => tracing::debug!(error = %e, "still standing by"),
            Policy::Operator { hint } => {
                tracing::error!(error = %e, hint, "capture stopped; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = reporter.blocked(&e, hint) => {}
                }
            }
            Policy::Reconnect => tracing::warn!(error = %e, "capture session ended; reconnecting"),
        }
        standing_by = policy == Policy::StandBy;
        if standing_by {
            reporter.standing_by();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.after(policy)) => {}
        }
    }
}

/// Fails when the publication would lose or change events of `relids`.
async fn check_publication(db: &Client, cfg: &Config, relids: &[u32]) -> Result<(), CaptureError> {
    let problems = setup::publication_problems(db, &cfg.source.publication, relids)
        .await
        .map_err(|e| CaptureError::Publication(e.to_string()))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Publication(problems.join("; ")))
    }
}

/// The transaction being decoded.
struct OpenTxn {
    commit_lsn: Lsn,
    commit_time_unix_micros: i64,
    change_index: u32,
}

/// One replication session: one connection to the slot, one for catalog
/// lookups, one to the ledger, and the delivery stream.
struct Session<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    reporter: &'a mut Reporter,
    ledger: Ledger,
    /// The source database, for catalog lookups.
    db: Client,
    ledger_db: Client,
    stream: Stream,
    relations: Relations,
    txn: Option<OpenTxn>,
    /// Events of the open transaction not handed over yet.
    chunk: Vec<Captured>,
    chunk_bytes: usize,
    /// The last position handed over while idle.
    idle_at: Lsn,
    acked: Progress,
    /// The mapped tables' relation oids.
    relids: Vec<u32>,
    /// The backfill chunk between its watermarks.
    window: Arc<backfill::Window>,
}

impl<'a> Session<'a> {
    async fn run(
        deps: &'a StreamDeps,
        shutdown: &CancellationToken,
        reporter: &'a mut Reporter,
    ) -> Result<(), CaptureError> {
        let cfg = &*deps.cfg;
        reporter.session_failed_at(None);
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let db = pg::connect(&cfg.source.url, "walhook capture", login).await?;
        let ledger_db = pg::connect(cfg.ledger_url(), "walhook capture ledger", login).await?;
        let ledger = Ledger::new(&cfg.ledger.schema);
        let mapping = objects::resolve_all(&db, &ledger_db, &ledger, cfg).await?;
        mapping.save(&ledger, &ledger_db).await?;
        for notice in &mapping.notices {
            tracing::warn!("{notice}");
        }
        let relids = mapping.relids();
        check_publication(&db, cfg, &relids).await?;
        let stream = Stream::start(deps.clone()).await?;
        let window = Arc::new(backfill::Window::default());
        // Backfills run while this session reads the slot (they need its
        // watermarks), and stop with it.
        let runner_stop = shutdown.child_token();
        let _stop_runner = runner_stop.clone().drop_guard();
        tokio::spawn(
            backfill::Runner {
                cfg: deps.cfg.clone(),
                metrics: deps.metrics.clone(),
                objects: mapping.objects.clone(),
                window: window.clone(),
            }
            .run(runner_stop),
        );
        let mut client = super::primary::connect(replication_configs(cfg)?, login).await?;
        tokio::time::timeout(login, client.wait_started())
            .await
            .map_err(|_| CaptureError::StartTimeout(login))??;
        tracing::info!(slot = %cfg.source.slot, "capture streaming from the replication slot");
        deps.metrics.set_streaming(true);
        reporter.streaming(&ledger_db, &mapping.notices).await;
        let mut s = Session {
            cfg,
            metrics: &deps.metrics,
            reporter,
            ledger,
            db,
            ledger_db,
            stream,
            relations: Relations::new(mapping.objects),
            txn: None,
            chunk: Vec::new(),
            chunk_bytes: 0,
            idle_at: Lsn::ZERO,
            acked: Progress::default(),
            relids,
            window,
        };
        let result = s.stream(&mut client, shutdown).await;
        match result {
            Ok(()) => {
                // Graceful stop: the stream settles, then the slot is
                // acknowledged as far as it resolved.
                let resolved = s.stream.finish(STOP_DEADLINE).await?;
                s.ack(&client, resolved);
                s.stop(&mut client).await;
                Ok(())
            }
            Err(e) => {
                client.abort();
                s.reporter
                    .session_failed_at(s.txn.as_ref().map(|t| t.commit_lsn));
                Err(e)
            }
        }
    }

    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let mut recheck = tokio::time::interval(PUBLICATION_RECHECK);
        recheck.tick().await;
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                resolved = self.stream.resolved_changed() => {
                    self.ack(client, resolved?);
                    continue;
                }
                _ = recheck.tick() => {
                    check_publication(&self.db, self.cfg, &self.relids).await?;
                    continue;
                }
                ev = client.recv() => ev?.ok_or(CaptureError::Ended)?,
            };
            match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.txn = Some(OpenTxn {
                        commit_lsn: final_lsn.into(),
                        commit_time_unix_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                        change_index: 0,
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    self.handle(pgoutput::decode(&data)?).await?;
                    if self.chunk.len() >= CHUNK || self.chunk_bytes >= CHUNK_BYTES {
                        self.hand_over().await?;
                    }
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.txn = None;
                    self.metrics
                        .set_last_commit_unix_micros(commit_time_micros + PG_EPOCH_OFFSET_MICROS);
                    self.hand_over().await?;
                    let end_lsn = end_lsn.into();
                    self.window.committed(end_lsn);
                    self.stream.send(StreamItem::Commit { end_lsn }).await?;
                    self.reporter.passed(&self.ledger_db, end_lsn).await;
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.keepalive(wal_end.into()).await?
                }
                ReplicationEvent::Message {
                    transactional,
                    prefix,
                    content,
                    ..
                } if prefix == custom::PREFIX => self.custom(transactional, &content),
                ReplicationEvent::Message {
                    prefix, content, ..
                } if prefix == backfill::WATERMARK_PREFIX => self.watermark(&content),
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    /// Nothing open: once everything before is resolved, the slot may
    /// advance to `wal_end`, so Postgres need not keep that WAL.
    async fn keepalive(&mut self, wal_end: Lsn) -> Result<(), CaptureError> {
        if self.txn.is_none() && wal_end > self.idle_at {
            self.idle_at = wal_end;
            self.stream.send(StreamItem::Idle { wal_end }).await?;
            self.reporter.passed(&self.ledger_db, wal_end).await;
        }
        Ok(())
    }

    /// Hands the open transaction's events decoded so far to the stream.
    async fn hand_over(&mut self) -> Result<(), CaptureError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let events = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.chunk_bytes = 0;
        Ok(self.stream.send(StreamItem::Events(events)).await?)
    }

    async fn handle(&mut self, msg: Message) -> Result<(), CaptureError> {
        let (relation_id, change) = match msg {
            Message::Relation(rel) => {
                self.relations.on_relation(&self.db, self.cfg, rel).await?;
                let drift = self.relations.take_notices();
                self.reporter.drift(&self.ledger_db, drift).await;
                return Ok(());
            }
            Message::Type(t) => {
                self.relations.on_type(t);
                return Ok(());
            }
            Message::Truncate { relation_ids, .. } => return self.truncate(&relation_ids).await,
            other => match other.into_row_change() {
                Ok(change) => change,
                // Origin and anything else carry no row.
                Err(_) => return Ok(()),
            },
        };
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        let index = txn.change_index;
        txn.change_index += 1;
        let map = match self.relations.get(relation_id) {
            Some(RelState::Mapped(m)) => m,
            Some(RelState::Unmapped) => return Ok(()),
            None => return Err(CaptureError::UnknownRelation(relation_id)),
        };
        let ctx = ChangeContext {
            source_name: &self.cfg.source.name,
            commit_lsn: txn.commit_lsn,
            commit_time_unix_micros: txn.commit_time_unix_micros,
            change_index: index,
        };
        if let Some(event) = map_change(map, change, &ctx)? {
            self.window.changed(relation_id, &event.record_key);
            self.chunk_bytes += event.body.len();
            self.chunk.push(Captured {
                event,
                commit_lsn: txn.commit_lsn,
                change_index: index,
                commit_time_unix_micros: txn.commit_time_unix_micros,
                only: None,
            });
        }
        Ok(())
    }

    /// A `walhook` logical message: a custom event of the open transaction
    /// (see [`crate::event::custom`]). One that cannot be delivered is
    /// logged and skipped: it is the application's to fix.
    fn custom(&mut self, transactional: bool, content: &[u8]) {
        let Some(txn) = self.txn.as_mut().filter(|_| transactional) else {
            tracing::warn!(
                "a non-transactional `walhook` message is not delivered: emit it with pg_logical_emit_message(true, 'walhook', ...) inside the transaction"
            );
            return;
        };
        let index = txn.change_index;
        txn.change_index += 1;
        let ctx = ChangeContext {
            source_name: &self.cfg.source.name,
            commit_lsn: txn.commit_lsn,
            commit_time_unix_micros: txn.commit_time_unix_micros,
            change_index: index,
        };
        match custom::from_message(content, &ctx) {
            Ok(event) => {
                self.chunk_bytes += event.body.len();
                self.chunk.push(Captured {
                    event,
                    commit_lsn: txn.commit_lsn,
                    change_index: index,
                    commit_time_unix_micros: txn.commit_time_unix_micros,
                    only: None,
                });
            }
            Err(e) => tracing::warn!(error = %e, "a `walhook` message is not delivered"),
        }
    }

    /// A backfill watermark: at the high one, the chunk's rows the stream did
    /// not change meanwhile are handed over here, in the stream's order.
    fn watermark(&mut self, content: &[u8]) {
        let Ok(mark) = serde_json::from_slice::<backfill::Watermark>(content) else {
            return;
        };
        let (Some((events, only)), Some(txn)) = (self.window.watermark(mark), self.txn.as_mut())
        else {
            return;
        };
        for event in events {
            let index = txn.change_index;
            txn.change_index += 1;
            let ctx = ChangeContext {
                source_name: &self.cfg.source.name,
                commit_lsn: txn.commit_lsn,
                commit_time_unix_micros: txn.commit_time_unix_micros,
                change_index: index,
            };
            let event = backfill::place(event, &ctx);
            self.chunk_bytes += event.body.len();
            self.chunk.push(Captured {
                event,
                commit_lsn: txn.commit_lsn,
                change_index: index,
                commit_time_unix_micros: txn.commit_time_unix_micros,
                only: only.clone(),
            });
        }
    }

    /// TRUNCATE emits no row events: it is logged and counted.
    async fn truncate(&mut self, relation_ids: &[u32]) -> Result<(), CaptureError> {
        let mapped: Vec<&str> = relation_ids
            .iter()
            .filter_map(|id| self.relations.slug(*id))
            .collect();
        if !mapped.is_empty() {
            tracing::warn!(objects = ?mapped, "TRUNCATE on mapped table(s): no row events are emitted");
            self.metrics.add_truncates(mapped.len() as u64);
            self.ledger
                .count_truncate(&self.ledger_db, mapped.len() as i64)
                .await?;
        }
        Ok(())
    }

    fn ack(&mut self, client: &ReplicationClient, lsn: Lsn) {
        if self.acked.advance(lsn) {
            client.update_applied_lsn(lsn.into());
            self.metrics.set_acked_lsn(lsn);
        }
    }

    /// Graceful stop: the last acknowledgement reaches the server before the
    /// stream closes (the crate sends no final status update by itself).
    async fn stop(&mut self, client: &mut ReplicationClient) {
        let wait = (self.cfg.source.status_interval * 3).min(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + wait;
        let m = client.metrics();
        while Lsn::from(m.last_applied_lsn()) < self.acked.get()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "replication stream shutdown"),
            Err(_) => client.abort(),
            Ok(Ok(())) => {}
        }
    }
}
