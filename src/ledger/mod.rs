//! The ledger: walhook's durable state in Postgres. Events, the deliveries
//! they fan out to, every attempt, and the replication progress live here; the
//! deliveries table is also the dispatch queue.
//!
//! - [`queue`]: claiming, recording and re-queueing deliveries, with every
//!   guard (lease, state) inside the SQL statement that writes.
//! - [`history`]: what operators read (status, deliveries, attempts).
//! - [`schema`]: the DDL; [`notify`]: waking dispatchers.
//! - [`prune`]: retention (what old history goes) and the ledger's size.
//!
//! Promise: `append` writes a batch of events, their deliveries and (at a
//! transaction boundary) the new replication position in ONE database
//! transaction. Events are keyed by their deterministic id, so replaying the
//! same WAL inserts nothing twice.

pub mod backfills;
pub mod history;
pub mod notices;
pub mod notify;
pub mod objects;
pub mod open;
pub mod prune;
pub mod queue;
pub mod schema;
pub mod spill;

pub use notify::notify_channel;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, GenericClient};

use crate::event::Event;
use crate::pg::{ConnectError, DbError, Lsn, quote_ident, system_time_from_unix_micros};

/// Errors at the ledger boundary.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the ledger schema {schema} does not exist: run `walhook setup` first")]
    NotSetUp { schema: String },
    #[error(
        "the ledger schema {schema} was made by an older walhook: run `walhook setup` to bring it up to date (it only adds what is missing)"
    )]
    Outdated { schema: String },
    #[error("ledger query failed: {0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(e: tokio_postgres::Error) -> LedgerError {
        LedgerError::Db(DbError(e))
    }
}

impl LedgerError {
    /// The SQLSTATE when the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            LedgerError::Db(e) => e.sqlstate(),
            LedgerError::Connect(e) => e.sqlstate(),
            LedgerError::NotSetUp { .. } | LedgerError::Outdated { .. } => None,
        }
    }
}

/// One event ready to be written, with the endpoints it fans out to.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub commit_lsn: Lsn,
    pub change_index: u32,
    pub commit_time_unix_micros: i64,
    /// Endpoint ids subscribed to this event.
    pub endpoints: Vec<String>,
}

/// How many rows one `append` wrote (replays write 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub events: u64,
    pub deliveries: u64,
}

/// The ledger's SQL, bound to one schema; statements are built once.
#[derive(Debug, Clone)]
pub struct Ledger {
    schema: String,
    append_sql: String,
    progress_sql: String,
}

