//! The capture loop: reads the slot, maps changes to events and hands them
//! to the ledger writer. The slot is acknowledged only up to the end of a
//! transaction whose events the ledger has committed, so a crash at any
//! moment replays from there and the deterministic ids turn the replay into
//! no-ops.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::CaptureError;
use super::objects;
use super::policy::{self, Backoff, Policy};
use super::relations::{RelState, Relations};
use super::setup;
use super::writer::{Batch, Writer};
use crate::config::Config;
use crate::event::{ChangeContext, map_change};
use crate::ledger::{Ledger, NewEvent};
use crate::metrics::Metrics;
use crate::pg::{self, ConnectError, Lsn, PG_EPOCH_OFFSET_MICROS, Progress};
use crate::pgoutput::{self, Message};

/// Session settings for the walsender, so the text of every value has one
/// known format whatever the database's own settings are.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=1 -c bytea_output=hex";

/// Events written per ledger transaction at most; also bounds memory for
/// transactions of any size (they are written in chunks of this many).
pub const MAX_BATCH: usize = 2000;

/// Body bytes held before a flush at most: with wide rows (large TOASTed
/// values) this, not `MAX_BATCH`, bounds memory.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// Replication messages buffered between the socket and the decoder.
const STREAM_BUFFER: usize = 1024;

/// How long complete transactions may wait to be batched with later ones.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// How often a running session checks that the publication still covers
/// the mapped tables as walhook needs (someone may ALTER it by hand).
const PUBLICATION_RECHECK: Duration = Duration::from_secs(30);

/// A session that streamed this long was healthy: the next outage starts
/// again at the first reconnect delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The replication connection settings for this config.
pub fn replication_config(cfg: &Config) -> Result<ReplicationConfig, ConnectError> {
    let rc = pg::replication_config(&cfg.source.url, &cfg.source.slot, &cfg.source.publication)?;
    Ok(rc
        // The slot's confirmed position is the source of truth: start there.
        .with_start_lsn(pgwire_replication::Lsn::ZERO)
        .with_status_interval(cfg.source.status_interval)
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(STREAM_BUFFER)
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("walhook capture {}", cfg.source.name)))
}

/// Runs capture until `shutdown`: one session after another, for ever, each
/// failure handled as [`policy::policy`] says.
pub async fn run(cfg: Arc<Config>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut standing_by = false;
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let result = Session::run(&cfg, &metrics, &shutdown).await;
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
                tracing::error!(error = %e, hint, "capture stopped; retrying")
            }
            Policy::Reconnect => tracing::warn!(error = %e, "capture session ended; reconnecting"),
        }
        standing_by = policy == Policy::StandBy;
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

/// What the session holds for the writer but has not handed over yet.
#[derive(Default)]
struct Pending {
    events: Vec<NewEvent>,
    bytes: usize,
    /// End LSN of the last complete transaction whose events are in `events`.
    commit_end: Option<Lsn>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.commit_end.is_none()
    }

    fn is_full(&self) -> bool {
        self.events.len() >= MAX_BATCH || self.bytes >= MAX_BATCH_BYTES
    }

    fn take(&mut self) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        Some(Batch {
            events: std::mem::replace(&mut self.events, Vec::with_capacity(MAX_BATCH)),
            progress: self.commit_end.take(),
            bytes: std::mem::take(&mut self.bytes),
        })
    }

    fn put_back(&mut self, batch: Batch) {
        self.events = batch.events;
        self.commit_end = batch.progress;
        self.bytes = batch.bytes;
    }
}

/// One replication session: one connection to the slot, one for catalog
/// lookups and one (the writer's) for appending to the ledger.
struct Session<'a> {
    cfg: &'a Config,
    metrics: &'a Metrics,
    ledger: Ledger,
    db: Client,
    writer: Writer,
    relations: Relations,
    txn: Option<OpenTxn>,
    pending: Pending,
    acked: Progress,
    /// The mapped tables' relation oids.
    relids: Vec<u32>,
}

