//! What the stream hands to the retry ledger, and what it records of the
//! deliveries it made itself.
//!
//! - [`Ledger::spill`]: deliveries that cannot be made at once (a failed
//!   first attempt, no answer within `spill_after`, a full window, a
//!   disabled or troubled endpoint, a record with earlier deliveries waiting)
//!   become ledger deliveries, with their events, in one transaction. A
//!   replay spills nothing twice: events are keyed by id, deliveries by
//!   (event, endpoint).
//! - [`Ledger::delivered`]: first attempts that succeeded, one narrow row
//!   each in `delivered`, written in batches (one statement).

use std::time::{Duration, SystemTime};

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, GenericClient};

use super::queue::{AttemptRow, NextState};
use super::{Ledger, LedgerError, notify_channel};
use crate::event::stream::Captured;
use crate::pg::{system_time_from_unix_micros, system_time_from_unix_ms};

/// How a delivery enters the ledger.
#[derive(Debug, Clone)]
pub enum SpillState {
    /// Not attempted yet (`pending`).
    Pending,
    /// Its first attempt is under way in this process: leased to `owner`,
    /// which records the attempt when it ends.
    Leased,
    /// Its first attempt failed: `retrying` (or `disabled`) with that attempt.
    Failed(Box<AttemptRow>),
}

/// One delivery to spill.
#[derive(Debug, Clone)]
pub struct Spilled<'a> {
    pub captured: &'a Captured,
    /// The event's body (the stream keeps it apart from `captured`).
    pub body: &'a str,
    pub endpoint: &'a str,
    /// `slug:record_key`.
    pub record: &'a str,
    pub state: SpillState,
}

/// A first attempt that succeeded, as its history row.
#[derive(Debug, Clone)]
pub struct Delivered<'a> {
    pub captured: &'a Captured,
    pub body: &'a str,
    pub endpoint: &'a str,
    pub record: &'a str,
    pub started_unix_ms: i64,
    pub duration_ms: i32,
    pub status_code: i16,
    pub response_excerpt: Option<&'a str>,
}

