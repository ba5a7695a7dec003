//! The capture loop: reads the slot, maps changes to events and writes them to
//! the ledger. The slot is acknowledged only up to the end of a transaction
//! whose events the ledger has committed, so a crash at any moment replays
//! from there and the deterministic ids turn the replay into no-ops.
//!
//! Decoding and writing overlap: a writer task commits batches in order on
//! its own connection while the session decodes the next one. It reports
//! each commit back, and only then is the slot acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ObjectConfig, Secret};
use crate::event::{ChangeContext, EventError, TableMap, map_change};
use crate::ledger::{Appended, Ledger, LedgerError, NewEvent};
use crate::metrics::Metrics;
use crate::pg;
use crate::pgoutput::{self, DecodeError, Message, Relation};

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

/// Batches queued for the writer beyond the one it is writing. With the one
/// being filled, at most `WRITE_QUEUE + 2` batches (each within `MAX_BATCH`
/// events and `MAX_BATCH_BYTES`) are in memory.
const WRITE_QUEUE: usize = 1;

/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("replication stream: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("catalog lookup: {0}")]
    Catalog(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("the database URL is not valid: {0}")]
    Url(String),
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("replication stream ended")]
    Ended,
    #[error("the ledger writer stopped")]
    WriterGone,
}

impl CaptureError {
    /// Another process holds the slot: we are the standby.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, CaptureError::Replication(e) if e.to_string().contains("55006"))
    }

    /// What the operator should do about it, when waiting will not help.
    pub fn hint(&self) -> Option<&'static str> {
        let text = self.to_string();
        if text.contains("42704") || text.contains("does not exist") {
            Some("the replication slot or publication is missing: run `walhook setup`")
        } else if text.contains("28P01") || text.contains("28000") {
            Some("authentication failed: check the database URL and the role's password")
        } else if text.contains("42501") {
            Some(
                "permission denied: the role needs the REPLICATION attribute (see sql/00-role.sql)",
            )
        } else {
            None
        }
    }
}

/// Build the replication connection settings from the database URL.
pub fn replication_config(url: &Secret, cfg: &Config) -> Result<ReplicationConfig, CaptureError> {
    let pg: tokio_postgres::Config = url
        .expose()
        .parse()
        .map_err(|e: tokio_postgres::Error| CaptureError::Url(e.to_string()))?;
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let dbname = pg.get_dbname().unwrap_or(&user).to_string();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    // Names inside publication_names are split like identifiers: quote ours so
    // that a mixed-case name is not folded to lower case.
    let publication = format!("\"{}\"", cfg.source.publication.replace('"', "\"\""));
    let slot = cfg.source.slot.clone();
    let mut rc = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.display().to_string(),
            port,
            user,
            password,
            dbname,
            slot,
            publication,
        ),
        host => {
            let host = match host {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "localhost".to_string(),
            };
            ReplicationConfig::new(host, user, password, dbname, slot, publication).with_port(port)
        }
    };
    let tls = match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Require => TlsConfig::require(),
        _ => TlsConfig::disabled(),
    };
    rc = rc
        .with_tls(tls)
        // The slot's confirmed position is the source of truth: start there.
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(cfg.source.status_interval)
        .with_wakeup_interval(Duration::from_secs(5))
        .with_buffer_size(STREAM_BUFFER)
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("walhook capture {}", cfg.source.name));
    Ok(rc)
}

