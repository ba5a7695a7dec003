//! Backfill: the rows a table already holds, sent as events, consistent with
//! the stream.
//!
//! The process that reads the slot runs the backfills `walhook backfill`
//! queued in the ledger, a primary-key chunk at a time, with the watermark
//! technique of Debezium's incremental snapshots: it writes a low watermark
//! into the WAL (a logical message), reads the chunk, writes a high
//! watermark. Capture sees both in stream order: every row changed between
//! them is dropped from the chunk (the stream carries its newer state), and
//! the rest are handed over at the high watermark's place in the stream. So
//! a row is never delivered older after newer. A chunk counts as done once
//! the slot is acknowledged past its high watermark; a restart resumes after
//! the last done chunk (the chunk in progress is read again).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::objects::Resolved;
use super::relations::{RelState, Relations};
use crate::config::Config;
use crate::event::{ChangeContext, Event, TableMap, id, map_change};
use crate::ledger::Ledger;
use crate::ledger::backfills::Backfill;
use crate::metrics::Metrics;
use crate::pg::{self, Lsn, quote_ident};
use crate::pgoutput::{Datum, RowChange};

mod catalog;

use catalog::{catalog_relation, relation_type_names};

/// The logical message prefix of watermarks.
pub const WATERMARK_PREFIX: &str = "walhook-backfill";
/// Rows per chunk.
const CHUNK_ROWS: i64 = 500;
/// How often the runner looks for a backfill to run.
const POLL: Duration = Duration::from_secs(1);
/// How long a chunk may take from its high watermark to being acknowledged.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// A watermark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub job: i64,
    pub chunk: u64,
    pub high: bool,
}

/// The chunk between its watermarks, shared by the runner (which reads it)
/// and the capture session (which hands it over at the high watermark).
#[derive(Debug, Default)]
pub struct Window {
    chunk: Mutex<Option<Chunk>>,
}

#[derive(Debug)]
struct Chunk {
    job: i64,
    n: u64,
    relid: u32,
    /// The rows as events, without ids (those come from the high
    /// watermark's place in the stream).
    events: Vec<Event>,
    /// Record keys the stream changed since the low watermark (`None`:
    /// the low watermark has not been seen).
    seen: Option<HashSet<String>>,
    /// Where the high watermark's transaction ends, once handed over.
    handed_at: Option<Lsn>,
    /// Handed over at the high watermark, waiting for its commit.
    handed: bool,
    only: Option<String>,
}

impl Chunk {
    /// Chunk `n` of `job`, before its low watermark.
    fn new(job: &Backfill, n: u64, relid: u32) -> Chunk {
        Chunk {
            job: job.id,
            n,
            relid,
            events: Vec::new(),
            seen: None,
            handed_at: None,
            handed: false,
            only: job.endpoint.clone(),
        }
    }
}

impl Window {
    /// A watermark arrived in the stream. At the high one, the chunk's rows
    /// not changed meanwhile are returned (with `only`, the endpoint they
    /// are for), to be handed over in its transaction.
    pub fn watermark(&self, mark: Watermark) -> Option<(Vec<Event>, Option<String>)> {
        let mut guard = self.chunk.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = guard
            .as_mut()
            .filter(|c| c.job == mark.job && c.n == mark.chunk)?;
        if !mark.high {
            chunk.seen = Some(HashSet::new());
            return None;
        }
        // A high watermark without its low one (read in an earlier session)
        // is skipped: the chunk is read again.
        let seen = chunk.seen.take()?;
        chunk.handed = true;
        let events = std::mem::take(&mut chunk.events)
            .into_iter()
            .filter(|e| !seen.contains(&e.record_key))
            .collect();
        Some((events, chunk.only.clone()))
    }

    /// A row change of `relid` with `record_key` went by in the stream.
    pub fn changed(&self, relid: u32, record_key: &str) {
        let mut guard = self.chunk.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_mut().filter(|c| c.relid == relid)
            && let Some(seen) = c.seen.as_mut()
        {
            seen.insert(record_key.to_string());
        }
    }

    /// The transaction that carried a high watermark committed at `end`.
    pub fn committed(&self, end: Lsn) {
        let mut guard = self.chunk.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_mut().filter(|c| c.handed && c.handed_at.is_none()) {
            c.handed_at = Some(end);
        }
    }