impl Ledger {
    /// Writes `rows` (with their events) in one transaction and returns the
    /// ledger's delivery id of each, in order (`None`: it was already there,
    /// from a spill before a crash). Leased rows are leased to `owner` for
    /// `lease`.
    pub async fn spill(
        &self,
        client: &mut Client,
        owner: &str,
        lease: Duration,
        rows: &[Spilled<'_>],
    ) -> Result<Vec<Option<i64>>, LedgerError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let tx = client.transaction().await?;
        self.insert_spilled_events(&tx, rows).await?;
        let ids = self
            .insert_spilled_deliveries(&tx, owner, lease, rows)
            .await?;
        let attempts: Vec<AttemptRow> = rows
            .iter()
            .zip(&ids)
            .filter_map(|(r, id)| match (&r.state, id) {
                (SpillState::Failed(a), Some(id)) => Some(AttemptRow {
                    delivery_id: *id,
                    ..(**a).clone()
                }),
                _ => None,
            })
            .collect();
        self.insert_attempts(&tx, &attempts).await?;
        if ids.iter().any(Option::is_some) {
            tx.execute(
                "SELECT pg_notify($1, '')",
                &[&notify_channel(self.schema())],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn insert_spilled_events(
        &self,
        tx: &impl GenericClient,
        rows: &[Spilled<'_>],
    ) -> Result<(), LedgerError> {
        let mut seen = std::collections::HashSet::new();
        let events: Vec<(&Captured, &str)> = rows
            .iter()
            .map(|r| (r.captured, r.body))
            .filter(|(c, _)| seen.insert(c.event.id.as_str()))
            .collect();
        self.insert_event_rows(tx, &events).await
    }

    /// Event rows (with bodies), skipping those already there.
    pub(super) async fn insert_event_rows(
        &self,
        tx: &impl GenericClient,
        events: &[(&Captured, &str)],
    ) -> Result<(), LedgerError> {
        let s = self.q();
        let ids: Vec<&str> = events.iter().map(|(c, _)| c.event.id.as_str()).collect();
        let names: Vec<&str> = events.iter().map(|(c, _)| c.event.name.as_str()).collect();
        let slugs: Vec<&str> = events.iter().map(|(c, _)| c.event.slug.as_str()).collect();
        let keys: Vec<&str> = events
            .iter()
            .map(|(c, _)| c.event.record_key.as_str())
            .collect();
        let lsns: Vec<PgLsn> = events.iter().map(|(c, _)| c.commit_lsn.into()).collect();
        let idxs: Vec<i32> = events.iter().map(|(c, _)| c.change_index as i32).collect();
        let times: Vec<SystemTime> = events
            .iter()
            .map(|(c, _)| system_time_from_unix_micros(c.commit_time_unix_micros))
            .collect();
        let bodies: Vec<&str> = events.iter().map(|(_, b)| *b).collect();
        tx.execute(
            &format!(
                "INSERT INTO {s}.events
                   (event_id, name, slug, record_key, commit_lsn, change_index, commit_time, body)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::pg_lsn[], $6::int4[], $7::timestamptz[], $8::text[])
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            &[&ids, &names, &slugs, &keys, &lsns, &idxs, &times, &bodies],
        )
        .await?;
        Ok(())
    }

    async fn insert_spilled_deliveries(
        &self,
        tx: &impl GenericClient,
        owner: &str,
        lease: Duration,
        rows: &[Spilled<'_>],
    ) -> Result<Vec<Option<i64>>, LedgerError> {
        let s = self.q();
        let n = rows.len();
        let mut cols = SpillColumns::with_capacity(n);
        for (i, r) in rows.iter().enumerate() {
            cols.push(i, r, owner);
        }
        let out = tx
            .query(
                &format!(
                    "WITH d AS (
                       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                            $5::int4[], $6::timestamptz[], $7::text[], $8::int4[],
                                            $9::text[], $10::int4[])
                         AS d(event_id, endpoint_id, record, status, attempts, next_at,
                              lease_owner, code, err, ord)
                     ), ins AS (
                       INSERT INTO {s}.deliveries
                         (event_seq, endpoint_id, record, commit_lsn, change_index, status,
                          attempts, cycle_attempts, cycle_started_at, next_attempt_at,
                          lease_owner, lease_until, last_status_code, last_error)
                       SELECT e.seq, d.endpoint_id, d.record, e.commit_lsn, e.change_index,
                              d.status, d.attempts, d.attempts, e.commit_time,
                              coalesce(d.next_at, now()), d.lease_owner,
                              CASE WHEN d.lease_owner IS NOT NULL
                                   THEN now() + make_interval(secs => $11) END,
                              d.code, d.err
                       FROM d JOIN {s}.events e ON e.event_id = d.event_id
                       ORDER BY d.ord
                       ON CONFLICT (event_seq, endpoint_id) DO NOTHING
                       RETURNING id, event_seq, endpoint_id
                     )
                     SELECT ins.id, e.event_id, ins.endpoint_id
                     FROM ins JOIN {s}.events e ON e.seq = ins.event_seq"
                ),
                &[
                    &cols.event_ids,
                    &cols.endpoints,
                    &cols.records,
                    &cols.status,
                    &cols.attempts,
                    &cols.next_at,
                    &cols.owners,
                    &cols.codes,
                    &cols.errors,
                    &cols.ord,
                    &lease.as_secs_f64(),
                ],
            )
            .await?;
        let mut ids: std::collections::HashMap<(String, String), i64> = out
            .iter()
            .map(|r| ((r.get(1), r.get(2)), r.get(0)))
            .collect();
        Ok(rows
            .iter()
            .map(|r| ids.remove(&(r.captured.event.id.clone(), r.endpoint.to_string())))
            .collect())
    }

    /// Attempt rows of deliveries just written (no lease to check).
    async fn insert_attempts(
        &self,
        tx: &impl GenericClient,
        rows: &[AttemptRow],
    ) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let s = self.q();
        let ids: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
        let started: Vec<SystemTime> = rows
            .iter()
            .map(|r| system_time_from_unix_ms(r.started_unix_ms))
            .collect();
        let durations: Vec<i32> = rows.iter().map(|r| r.duration_ms).collect();
        let codes: Vec<Option<i32>> = rows.iter().map(|r| r.status_code).collect();
        let kinds: Vec<Option<&str>> = rows.iter().map(|r| r.error_kind.as_deref()).collect();
        let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
        let excerpts: Vec<Option<&str>> =
            rows.iter().map(|r| r.response_excerpt.as_deref()).collect();
        let headers: Vec<&str> = rows.iter().map(|r| r.request_headers.as_str()).collect();
        let locations: Vec<Option<&str>> = rows.iter().map(|r| r.location.as_deref()).collect();
        let retry_afters: Vec<Option<&str>> =
            rows.iter().map(|r| r.retry_after.as_deref()).collect();
        tx.execute(
            &format!(
                "INSERT INTO {s}.attempts
                   (delivery_id, started_at, duration_ms, status_code, error_kind, error,
                    response_excerpt, request_headers, location, retry_after)
                 SELECT i, st, d, c, k, e, x, h::jsonb, l, ra
                 FROM unnest($1::int8[], $2::timestamptz[], $3::int4[], $4::int4[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
                   AS a(i, st, d, c, k, e, x, h, l, ra)"
            ),
            &[
                &ids,
                &started,
                &durations,
                &codes,
                &kinds,
                &errors,
                &excerpts,
                &headers,
                &locations,
                &retry_afters,
            ],
        )
        .await?;
        Ok(())
    }

    /// Records first attempts that succeeded (with their bodies, when
    /// `keep_bodies` says so) and adds `captured` to the per-event-name
    /// counts, in one transaction.
    pub async fn delivered(
        &self,
        client: &mut Client,
        rows: &[Delivered<'_>],
        keep_bodies: bool,
        captured: &[(String, i64)],
    ) -> Result<(), LedgerError> {
        let tx = client.transaction().await?;
        if keep_bodies {
            let mut seen = std::collections::HashSet::new();
            let events: Vec<(&Captured, &str)> = rows
                .iter()
                .map(|r| (r.captured, r.body))
                .filter(|(c, _)| seen.insert(c.event.id.as_str()))
                .collect();
            self.insert_event_rows(&tx, &events).await?;
        }
        self.insert_delivered(&tx, rows, captured).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_delivered(
        &self,
        tx: &impl GenericClient,
        rows: &[Delivered<'_>],
        captured: &[(String, i64)],
    ) -> Result<(), LedgerError> {
        let s = self.q();
        let ids: Vec<&str> = rows.iter().map(|r| r.captured.event.id.as_str()).collect();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r.captured.event.name.as_str())
            .collect();
        let endpoints: Vec<&str> = rows.iter().map(|r| r.endpoint).collect();
        let records: Vec<&str> = rows.iter().map(|r| r.record).collect();
        let commits: Vec<SystemTime> = rows
            .iter()
            .map(|r| system_time_from_unix_micros(r.captured.commit_time_unix_micros))
            .collect();
        let started: Vec<SystemTime> = rows
            .iter()
            .map(|r| system_time_from_unix_ms(r.started_unix_ms))
            .collect();
        let durations: Vec<i32> = rows.iter().map(|r| r.duration_ms).collect();
        let codes: Vec<i16> = rows.iter().map(|r| r.status_code).collect();
        let excerpts: Vec<Option<&str>> = rows.iter().map(|r| r.response_excerpt).collect();
        let mut per_endpoint: std::collections::BTreeMap<&str, i64> = Default::default();
        for r in rows {
            *per_endpoint.entry(r.endpoint).or_default() += 1;
        }
        let (mut counter_names, mut counter_values): (Vec<String>, Vec<i64>) = per_endpoint
            .into_iter()
            .map(|(ep, n)| (format!("delivered:{ep}"), n))
            .unzip();
        for (name, n) in captured {
            counter_names.push(format!("captured:{name}"));
            counter_values.push(*n);
        }
        tx.execute(
            &format!(
                "WITH ins AS (
                   INSERT INTO {s}.delivered
                     (event_id, event_name, endpoint_id, record, commit_time, started_at,
                      duration_ms, status_code, response_excerpt)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                        $5::timestamptz[], $6::timestamptz[], $7::int4[],
                                        $8::int2[], $9::text[])
                   RETURNING 1
                 )
                 INSERT INTO {s}.counters (name, value)
                 SELECT c.name, c.value FROM unnest($10::text[], $11::int8[]) AS c(name, value)
                 WHERE c.value > 0
                 ON CONFLICT (name) DO UPDATE SET value = {s}.counters.value + EXCLUDED.value"
            ),
            &[
                &ids,
                &names,
                &endpoints,
                &records,
                &commits,
                &started,
                &durations,
                &codes,
                &excerpts,
                &counter_names,
                &counter_values,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Spilled deliveries as the column arrays of the insert.
struct SpillColumns<'a> {
    event_ids: Vec<&'a str>,
    endpoints: Vec<&'a str>,
    records: Vec<&'a str>,
    status: Vec<&'static str>,
    attempts: Vec<i32>,
    next_at: Vec<Option<SystemTime>>,
    owners: Vec<Option<&'a str>>,
    codes: Vec<Option<i32>>,
    errors: Vec<Option<&'a str>>,
    ord: Vec<i32>,
}

impl<'a> SpillColumns<'a> {
    fn with_capacity(n: usize) -> SpillColumns<'a> {
        SpillColumns {
            event_ids: Vec::with_capacity(n),
            endpoints: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            next_at: Vec::with_capacity(n),
            owners: Vec::with_capacity(n),
            codes: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            ord: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, i: usize, r: &'a Spilled<'a>, owner: &'a str) {
        self.event_ids.push(&r.captured.event.id);
        self.endpoints.push(r.endpoint);
        self.records.push(r.record);
        self.ord.push(i as i32);
        let (status, attempts, next_at, lease, code, err) = match &r.state {
            SpillState::Pending => ("pending", 0, None, None, None, None),
            SpillState::Leased => ("pending", 0, None, Some(owner), None, None),
            SpillState::Failed(a) => {
                let (status, at) = match a.next {
                    NextState::RetryAt(ms) => ("retrying", Some(system_time_from_unix_ms(ms))),
                    NextState::Disabled => ("disabled", None),
                    // A failed attempt never succeeds; kept total for safety.
                    NextState::Succeeded => ("succeeded", None),
                };
                (status, 1, at, None, a.status_code, a.error.as_deref())
            }
        };
        self.status.push(status);
        self.attempts.push(attempts);
        self.next_at.push(next_at);
        self.owners.push(lease);
        self.codes.push(code);
        self.errors.push(err);
    }
}
