//! Retention: what `[ledger] retention` and `retention_failed` remove from
//! the ledger, and how big the ledger is.
//!
//! - Succeeded history older than the retention: `delivered` rows by
//!   `started_at`, `succeeded` deliveries (with their attempts) by
//!   `updated_at`.
//! - Disabled deliveries (with their attempts) unchanged for longer than
//!   `retention_failed`; a retried one is `pending` again, so it stays.
//! - Events no delivery and no `delivered` row refers to any more, once
//!   older than the retention and behind the slot's confirmed position (the
//!   slot can never send them again, so no spill can come back for them).
//!
//! Every batch is one short statement (at most [`BATCH`] rows) in its own
//! transaction: no long locks, and a dispatcher never waits on pruning. Rows
//! under a lock (a delivery being retried, an event a spill is referring to)
//! are skipped, not waited for, and go in a later pass.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use super::{Ledger, LedgerError};
use crate::pg::Lsn;

/// Rows one pruning statement removes at most.
pub const BATCH: i64 = 5000;

/// The position before which the slot can never send a transaction again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFloor {
    /// The slot's `confirmed_flush_lsn`: a transaction that committed before
    /// it is never decoded again.
    Confirmed(Lsn),
    /// There is no slot: nothing can be sent again.
    NoSlot,
    /// Not known (the source database did not answer): keep every event.
    Unknown,
}

impl ReplayFloor {
    /// Events that committed before this may go; `None`: none may.
    fn events_before(self) -> Option<PgLsn> {
        match self {
            ReplayFloor::Confirmed(l) => Some(l.into()),
            ReplayFloor::NoSlot => Some(PgLsn::from(u64::MAX)),
            ReplayFloor::Unknown => None,
        }
    }
}

/// What one pruning pass may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Succeeded history and unreferenced events older than this go.
    pub succeeded: Duration,
    /// Disabled deliveries unchanged for longer than this go.
    pub disabled: Duration,
    pub floor: ReplayFloor,
}

/// Rows removed (or, for a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// `delivered`: first attempts that succeeded straight from the stream.
    pub delivered: u64,
    /// `deliveries` that succeeded from the ledger.
    pub deliveries_succeeded: u64,
    /// `deliveries` that were disabled (gave up) and never retried.
    pub deliveries_disabled: u64,
    /// `attempts` of those deliveries.
    pub attempts: u64,
    /// `events` nothing refers to any more.
    pub events: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.delivered
            + self.deliveries_succeeded
            + self.deliveries_disabled
            + self.attempts
            + self.events
    }
}

/// One table of the ledger and its size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSize {
    pub table: String,
    /// Table, indexes and TOAST (`pg_total_relation_size`).
    pub bytes: i64,
    /// The planner's row estimate (`reltuples`); `None` before the table was
    /// first vacuumed or analysed.
    pub rows_estimate: Option<i64>,
}

/// The ledger's size on disk, biggest table first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerSize {
    pub total_bytes: i64,
    pub tables: Vec<TableSize>,
}

/// Seconds, as the SQL's `make_interval(secs => ...)` takes them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The advisory lock key of the pruner of `schema` (one per ledger).
const LOCK_KEY: &str = "hashtextextended('walhook prune ' || $1::text, 0)";

impl Ledger {
    /// Takes the pruner's session lock on this connection if no other
    /// session holds it; true when taken.
    pub async fn try_lock_pruner(&self, client: &Client) -> Result<bool, LedgerError> {
        let sql = format!("SELECT pg_try_advisory_lock({LOCK_KEY})");
        Ok(client.query_one(&sql, &[&self.schema()]).await?.get(0))
    }

    /// Releases the lock taken by [`Ledger::try_lock_pruner`].
    pub async fn unlock_pruner(&self, client: &Client) -> Result<(), LedgerError> {
        let sql = format!("SELECT pg_advisory_unlock({LOCK_KEY})");
        client.query_one(&sql, &[&self.schema()]).await?;
        Ok(())
    }