impl<'a> Session<'a> {
    async fn run(
        cfg: &'a Config,
        metrics: &'a Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let db = pg::connect(&cfg.source.url, "walhook capture", login).await?;
        let writer_db = pg::connect(&cfg.source.url, "walhook capture writer", login).await?;
        let ledger = Ledger::new(&cfg.ledger.schema);
        let mapping = objects::resolve_all(&db, &db, &ledger, cfg).await?;
        mapping.save(&ledger, &db).await?;
        for notice in &mapping.notices {
            tracing::warn!("{notice}");
        }
        let relids = mapping.relids();
        check_publication(&db, cfg, &relids).await?;
        let mut client = ReplicationClient::connect(replication_config(cfg)?).await?;
        client.wait_started().await?;
        tracing::info!(slot = %cfg.source.slot, "capture streaming from the replication slot");
        metrics.set_streaming(true);
        let writer = Writer::start(
            writer_db,
            ledger.clone(),
            cfg.source.slot.clone(),
            metrics.clone(),
        );
        let mut s = Session {
            cfg,
            metrics,
            ledger,
            db,
            writer,
            relations: Relations::new(mapping.objects),
            txn: None,
            pending: Pending::default(),
            acked: Progress::default(),
            relids,
        };
        let mut result = s.stream(&mut client, shutdown).await;
        if result.is_ok() {
            // Graceful stop: everything queued is committed, then acknowledged.
            result = s.writer.finish().await.map(|w| s.ack(&client, w.lsn));
        }
        if result.is_ok() {
            s.stop(&mut client).await;
        } else {
            client.abort();
        }
        result
    }

    async fn stream(
        &mut self,
        client: &mut ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut recheck = tokio::time::interval(PUBLICATION_RECHECK);
        recheck.tick().await;
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush().await?;
                    return Ok(());
                }
                _ = recheck.tick() => {
                    check_publication(&self.db, self.cfg, &self.relids).await?;
                    continue;
                }
                written = self.writer.committed() => {
                    self.ack(client, written?.lsn);
                    // The writer has room again: hand over what lingered.
                    if flush_at.is_none() {
                        self.try_flush()?;
                    }
                    continue;
                }
                _ = async { tokio::time::sleep_until(flush_at.unwrap()).await }, if flush_at.is_some() => {
                    // While the writer is busy, keep collecting: bigger
                    // batches, and the next commit report flushes them.
                    self.try_flush()?;
                    flush_at = None;
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
                    if self.pending.is_full() {
                        self.flush().await?;
                        flush_at = None;
                    }
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.txn = None;
                    self.pending.commit_end = Some(end_lsn.into());
                    self.metrics
                        .set_last_commit_unix_micros(commit_time_micros + PG_EPOCH_OFFSET_MICROS);
                    if self.pending.is_full() {
                        self.flush().await?;
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + BATCH_LINGER);
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.keepalive(client, wal_end.into())
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    /// Nothing open and nothing unwritten: everything up to `wal_end` is in
    /// the ledger (or was not ours), so the slot may advance and Postgres need
    /// not keep that WAL.
    fn keepalive(&mut self, client: &ReplicationClient, wal_end: Lsn) {
        if self.txn.is_none() && self.pending.is_empty() && self.writer.idle() {
            self.ack(client, wal_end);
        }
    }

    async fn handle(&mut self, msg: Message) -> Result<(), CaptureError> {
        let (relation_id, change) = match msg {
            Message::Relation(rel) => {
                return Ok(self.relations.on_relation(&self.db, self.cfg, rel).await?);
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
            let endpoints = self
                .cfg
                .endpoints
                .iter()
                .filter(|ep| ep.subscribes_to(&event.name))
                .map(|ep| ep.id.clone())
                .collect();
            self.pending.bytes += event.body.len();
            self.pending.events.push(NewEvent {
                commit_lsn: txn.commit_lsn,
                change_index: index,
                commit_time_unix_micros: txn.commit_time_unix_micros,
                endpoints,
                event,
            });
        }
        Ok(())
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
                .count_truncate(&self.db, mapped.len() as i64)
                .await?;
        }
        Ok(())
    }

    /// Hand what is pending to the writer, waiting for room. The slot is
    /// acknowledged when the writer reports the commit.
    async fn flush(&mut self) -> Result<(), CaptureError> {
        match self.pending.take() {
            Some(batch) => self.writer.send(batch).await,
            None => Ok(()),
        }
    }

    /// Hand what is pending to the writer if it has room now; otherwise keep it.
    fn try_flush(&mut self) -> Result<(), CaptureError> {
        if let Some(batch) = self.pending.take()
            && let Some(batch) = self.writer.try_send(batch)?
        {
            self.pending.put_back(batch);
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
        let deadline = tokio::time::Instant::now() + self.cfg.source.status_interval * 3;
        let m = client.metrics();
        while Lsn::from(m.last_applied_lsn()) < self.acked.get()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = client.shutdown().await {
            tracing::debug!(error = %e, "replication stream shutdown");
        }
    }
}