    /// The chunk's rows, read between its watermarks.
    fn fill(&self, events: Vec<Event>) {
        if let Some(c) = self
            .chunk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            c.events = events;
        }
    }

    fn set(&self, chunk: Option<Chunk>) {
        *self.chunk.lock().unwrap_or_else(|e| e.into_inner()) = chunk;
    }

    fn handed_at(&self) -> Option<Lsn> {
        let guard = self.chunk.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().and_then(|c| c.handed_at)
    }
}

/// Gives a handed-over row event its id from the high watermark's place.
pub fn place(mut e: Event, ctx: &ChangeContext) -> Event {
    e.id = id::event_id(
        ctx.source_name,
        &e.slug,
        ctx.commit_time_unix_micros,
        &e.record_key,
        &e.name,
        ctx.commit_lsn.as_u64(),
        ctx.change_index,
    );
    e
}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
enum BackfillError {
    #[error("{0}")]
    Db(#[from] pg::DbError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("{0}")]
    Invalid(String),
}

impl From<tokio_postgres::Error> for BackfillError {
    fn from(e: tokio_postgres::Error) -> BackfillError {
        BackfillError::Db(pg::DbError(e))
    }
}

/// What the runner needs from the capture session.
pub struct Runner {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub objects: Vec<Resolved>,
    pub window: Arc<Window>,
}

impl Runner {
    /// Runs queued backfills one after another until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = self.next() => match r {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "backfill interrupted; it resumes"),
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Runs the next backfill, if any, to its end. Returns whether one ran.
    async fn next(&self) -> Result<bool, BackfillError> {
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let ledger = Ledger::new(&self.cfg.ledger.schema);
        let ledger_db = pg::connect(self.cfg.ledger_url(), "walhook backfill", login)
            .await
            .map_err(crate::ledger::LedgerError::from)?;
        let Some(job) = ledger.next_backfill(&ledger_db).await? else {
            return Ok(false);
        };
        let db = pg::connect(&self.cfg.source.url, "walhook backfill", login)
            .await
            .map_err(crate::ledger::LedgerError::from)?;
        // The text of every value as the replication session prints it.
        db.batch_execute(
            "SET DateStyle = ISO; SET IntervalStyle = iso_8601; SET TimeZone = UTC;
             SET extra_float_digits = 1; SET bytea_output = hex",
        )
        .await?;
        ledger.start_backfill(&ledger_db, job.id).await?;
        tracing::info!(backfill = job.id, object = %job.slug, "backfill running");
        match self.chunks(&db, &ledger, &ledger_db, &job).await {
            Ok(()) => Ok(true),
            Err(BackfillError::Invalid(why)) => {
                tracing::error!(backfill = job.id, error = %why, "backfill failed");
                ledger
                    .finish_backfill(&ledger_db, job.id, "failed", Some(&why))
                    .await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn chunks(
        &self,
        db: &Client,
        ledger: &Ledger,
        ledger_db: &Client,
        job: &Backfill,
    ) -> Result<(), BackfillError> {
        let table = Table::load(db, &self.cfg, &self.objects, job).await?;
        let mut last = job.last_key.clone();
        let mut pace = Pace::new(job.rate);
        for n in 0.. {
            if !ledger.backfill_active(ledger_db, job.id).await? {
                tracing::info!(backfill = job.id, "backfill cancelled");
                self.window.set(None);
                return Ok(());
            }
            // The chunk exists before its low watermark is written, so the
            // stream cannot pass the watermark without opening its window.
            self.window.set(Some(Chunk::new(job, n, table.relid)));
            emit(
                db,
                Watermark {
                    job: job.id,
                    chunk: n,
                    high: false,
                },
            )
            .await?;
            let rows = table.read(db, last.as_deref(), pace.chunk_rows()).await?;
            let Some(next_last) = rows.last().map(|r| r.key.clone()) else {
                ledger
                    .finish_backfill(ledger_db, job.id, "done", None)
                    .await?;
                tracing::info!(backfill = job.id, "backfill done");
                self.window.set(None);
                return Ok(());
            };
            let count = rows.len() as i64;
            self.window.fill(
                rows.into_iter()
                    .map(|r| rename(r.event, job.as_create))
                    .collect(),
            );
            emit(
                db,
                Watermark {
                    job: job.id,
                    chunk: n,
                    high: true,
                },
            )
            .await?;
            if !self.wait_resolved().await {
                // The job is picked up again and resumes at this chunk.
                tracing::warn!(
                    backfill = job.id,
                    "a backfill chunk was not resolved in time; it is read again"
                );
                return Ok(());
            }
            if !ledger
                .backfill_progress(ledger_db, job.id, &next_last, count)
                .await?
            {
                continue; // cancelled: the next turn says so
            }
            last = Some(next_last);
            pace.sent(count).await;
        }
        Ok(())
    }

    /// Until the slot is acknowledged past the chunk's high watermark;
    /// false when that did not happen within `HANDOVER_TIMEOUT`.
    async fn wait_resolved(&self) -> bool {
        let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Some(at) = self.window.handed_at()
                && self.metrics.acked_lsn() >= at
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// `--rate`: rows per second at most, as a token bucket without a burst:
/// chunks hold about a second's rows, and the next one starts once the rows
/// sent so far are due at the rate.
struct Pace {
    rate: Option<f64>,
    since: tokio::time::Instant,
    rows: f64,
}

impl Pace {
    fn new(rate: Option<f64>) -> Pace {
        Pace {
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            since: tokio::time::Instant::now(),
            rows: 0.0,
        }
    }

    /// Rows in the next chunk.
    fn chunk_rows(&self) -> i64 {
        match self.rate {
            // Saturating float-to-int: a huge rate is simply CHUNK_ROWS.
            Some(r) => (r.ceil() as i64).clamp(1, CHUNK_ROWS),
            None => CHUNK_ROWS,
        }
    }

    /// `n` more rows were sent: waits until they are due.
    async fn sent(&mut self, n: i64) {
        let Some(rate) = self.rate else { return };
        self.rows += n as f64;
        let due = self.since + Duration::from_secs_f64(self.rows / rate);
        tokio::time::sleep_until(due).await;
    }
}

/// Writes a watermark into the WAL, in a transaction of its own.
async fn emit(db: &Client, mark: Watermark) -> Result<(), BackfillError> {
    let text = serde_json::to_string(&mark).unwrap_or_default();
    db.execute(
        "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
        &[&WATERMARK_PREFIX, &text],
    )
    .await?;
    Ok(())
}

/// One row read, as its event (no id yet) and its key values.
struct Row {
    event: Event,
    key: Vec<String>,
}

/// The table a backfill reads, and how its rows become events.
struct Table {
    relid: u32,
    map: TableMap,
    /// `SELECT col::text, ... FROM table` without the condition.
    select: String,
    /// Key columns, quoted, with their types, for the chunk condition.
    key: Vec<(String, String)>,
    where_sql: Option<String>,
    name: String,
}

impl Table {
    /// The mapped table of `job`'s object, as the catalog describes it now.
    async fn load(
        db: &Client,
        cfg: &Config,
        objects: &[Resolved],
        job: &Backfill,
    ) -> Result<Table, BackfillError> {
        let object = objects
            .iter()
            .find(|o| o.slug == job.slug)
            .ok_or_else(|| BackfillError::Invalid(format!("no mapped object `{}`", job.slug)))?;
        if let Some(ep) = &job.endpoint
            && cfg.endpoint(ep).is_none()
        {
            return Err(BackfillError::Invalid(format!("no endpoint `{ep}`")));
        }
        let (relation, types) = catalog_relation(db, object.relid).await?;
        let name = format!(
            "{}.{}",
            quote_ident(&relation.namespace),
            quote_ident(&relation.name)
        );
        let mut rels = Relations::new(vec![object.clone()]);
        for t in types {
            rels.on_type(t);
        }
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let type_names: Vec<String> = relation_type_names(db, &relation).await?;
        rels.on_relation(db, cfg, relation).await?;
        let Some(RelState::Mapped(map)) = rels.get(object.relid) else {
            return Err(BackfillError::Invalid(format!(
                "`{}` is not mapped",
                job.slug
            )));
        };
        let map = (**map).clone();
        let key_columns = map.key_columns.clone();
        if let Some(why) = &map.key_problem {
            return Err(BackfillError::Invalid(why.clone()));
        }
        // Columns are qualified with the table's alias `t`: a bare name in
        // ORDER BY would sort by the `::text` output column instead.
        let key = key_columns
            .iter()
            .map(|&i| {
                (
                    format!("t.{}", quote_ident(&columns[i])),
                    type_names[i].clone(),
                )
            })
            .collect();
        let select = format!(
            "SELECT {} FROM {name} t",
            columns
                .iter()
                .map(|c| format!("t.{}::text", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let table = Table {
            relid: object.relid,
            map,
            select,
            key,
            where_sql: job.where_sql.clone(),
            name,
        };
        table.check_where(db).await?;
        Ok(table)
    }

    async fn check_where(&self, db: &Client) -> Result<(), BackfillError> {
        let Some(w) = &self.where_sql else {
            return Ok(());
        };
        db.execute(
            &format!("SELECT 1 FROM {} t WHERE ({w}) LIMIT 0", self.name),
            &[],
        )
        .await
        .map_err(|e| BackfillError::Invalid(format!("--where: {}", pg::describe(&e))))?;
        Ok(())
    }

    /// The next chunk: at most `limit` rows with a key after `last`, in key
    /// order.
    async fn read(
        &self,
        db: &Client,
        last: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<Row>, BackfillError> {
        let mut conditions = Vec::new();
        if last.is_some() {
            let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
            let params: Vec<String> = self
                .key
                .iter()
                .enumerate()
                .map(|(i, (_, t))| format!("${}::text::{t}", i + 1))
                .collect();
            conditions.push(format!("({}) > ({})", cols.join(", "), params.join(", ")));
        }
        if let Some(w) = &self.where_sql {
            conditions.push(format!("({w})"));
        }
        let order: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        let sql = format!(
            "{}{} ORDER BY {} LIMIT {limit}",
            self.select,
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
            order.join(", ")
        );
        let last = last.unwrap_or_default();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = last
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        // Read only: `--where` is the operator's SQL, and reading is all
        // it may do. (On an error the job's connection is dropped.)
        db.batch_execute("BEGIN READ ONLY").await?;
        let rows = db.query(&sql, &params).await?;
        db.batch_execute("COMMIT").await?;
        rows.iter().map(|r| self.row(r)).collect()
    }

    fn row(&self, r: &tokio_postgres::Row) -> Result<Row, BackfillError> {
        let values: Vec<Option<String>> = (0..r.len()).map(|i| r.get(i)).collect();
        let key = self
            .map
            .key_columns
            .iter()
            .map(|&i| values[i].clone().unwrap_or_default())
            .collect();
        let new = values
            .into_iter()
            .map(|v| match v {
                Some(text) => Datum::Text(bytes::Bytes::from(text)),
                None => Datum::Null,
            })
            .collect();
        let ctx = ChangeContext {
            source_name: "",
            commit_lsn: Lsn::ZERO,
            commit_time_unix_micros: 0,
            change_index: 0,
        };
        let event = map_change(&self.map, RowChange::Insert { new }, &ctx)
            .map_err(|e| BackfillError::Invalid(e.to_string()))?
            .ok_or_else(|| BackfillError::Invalid("a row made no event".into()))?;
        Ok(Row { event, key })
    }
}

/// A backfill row's event name: `{slug}.backfill`, or `{slug}.create` with
/// `--as create`.
pub fn rename(mut e: Event, as_create: bool) -> Event {
    if !as_create {
        e.name = format!("{}.backfill", e.slug);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_sizes_chunks_and_spaces_them() {
        assert_eq!(Pace::new(None).chunk_rows(), CHUNK_ROWS);
        assert_eq!(Pace::new(Some(0.0)).chunk_rows(), CHUNK_ROWS);
        assert_eq!(Pace::new(Some(0.5)).chunk_rows(), 1);
        assert_eq!(Pace::new(Some(20.0)).chunk_rows(), 20);
        assert_eq!(Pace::new(Some(1e9)).chunk_rows(), CHUNK_ROWS);
        let mut pace = Pace::new(Some(1000.0));
        let t0 = tokio::time::Instant::now();
        for _ in 0..3 {
            pace.sent(100).await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