impl Ledger {
    pub fn new(schema: &str) -> Ledger {
        let s = quote_ident(schema);
        let append_sql = format!(
            "WITH ev AS (
               INSERT INTO {s}.events
                 (event_id, name, slug, record_key, commit_lsn, change_index, commit_time, body)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                    $5::pg_lsn[], $6::int4[], $7::timestamptz[], $8::text[])
               ON CONFLICT (event_id) DO NOTHING
               RETURNING seq, event_id, slug, record_key, commit_time, commit_lsn, change_index
             ), dl AS (
               INSERT INTO {s}.deliveries
                 (event_seq, endpoint_id, record, cycle_started_at, commit_lsn, change_index)
               SELECT ev.seq, d.endpoint_id, ev.slug || ':' || ev.record_key, ev.commit_time,
                      ev.commit_lsn, ev.change_index
               FROM ev JOIN unnest($9::text[], $10::text[]) AS d(event_id, endpoint_id)
                 USING (event_id)
               RETURNING 1
             )
             SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM dl)"
        );
        let progress_sql = format!(
            "INSERT INTO {s}.progress (slot, lsn) VALUES ($1, $2)
             ON CONFLICT (slot) DO UPDATE
               SET lsn = GREATEST({s}.progress.lsn, EXCLUDED.lsn), updated_at = now()"
        );
        Ledger {
            schema: schema.to_string(),
            append_sql,
            progress_sql,
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The quoted schema, for building queries elsewhere in the crate.
    pub fn q(&self) -> String {
        quote_ident(&self.schema)
    }

    /// Fails with `NotSetUp` when `walhook setup` has not created the schema.
    pub async fn ensure_exists(&self, client: &Client) -> Result<(), LedgerError> {
        let row = client
            .query_one(
                "SELECT to_regclass(format('%I.events', $1::text)) IS NOT NULL,
                        to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
                &[&self.schema, &schema::NEWEST_TABLE],
            )
            .await?;
        match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
            (true, true) => Ok(()),
            (true, false) => Err(LedgerError::Outdated {
                schema: self.schema.clone(),
            }),
            _ => Err(LedgerError::NotSetUp {
                schema: self.schema.clone(),
            }),
        }
    }

    /// Write events (with their deliveries) and, when `progress` is given, the
    /// replication position of the last complete transaction, atomically.
    /// `notify` wakes dispatchers in other processes when anything was written.
    pub async fn append(
        &self,
        client: &mut Client,
        events: &[NewEvent],
        progress: Option<(&str, Lsn)>,
    ) -> Result<Appended, LedgerError> {
        let tx = client.transaction().await?;
        let out = self.insert_events(&tx, events).await?;
        if let Some((slot, lsn)) = progress {
            tx.execute(&self.progress_sql, &[&slot, &PgLsn::from(lsn)])
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Write one event with its deliveries (one statement, so atomic).
    pub async fn append_one(
        &self,
        client: &Client,
        event: &NewEvent,
    ) -> Result<Appended, LedgerError> {
        self.insert_events(client, std::slice::from_ref(event))
            .await
    }

    /// The events and their deliveries, and a NOTIFY when any delivery was
    /// added (sent at commit).
    async fn insert_events(
        &self,
        client: &impl GenericClient,
        events: &[NewEvent],
    ) -> Result<Appended, LedgerError> {
        if events.is_empty() {
            return Ok(Appended::default());
        }
        let cols = EventColumns::new(events);
        let row = client
            .query_one(
                &self.append_sql,
                &[
                    &cols.ids,
                    &cols.names,
                    &cols.slugs,
                    &cols.keys,
                    &cols.lsns,
                    &cols.idxs,
                    &cols.times,
                    &cols.bodies,
                    &cols.d_ev,
                    &cols.d_ep,
                ],
            )
            .await?;
        let out = Appended {
            events: row.get::<_, i64>(0) as u64,
            deliveries: row.get::<_, i64>(1) as u64,
        };
        if out.deliveries > 0 {
            client
                .execute("SELECT pg_notify($1, '')", &[&notify_channel(&self.schema)])
                .await?;
        }
        Ok(out)
    }

    /// The last position whose events the ledger holds, if any.
    pub async fn progress(&self, client: &Client, slot: &str) -> Result<Option<Lsn>, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!("SELECT lsn FROM {s}.progress WHERE slot = $1"),
                &[&slot],
            )
            .await?;
        Ok(row.map(|r| Lsn::from(r.get::<_, PgLsn>(0))))
    }

    /// Count a TRUNCATE of a mapped table (TRUNCATE emits no row events).
    pub async fn count_truncate(&self, client: &Client, n: i64) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.counters (name, value) VALUES ('truncates', $1)
                     ON CONFLICT (name) DO UPDATE SET value = {s}.counters.value + EXCLUDED.value"
                ),
                &[&n],
            )
            .await?;
        Ok(())
    }
}

/// Events as the column arrays of the append statement.
struct EventColumns<'a> {
    ids: Vec<&'a str>,
    names: Vec<&'a str>,
    slugs: Vec<&'a str>,
    keys: Vec<&'a str>,
    lsns: Vec<PgLsn>,
    idxs: Vec<i32>,
    times: Vec<std::time::SystemTime>,
    bodies: Vec<&'a str>,
    /// (event id, endpoint id) of every delivery.
    d_ev: Vec<&'a str>,
    d_ep: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn new(events: &'a [NewEvent]) -> EventColumns<'a> {
        let mut c = EventColumns {
            ids: Vec::with_capacity(events.len()),
            names: Vec::with_capacity(events.len()),
            slugs: Vec::with_capacity(events.len()),
            keys: Vec::with_capacity(events.len()),
            lsns: Vec::with_capacity(events.len()),
            idxs: Vec::with_capacity(events.len()),
            times: Vec::with_capacity(events.len()),
            bodies: Vec::with_capacity(events.len()),
            d_ev: Vec::new(),
            d_ep: Vec::new(),
        };
        for e in events {
            c.ids.push(&e.event.id);
            c.names.push(&e.event.name);
            c.slugs.push(&e.event.slug);
            c.keys.push(&e.event.record_key);
            c.lsns.push(PgLsn::from(e.commit_lsn));
            c.idxs.push(e.change_index as i32);
            c.times
                .push(system_time_from_unix_micros(e.commit_time_unix_micros));
            c.bodies.push(&e.event.body);
            for ep in &e.endpoints {
                c.d_ev.push(&e.event.id);
                c.d_ep.push(ep);
            }
        }
        c
    }
}