/// Runs capture until `shutdown`: one session after another, with backoff, for ever.
pub async fn run(cfg: Arc<Config>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    let mut standing_by = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = Session::run(&cfg, &metrics, &shutdown).await;
        metrics.set_streaming(false);
        match result {
            Ok(()) => return,
            Err(e) if e.is_slot_in_use() => {
                if !standing_by {
                    tracing::info!(
                        slot = %cfg.source.slot,
                        "the replication slot is in use by another walhook process; standing by to take over"
                    );
                    standing_by = true;
                }
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                standing_by = false;
                match e.hint() {
                    Some(hint) => tracing::error!(error = %e, hint, "capture stopped; retrying"),
                    None => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "capture session ended; reconnecting")
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        if !standing_by {
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
    }
}

enum RelState {
    Mapped(Box<TableMap>),
    Unmapped,
}

struct OpenTxn {
    commit_lsn: u64,
    commit_time_unix_micros: i64,
    change_index: u32,
}

/// Events for one ledger transaction, and the position to record with them.
struct Batch {
    events: Vec<NewEvent>,
    /// End LSN of the last complete transaction in the batch, if any.
    progress: Option<u64>,
    /// Body bytes of `events`.
    bytes: usize,
}

/// What the writer has committed so far.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    /// Batches committed, counted from the start of the session.
    batches: u64,
    /// The highest progress position among them (0 if none).
    lsn: u64,
}

/// The ledger writer: appends batches in the order they are sent, one
/// transaction each, and publishes what it has committed.
async fn write_batches(
    mut db: Client,
    ledger: Ledger,
    slot: String,
    metrics: Arc<Metrics>,
    mut batches: mpsc::Receiver<Batch>,
    written: watch::Sender<Written>,
) -> Result<(), LedgerError> {
    let mut done = Written::default();
    while let Some(batch) = batches.recv().await {
        let progress = batch.progress.map(|lsn| (slot.as_str(), lsn));
        let Appended { events, .. } = ledger.append(&mut db, &batch.events, progress).await?;
        for e in &batch.events {
            metrics.event_captured(&e.event.name);
        }
        if events > 0 {
            metrics.notify_new_deliveries();
        }
        done.batches += 1;
        if let Some(lsn) = batch.progress {
            done.lsn = done.lsn.max(lsn);
        }
        written.send_replace(done);
    }
    Ok(())
}

/// The session's end of the writer.
struct Writer {
    /// `None` once closed for a graceful stop.
    batches: Option<mpsc::Sender<Batch>>,
    written: watch::Receiver<Written>,
    task: tokio::task::JoinHandle<Result<(), LedgerError>>,
    sent: u64,
}

impl Writer {
    fn start(db: Client, ledger: Ledger, slot: String, metrics: Arc<Metrics>) -> Writer {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (written_tx, written) = watch::channel(Written::default());
        let task = tokio::spawn(write_batches(db, ledger, slot, metrics, rx, written_tx));
        Writer {
            batches: Some(tx),
            written,
            task,
            sent: 0,
        }
    }

    /// Every batch sent so far is committed.
    fn idle(&self) -> bool {
        self.written.borrow().batches == self.sent
    }

    /// Queue a batch, waiting while the queue is full.
    async fn send(&mut self, batch: Batch) -> Result<(), CaptureError> {
        let tx = self.batches.as_ref().ok_or(CaptureError::WriterGone)?;
        if tx.send(batch).await.is_err() {
            return Err(self.failure().await);
        }
        self.sent += 1;
        Ok(())
    }

    /// Queue a batch only if there is room now; gives it back otherwise.
    fn try_send(&mut self, batch: Batch) -> Result<Option<Batch>, CaptureError> {
        let tx = self.batches.as_ref().ok_or(CaptureError::WriterGone)?;
        match tx.try_send(batch) {
            Ok(()) => {
                self.sent += 1;
                Ok(None)
            }
            Err(mpsc::error::TrySendError::Full(batch)) => Ok(Some(batch)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(CaptureError::WriterGone),
        }
    }

    /// Resolves when the writer has committed another batch (or failed).
    async fn committed(&mut self) -> Result<Written, CaptureError> {
        if self.written.changed().await.is_err() {
            return Err(self.failure().await);
        }
        Ok(*self.written.borrow_and_update())
    }

    /// Close the queue and wait until everything sent is committed.
    async fn finish(&mut self) -> Result<Written, CaptureError> {
        self.batches = None;
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(*self.written.borrow()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(CaptureError::WriterGone),
        }
    }

    /// Why the writer ended early.
    async fn failure(&mut self) -> CaptureError {
        match (&mut self.task).await {
            Ok(Err(e)) => e.into(),
            _ => CaptureError::WriterGone,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A session that ends on an error must not leave a writer behind
        // that commits (harmlessly, but confusingly) after a new session started.
        self.task.abort();
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
    relations: HashMap<u32, RelState>,
    type_names: HashMap<u32, String>,
    /// Domain oid -> base type oid (0: not a domain).
    domain_base: HashMap<u32, u32>,
    txn: Option<OpenTxn>,
    pending: Vec<NewEvent>,
    pending_bytes: usize,
    /// End LSN of the last complete transaction whose events are in `pending`.
    pending_commit_end: Option<u64>,
    acked: u64,
}

impl<'a> Session<'a> {
    async fn run(
        cfg: &'a Config,
        metrics: &'a Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let db = pg::connect(&cfg.source.url, "walhook capture", login)
            .await
            .map_err(LedgerError::from)?;
        let writer_db = pg::connect(&cfg.source.url, "walhook capture writer", login)
            .await
            .map_err(LedgerError::from)?;
        let ledger = Ledger::new(&cfg.ledger.schema);
        let mut client =
            ReplicationClient::connect(replication_config(&cfg.source.url, cfg)?).await?;
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
            relations: HashMap::new(),
            type_names: HashMap::new(),
            domain_base: HashMap::new(),
            txn: None,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_commit_end: None,
            acked: 0,
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
        loop {
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush().await?;
                    return Ok(());
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
                ev = client.recv() => ev?,
            };
            let Some(ev) = ev else {
                return Err(CaptureError::Ended);
            };
            match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.txn = Some(OpenTxn {
                        commit_lsn: final_lsn.as_u64(),
                        commit_time_unix_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                        change_index: 0,
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    self.handle(pgoutput::decode(&data)?).await?;
                    if self.batch_full() {
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
                    self.pending_commit_end = Some(end_lsn.as_u64());
                    self.metrics
                        .set_last_commit_unix_micros(commit_time_micros + PG_EPOCH_OFFSET_MICROS);
                    if self.batch_full() {
                        self.flush().await?;
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + BATCH_LINGER);
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Nothing open and nothing unwritten: everything up to
                    // wal_end is in the ledger (or was not ours), so the slot may
                    // advance and Postgres need not keep that WAL.
                    if self.txn.is_none()
                        && self.pending.is_empty()
                        && self.pending_commit_end.is_none()
                        && self.writer.idle()
                        && wal_end.as_u64() > self.acked
                    {
                        self.ack(client, wal_end.as_u64());
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    async fn handle(&mut self, msg: Message) -> Result<(), CaptureError> {
        let change = match msg {
            Message::Relation(rel) => {
                let state = self.relation_state(rel).await?;
                let id = match &state {
                    RelState::Mapped(m) => m.relation.id,
                    RelState::Unmapped => 0,
                };
                if id != 0 {
                    self.relations.insert(id, state);
                }
                return Ok(());
            }
            Message::Type(t) => {
                self.type_names.insert(t.id, t.name);
                return Ok(());
            }
            Message::Truncate { relation_ids, .. } => {
                let mapped: Vec<String> = relation_ids
                    .iter()
                    .filter_map(|id| match self.relations.get(id) {
                        Some(RelState::Mapped(m)) => Some(m.slug.clone()),
                        _ => None,
                    })
                    .collect();
                if !mapped.is_empty() {
                    tracing::warn!(objects = ?mapped, "TRUNCATE on mapped table(s): no row events are emitted");
                    self.metrics.add_truncates(mapped.len() as u64);
                    self.ledger
                        .count_truncate(&self.db, mapped.len() as i64)
                        .await?;
                }
                return Ok(());
            }
            other => match other.into_row_change() {
                Ok(change) => change,
                // Origin and anything else carry no row.
                Err(_) => return Ok(()),
            },
        };
        let (relation_id, change) = change;
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        let index = txn.change_index;
        txn.change_index += 1;
        let map = match self.relations.get(&relation_id) {
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
            self.pending_bytes += event.body.len();
            self.pending.push(NewEvent {
                commit_lsn: txn.commit_lsn,
                change_index: index,
                commit_time_unix_micros: txn.commit_time_unix_micros,
                endpoints,
                event,
            });
        }
        Ok(())
    }

    /// A Relation message arrived (first use, or after DDL): rebuild the map.
    async fn relation_state(&mut self, rel: Relation) -> Result<RelState, CaptureError> {
        let Some(object) = self.object_for(&rel) else {
            // Changes of tables we do not map still count for change indexes,
            // but we keep no state for them.
            self.relations.insert(rel.id, RelState::Unmapped);
            return Ok(RelState::Unmapped);
        };
        let object = object.clone();
        let key_columns = self.primary_key_columns(&rel).await?;
        let mut rel = rel;
        self.resolve_domains(&mut rel).await?;
        let type_names = &self.type_names;
        let map = TableMap::new(
            rel,
            object.slug.clone(),
            &object.exclude_columns,
            key_columns,
            &|oid| type_names.get(&oid).cloned(),
        );
        Ok(RelState::Mapped(Box::new(map)))
    }

    /// pgoutput sends a domain column with the domain's oid: map it as its
    /// base type (an integer domain stays a number). Only user-defined oids
    /// (>= 16384) can be domains; the answer is cached for the session.
    async fn resolve_domains(&mut self, rel: &mut Relation) -> Result<(), CaptureError> {
        const FIRST_NORMAL_OID: u32 = 16384;
        for col in rel.columns.iter_mut() {
            let mut oid = col.type_oid;
            // Domains over domains: follow a few levels.
            for _ in 0..8 {
                if oid < FIRST_NORMAL_OID {
                    break;
                }
                let base = match self.domain_base.get(&oid) {
                    Some(b) => *b,
                    None => {
                        let row = self
                            .db
                            .query_opt(
                                "SELECT CASE WHEN typtype = 'd' THEN typbasetype ELSE 0::oid END FROM pg_type WHERE oid = $1",
                                &[&oid],
                            )
                            .await?;
                        let base: u32 = row.map(|r| r.get(0)).unwrap_or(0);
                        self.domain_base.insert(oid, base);
                        base
                    }
                };
                if base == 0 {
                    break;
                }
                oid = base;
            }
            col.type_oid = oid;
        }
        Ok(())
    }

    fn object_for(&self, rel: &Relation) -> Option<&ObjectConfig> {
        self.cfg
            .objects
            .iter()
            .find(|o| o.schema == rel.namespace && o.table == rel.name)
    }

    /// Primary-key columns as indexes into the relation's columns. With
    /// REPLICA IDENTITY FULL pgoutput flags every column as key, so the
    /// catalog is asked instead; the flags are the fallback.
    async fn primary_key_columns(&self, rel: &Relation) -> Result<Vec<usize>, CaptureError> {
        let row = self
            .db
            .query_one(
                "SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = $1 AND i.indisprimary",
                &[&rel.id],
            )
            .await?;
        let names: Vec<String> = row.get(0);
        let by_name: Vec<usize> = names
            .iter()
            .filter_map(|n| rel.columns.iter().position(|c| &c.name == n))
            .collect();
        if !by_name.is_empty() && by_name.len() == names.len() {
            return Ok(by_name);
        }
        tracing::warn!(
            table = %format!("{}.{}", rel.namespace, rel.name),
            "no primary key found; using the replica identity columns as the record key"
        );
        Ok(rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.flags & 1 == 1)
            .map(|(i, _)| i)
            .collect())
    }

    fn batch_full(&self) -> bool {
        self.pending.len() >= MAX_BATCH || self.pending_bytes >= MAX_BATCH_BYTES
    }

    /// What is pending, as a batch for the writer (`None` if nothing is).
    fn take_batch(&mut self) -> Option<Batch> {
        if self.pending.is_empty() && self.pending_commit_end.is_none() {
            return None;
        }
        Some(Batch {
            events: std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_BATCH)),
            progress: self.pending_commit_end.take(),
            bytes: std::mem::take(&mut self.pending_bytes),
        })
    }

    /// Hand what is pending to the writer, waiting for room. The slot is
    /// acknowledged when the writer reports the commit.
    async fn flush(&mut self) -> Result<(), CaptureError> {
        match self.take_batch() {
            Some(batch) => self.writer.send(batch).await,
            None => Ok(()),
        }
    }

    /// Hand what is pending to the writer if it has room now; otherwise keep it.
    fn try_flush(&mut self) -> Result<(), CaptureError> {
        let Some(batch) = self.take_batch() else {
            return Ok(());
        };
        if let Some(batch) = self.writer.try_send(batch)? {
            self.pending = batch.events;
            self.pending_commit_end = batch.progress;
            self.pending_bytes = batch.bytes;
        }
        Ok(())
    }

    fn ack(&mut self, client: &ReplicationClient, lsn: u64) {
        if lsn > self.acked {
            self.acked = lsn;
            client.update_applied_lsn(Lsn::from_u64(lsn));
            self.metrics.set_acked_lsn(lsn);
        }
    }

    /// Graceful stop: the last acknowledgement reaches the server before the
    /// stream closes (the crate sends no final status update by itself).
    async fn stop(&mut self, client: &mut ReplicationClient) {
        let deadline = tokio::time::Instant::now() + self.cfg.source.status_interval * 3;
        let m = client.metrics();
        while m.last_applied_lsn().as_u64() < self.acked && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = client.shutdown().await {
            tracing::debug!(error = %e, "replication stream shutdown");
        }
    }
}
