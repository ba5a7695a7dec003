//! Operators putting work back in the queue: re-queueing failed deliveries
//! chosen by a filter, and resending a past event to an endpoint.
//!
//! Every guard (the delivery's state, no live lease) is in the statement
//! that writes, so a dispatcher claiming or recording at the same moment is
//! either seen, and the row left alone, or comes after.

use std::time::SystemTime;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::history::{EventMatch, event_match};
use super::states::DeliveryState;
use super::{Ledger, LedgerError};

/// Which failed deliveries to re-queue; every field narrows (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequeueFilter {
    /// `Retrying` or `Disabled`; `None`: both.
    pub status: Option<DeliveryState>,
    /// An event id (has `:`), an exact name, or a filter (`lead.*`).
    pub event: Option<String>,
    pub endpoint: Option<String>,
    /// Created at or after this time.
    pub since: Option<SystemTime>,
    /// Created before this time.
    pub until: Option<SystemTime>,
}

/// What a resend did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    /// A new delivery, due now.
    Created(i64),
    /// The event's delivery to that endpoint had succeeded: it is due again
    /// now, with a fresh cycle (its earlier attempts stay in its history).
    Reopened(i64),
    /// The event has a delivery to that endpoint that has not succeeded:
    /// retry that one instead.
    Open(i64, DeliveryState),
    /// The event was delivered, but its body is not in the ledger.
    NotKept,
    NotFound,
}

/// The WHERE clause of [`Ledger::requeue`] over `deliveries d JOIN events
/// e`, with its parameters `$1`..`$6`.
const REQUEUE_WHERE: &str = "d.status IN ('retrying', 'disabled')
           AND (d.lease_until IS NULL OR d.lease_until < now())
           AND ($1::text IS NULL OR d.status = $1)
           AND ($2::text IS NULL OR d.endpoint_id = $2)
           AND ($3::text IS NULL OR e.event_id = $3)
           AND ($4::text IS NULL OR e.name LIKE $4)
           AND ($5::timestamptz IS NULL OR d.created_at >= $5)
           AND ($6::timestamptz IS NULL OR d.created_at < $6)";

impl Ledger {
    /// Re-queue the retrying and disabled deliveries matching `f` with a
    /// fresh cycle, due now, except those a dispatcher holds a lease on.
    /// With `dry_run`, only count them. Returns how many.
    pub async fn requeue(
        &self,
        client: &Client,
        f: &RequeueFilter,
        dry_run: bool,
    ) -> Result<u64, LedgerError> {
        let s = self.q();
        let (event_id, name_like) = match f.event.as_deref().map(event_match) {
            None => (None, None),
            Some(EventMatch::Id(id)) => (Some(id), None),
            Some(EventMatch::NameLike(p)) => (None, Some(p)),
        };
        let status = f.status.map(DeliveryState::as_str);
        let params: [&(dyn ToSql + Sync); 6] = [
            &status,
            &f.endpoint,
            &event_id,
            &name_like,
            &f.since,
            &f.until,
        ];
        if dry_run {
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq
                         WHERE {REQUEUE_WHERE}"
                    ),
                    &params,
                )
                .await?;
            return Ok(row.get::<_, i64>(0) as u64);
        }
        // Under READ COMMITTED a row another transaction changes meanwhile
        // is re-checked against the whole WHERE once that one commits, so a
        // lease taken in between keeps the row out.
        let n = client
            .execute(
                &format!(
                    "UPDATE {s}.deliveries d
                        SET status = 'retrying', next_attempt_at = now(), cycle_started_at = now(),
                            cycle_attempts = 0, lease_owner = NULL, lease_until = NULL,
                            updated_at = now()
                       FROM {s}.events e
                      WHERE e.seq = d.event_seq AND {REQUEUE_WHERE}"
                ),
                &params,
            )
            .await?;
        if n > 0 {
            self.notify(client).await?;
        }
        Ok(n)
    }

    /// Send event `event_id` to `endpoint` again: a new delivery, pending and
    /// due now, made from the event's row (its body as first sent). The
    /// endpoint's own delivery of the event, if it had one that succeeded,
    /// is opened again instead (one delivery per event and endpoint).
    pub async fn resend(
        &self,
        client: &Client,
        event_id: &str,
        endpoint: &str,
    ) -> Result<Resend, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(&resend_sql(&s), &[&event_id, &endpoint])
            .await?;
        let Some(row) = row else {
            return Ok(Resend::NotFound);
        };
        let kind: &str = row.get(0);
        let id: Option<i64> = row.get(1);
        Ok(match (kind, id) {
            ("created", Some(id)) => {
                self.notify(client).await?;
                Resend::Created(id)
            }
            ("reopened", Some(id)) => {
                self.notify(client).await?;
                Resend::Reopened(id)
            }
            ("open", Some(id)) => Resend::Open(id, DeliveryState::of_column(row.get(2))),
            ("not kept", _) => Resend::NotKept,
            _ => Resend::NotFound,
        })
    }
}

/// The statement of [`Ledger::resend`]: insert the delivery, or re-open the
/// endpoint's succeeded one (no lease to check: a succeeded delivery is never
/// claimed), or say what is there; one statement, so one snapshot.
fn resend_sql(s: &str) -> String {
    format!(
        "WITH ev AS (
           SELECT seq, slug, record_key, commit_lsn, change_index
           FROM {s}.events WHERE event_id = $1
         ), ins AS (
           INSERT INTO {s}.deliveries
             (event_seq, endpoint_id, record, cycle_started_at, commit_lsn,
              change_index, status, next_attempt_at)
           SELECT ev.seq, $2, ev.slug || ':' || ev.record_key, now(), ev.commit_lsn,
                  ev.change_index, 'pending', now()
           FROM ev
           ON CONFLICT (event_seq, endpoint_id) DO NOTHING
           RETURNING id
         ), reopened AS (
           UPDATE {s}.deliveries d
              SET status = 'pending', next_attempt_at = now(), cycle_started_at = now(),
                  cycle_attempts = 0, updated_at = now()
             FROM ev
            WHERE d.event_seq = ev.seq AND d.endpoint_id = $2
              AND d.status = 'succeeded' AND NOT EXISTS (SELECT 1 FROM ins)
           RETURNING d.id
         )
         SELECT 'created'::text, id, NULL::text FROM ins
         UNION ALL SELECT 'reopened', id, NULL FROM reopened
         UNION ALL
         SELECT 'open', d.id, d.status FROM {s}.deliveries d JOIN ev ON d.event_seq = ev.seq
         WHERE d.endpoint_id = $2 AND d.status <> 'succeeded'
           AND NOT EXISTS (SELECT 1 FROM ins)
         UNION ALL
         SELECT 'not kept', NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM ev)
           AND EXISTS (SELECT 1 FROM {s}.delivered WHERE event_id = $1)
         LIMIT 1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_guards_state_and_lease() {
        assert!(REQUEUE_WHERE.starts_with("d.status IN ('retrying', 'disabled')"));
        assert!(REQUEUE_WHERE.contains("d.lease_until < now()"));
        for n in 1..=6 {
            assert!(REQUEUE_WHERE.contains(&format!("${n}")), "${n}");
        }
    }
}