    /// Removes what `r` allows, batch by batch, until nothing is left.
    pub async fn prune(&self, client: &Client, r: &Retention) -> Result<Pruned, LedgerError> {
        let delivered = until_done(|| self.prune_delivered(client, r.succeeded)).await?;
        let (succeeded, a1) = self
            .prune_deliveries(client, "succeeded", r.succeeded)
            .await?;
        let (disabled, a2) = self
            .prune_deliveries(client, "disabled", r.disabled)
            .await?;
        // Last: the deliveries that referred to them are gone by now.
        let events = match r.floor.events_before() {
            Some(floor) => until_done(|| self.prune_events(client, r.succeeded, floor)).await?,
            None => 0,
        };
        Ok(Pruned {
            delivered,
            deliveries_succeeded: succeeded,
            deliveries_disabled: disabled,
            attempts: a1 + a2,
            events,
        })
    }

    async fn prune_delivered(&self, client: &Client, older: Duration) -> Result<u64, LedgerError> {
        let s = self.q();
        let n = client
            .execute(
                &format!(
                    "DELETE FROM {s}.delivered WHERE delivery_id IN (
                       SELECT delivery_id FROM {s}.delivered
                       WHERE started_at < now() - make_interval(secs => $1) LIMIT $2)"
                ),
                &[&secs(older), &BATCH],
            )
            .await?;
        Ok(n)
    }

    /// Deliveries in `status` unchanged for `older`, with their attempts:
    /// (deliveries, attempts) removed. `FOR UPDATE SKIP LOCKED` re-checks
    /// the status of a row changed meanwhile (a retry makes it `pending`)
    /// and passes over rows someone holds.
    async fn prune_deliveries(
        &self,
        client: &Client,
        status: &str,
        older: Duration,
    ) -> Result<(u64, u64), LedgerError> {
        let s = self.q();
        let sql = format!(
            "WITH doomed AS (
               SELECT id FROM {s}.deliveries
               WHERE status = $1 AND updated_at < now() - make_interval(secs => $2)
               LIMIT $3 FOR UPDATE SKIP LOCKED
             ), a AS (
               DELETE FROM {s}.attempts WHERE delivery_id IN (SELECT id FROM doomed) RETURNING 1
             ), d AS (
               DELETE FROM {s}.deliveries WHERE id IN (SELECT id FROM doomed) RETURNING 1
             )
             SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM a)"
        );
        let (mut deliveries, mut attempts) = (0, 0);
        loop {
            let row = client
                .query_one(&sql, &[&status, &secs(older), &BATCH])
                .await?;
            let (d, a) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
            deliveries += d;
            attempts += a;
            if d < BATCH as u64 {
                return Ok((deliveries, attempts));
            }
        }
    }

    /// Events nothing refers to, older than `older` and committed before
    /// `floor`. An event a spill is referring to right now is locked by the
    /// foreign key check and skipped.
    async fn prune_events(
        &self,
        client: &Client,
        older: Duration,
        floor: PgLsn,
    ) -> Result<u64, LedgerError> {
        let s = self.q();
        let n = client
            .execute(
                &format!(
                    "WITH doomed AS (
                       SELECT seq FROM {s}.events e
                       WHERE e.captured_at < now() - make_interval(secs => $1)
                         AND e.commit_lsn < $2
                         AND NOT EXISTS (SELECT 1 FROM {s}.deliveries d WHERE d.event_seq = e.seq)
                         AND NOT EXISTS (SELECT 1 FROM {s}.delivered x WHERE x.event_id = e.event_id)
                       LIMIT $3 FOR UPDATE SKIP LOCKED
                     )
                     DELETE FROM {s}.events WHERE seq IN (SELECT seq FROM doomed)"
                ),
                &[&secs(older), &floor, &BATCH],
            )
            .await?;
        Ok(n)
    }

    /// What [`Ledger::prune`] would remove now, changing nothing. Events
    /// are counted as they would be once the deliveries referring to them
    /// are gone.
    pub async fn prunable(&self, client: &Client, r: &Retention) -> Result<Pruned, LedgerError> {
        let s = self.q();
        let floor = r.floor.events_before();
        let row = client
            .query_one(
                &format!(
                    "WITH old AS (
                       SELECT now() - make_interval(secs => $1) AS ok_before,
                              now() - make_interval(secs => $2) AS failed_before
                     ), gone AS (
                       SELECT d.id, d.status FROM {s}.deliveries d, old
                       WHERE (d.status = 'succeeded' AND d.updated_at < old.ok_before)
                          OR (d.status = 'disabled' AND d.updated_at < old.failed_before)
                     )
                     SELECT
                       (SELECT count(*) FROM {s}.delivered, old WHERE started_at < old.ok_before),
                       (SELECT count(*) FROM gone WHERE status = 'succeeded'),
                       (SELECT count(*) FROM gone WHERE status = 'disabled'),
                       (SELECT count(*) FROM {s}.attempts a JOIN gone ON gone.id = a.delivery_id),
                       (SELECT count(*) FROM {s}.events e, old
                        WHERE $3::pg_lsn IS NOT NULL AND e.commit_lsn < $3
                          AND e.captured_at < old.ok_before
                          AND NOT EXISTS (SELECT 1 FROM {s}.deliveries d
                                          WHERE d.event_seq = e.seq
                                            AND d.id NOT IN (SELECT id FROM gone))
                          AND NOT EXISTS (SELECT 1 FROM {s}.delivered x
                                          WHERE x.event_id = e.event_id
                                            AND x.started_at >= old.ok_before))"
                ),
                &[&secs(r.succeeded), &secs(r.disabled), &floor],
            )
            .await?;
        let n = |i: usize| row.get::<_, i64>(i) as u64;
        Ok(Pruned {
            delivered: n(0),
            deliveries_succeeded: n(1),
            deliveries_disabled: n(2),
            attempts: n(3),
            events: n(4),
        })
    }

    /// The size of every table of the ledger's schema, biggest first.
    pub async fn size(&self, client: &Client) -> Result<LedgerSize, LedgerError> {
        let rows = client
            .query(
                "SELECT c.relname::text, pg_total_relation_size(c.oid),
                        CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::int8 END
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                 ORDER BY 2 DESC, 1",
                &[&self.schema()],
            )
            .await?;
        let tables: Vec<TableSize> = rows
            .iter()
            .map(|r| TableSize {
                table: r.get(0),
                bytes: r.get(1),
                rows_estimate: r.get(2),
            })
            .collect();
        Ok(LedgerSize {
            total_bytes: tables.iter().map(|t| t.bytes).sum(),
            tables,
        })
    }
}

/// Runs `batch` until it removes fewer than [`BATCH`] rows; the total.
async fn until_done<F, Fut>(mut batch: F) -> Result<u64, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, LedgerError>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Where the slot `slot` of the source database stands (`client` is
/// connected to the source).
pub async fn replay_floor(client: &Client, slot: &str) -> Result<ReplayFloor, LedgerError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots
             WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await?;
    Ok(match row {
        None => ReplayFloor::NoSlot,
        Some(r) => match r.get::<_, Option<PgLsn>>(0) {
            Some(l) => ReplayFloor::Confirmed(l.into()),
            None => ReplayFloor::Unknown,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors() {
        assert_eq!(
            ReplayFloor::Confirmed(Lsn(42)).events_before(),
            Some(PgLsn::from(42))
        );
        assert_eq!(
            ReplayFloor::NoSlot.events_before(),
            Some(PgLsn::from(u64::MAX))
        );
        assert_eq!(ReplayFloor::Unknown.events_before(), None);
    }

    #[test]
    fn totals() {
        let p = Pruned {
            delivered: 1,
            deliveries_succeeded: 2,
            deliveries_disabled: 3,
            attempts: 4,
            events: 5,
        };
        assert_eq!(p.total(), 15);
    }
}
