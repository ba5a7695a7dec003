//! The deliveries table as a work queue. Due deliveries are claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease, so several processes dispatch
//! together without sending one delivery twice at the same time, and a
//! crashed process's work comes back when its lease ends. Results are written
//! only while the lease is still ours.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::history::DeliveryState;
use super::{Ledger, LedgerError};
use crate::pg::{system_time_from_unix_ms, unix_ms};

/// A delivery leased to this process, with what is needed to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: i64,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_name: String,
    pub body: String,
    pub attempts: i32,
    pub cycle_attempts: i32,
    pub cycle_started_unix_ms: i64,
}

/// What to claim: per endpoint a limit, a total, the lease, the ordering.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub endpoints: &'a [String],
    /// `limits[i]` deliveries at most for `endpoints[i]`.
    pub limits: &'a [i64],
    /// `caps[i]` > 0: endpoint `endpoints[i]` may have at most that many
    /// deliveries leased at once, by every process together
    /// (`max_in_flight`).
    pub caps: &'a [i64],
    pub total: i64,
    pub lease: Duration,
    pub per_record: bool,
}

/// The new state of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Succeeded,
    RetryAt(i64),
    Disabled,
}

/// What a manual retry of one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Queued again; it was in this state before.
    Queued(DeliveryState),
    NotFound,
    /// Delivered already; it is never sent again.
    Succeeded,
    /// A dispatcher holds its lease: an attempt is under way.
    InFlight,
}

/// One finished attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub endpoint_id: String,
    pub started_unix_ms: i64,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// JSON object of the request headers.
    pub request_headers: String,
    /// The response's `Location` and `Retry-After` headers, as received.
    pub location: Option<String>,
    pub retry_after: Option<String>,
    pub next: NextState,
}

impl Ledger {
    /// Make sure every configured endpoint has a state row.
    pub async fn register_endpoints(
        &self,
        client: &Client,
        ids: &[String],
    ) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.endpoints (id) SELECT unnest($1::text[]) ON CONFLICT (id) DO NOTHING"
                ),
                &[&ids],
            )
            .await?;
        Ok(())
    }

    /// Lease due deliveries: at most `limits[i]` of endpoint `endpoints[i]`
    /// (so one slow endpoint cannot take every slot), `total` in all. With
    /// `per_record`, a delivery is due only when no earlier event of the same
    /// record for the same endpoint is still open. Disabled endpoints get none.
    ///
    /// An endpoint with a cap gets at most `cap - (its live leases)`, every
    /// process counted. Claims of capped endpoints take their rows in the
    /// endpoints table `FOR UPDATE` first, in a transaction of their own, so
    /// they run one at a time and each one's count (a fresh snapshot taken
    /// after the lock) sees the leases the one before it committed.
    pub async fn claim(
        &self,
        client: &Client,
        owner: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, LedgerError> {
        let ClaimRequest {
            endpoints,
            limits,
            caps,
            total,
            lease,
            per_record,
        } = *req;
        let s = self.q();
        let capped: Vec<&String> = endpoints
            .iter()
            .zip(limits.iter().zip(caps))
            .filter(|(_, (n, cap))| **n > 0 && **cap > 0)
            .map(|(e, _)| e)
            .collect();
        let sql = claim_sql(&s, per_record);
        let params: [&(dyn ToSql + Sync); 6] = [
            &total,
            &owner,
            &endpoints,
            &lease.as_secs_f64(),
            &limits,
            &caps,
        ];
        let rows = if capped.is_empty() {
            client.query(&sql, &params).await?
        } else {
            self.claim_serialized(client, &capped, &sql, &params)
                .await?
        };
        let mut out: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                delivery_id: r.get(0),
                endpoint_id: r.get(1),
                event_id: r.get(2),
                event_name: r.get(3),
                body: r.get(4),
                attempts: r.get(5),
                cycle_attempts: r.get(6),
                cycle_started_unix_ms: unix_ms(r.get(7)),
            })
            .collect();
        out.sort_by_key(|c| c.delivery_id);
        Ok(out)
    }

    /// Runs the claim statement in a transaction that first locks the rows of
    /// the `capped` endpoints (see [`Ledger::claim`]).
    async fn claim_serialized(
        &self,
        client: &Client,
        capped: &[&String],
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let s = self.q();
        client.batch_execute("BEGIN").await?;
        let lock =
            format!("SELECT id FROM {s}.endpoints WHERE id = ANY($1) ORDER BY id FOR UPDATE");
        let rows = match client.query(&lock, &[&capped]).await {
            Ok(_) => client.query(sql, params).await,
            Err(e) => Err(e),
        };
        let ended = client
            .batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .await;
        let rows = rows?;
        ended?;
        Ok(rows)
    }

    /// When the next open delivery becomes due (for the idle sleep).
    pub async fn next_due(&self, client: &Client) -> Result<Option<SystemTime>, LedgerError> {
        let s = self.q();
        let row = client
            .query_one(
                &format!(
                    "SELECT min(next_attempt_at) FROM {s}.deliveries WHERE status IN ('pending', 'retrying')"
                ),
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Record finished attempts and move their deliveries on, atomically (one
    /// statement). Rows whose lease is no longer ours are skipped (another
    /// process took the delivery over after our lease ran out).
    pub async fn record(
        &self,
        client: &Client,
        owner: &str,
        rows: &[AttemptRow],
    ) -> Result<u64, LedgerError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let s = self.q();
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut next_at: Vec<Option<SystemTime>> = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        let mut durations = Vec::with_capacity(n);
        let mut excerpts = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        let mut locations = Vec::with_capacity(n);
        let mut retry_afters = Vec::with_capacity(n);
        for r in rows {
            ids.push(r.delivery_id);
            let (st, at) = match r.next {
                NextState::Succeeded => ("succeeded", None),
                NextState::RetryAt(ms) => ("retrying", Some(system_time_from_unix_ms(ms))),
                NextState::Disabled => ("disabled", None),
            };
            status.push(st);
            next_at.push(at);
            codes.push(r.status_code);
            kinds.push(r.error_kind.as_deref());
            errors.push(r.error.as_deref());
            started.push(system_time_from_unix_ms(r.started_unix_ms));
            durations.push(r.duration_ms);
            excerpts.push(r.response_excerpt.as_deref());
            headers.push(r.request_headers.as_str());
            locations.push(r.location.as_deref());
            retry_afters.push(r.retry_after.as_deref());
        }
        // One statement, so one round trip and atomic without BEGIN/COMMIT:
        // the update keeps only rows whose lease is still ours, and only
        // those get an attempt row.
        let row = client
            .query_one(
                &record_sql(&s),
                &[
                    &ids,
                    &status,
                    &next_at,
                    &codes,
                    &errors,
                    &started,
                    &durations,
                    &kinds,
                    &excerpts,
                    &headers,
                    &owner,
                    &locations,
                    &retry_afters,
                ],
            )
            .await?;
        let kept: i64 = row.get(0);
        Ok(kept as u64)
    }

    /// Extend the leases `owner` holds on `ids` to `lease` from now.
    pub async fn renew(
        &self,
        client: &Client,
        owner: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64, LedgerError> {
        let s = self.q();
        Ok(client
            .execute(
                &format!(
                    "UPDATE {s}.deliveries d SET lease_until = now() + make_interval(secs => $3)
                       FROM ({locked}) l WHERE d.id = l.id",
                    locked = locked_in_order(&s, "$1", "$2")
                ),
                &[&ids, &owner, &lease.as_secs_f64()],
            )
            .await?)
    }

    /// Give leases back without an attempt (graceful stop).
    pub async fn release(
        &self,
        client: &Client,
        owner: &str,
        ids: &[i64],
    ) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let s = self.q();
        client
            .execute(
                &format!(
                    "UPDATE {s}.deliveries d SET lease_owner = NULL, lease_until = NULL
                       FROM ({locked}) l WHERE d.id = l.id",
                    locked = locked_in_order(&s, "$1", "$2")
                ),
                &[&ids, &owner],
            )
            .await?;
        Ok(())
    }

    /// Put one delivery back in the queue, starting a fresh retry cycle now,
    /// unless it succeeded or a dispatcher holds its lease. The guard is in
    /// the UPDATE itself, so a claim or a result landing at the same moment
    /// is either seen (and the retry refused) or comes after it; a live lease
    /// is never cleared.
    pub async fn retry_delivery(&self, client: &Client, id: i64) -> Result<Requeue, LedgerError> {
        let s = self.q();
        // The CTE locks the row and reads its latest version, so `prev.status`
        // is the state the update replaced.
        let row = client
            .query_opt(
                &format!(
                    "WITH prev AS (SELECT id, status FROM {s}.deliveries WHERE id = $1 FOR UPDATE)
                     UPDATE {s}.deliveries d
                        SET status = CASE WHEN d.attempts = 0 THEN 'pending' ELSE 'retrying' END,
                            next_attempt_at = now(), cycle_started_at = now(), cycle_attempts = 0,
                            lease_owner = NULL, lease_until = NULL, updated_at = now()
                       FROM prev
                      WHERE d.id = prev.id AND d.status <> 'succeeded'
                        AND (d.lease_until IS NULL OR d.lease_until < now())
                     RETURNING prev.status"
                ),
                &[&id],
            )
            .await?;
        if let Some(row) = row {
            self.notify(client).await?;
            let previous = DeliveryState::of_column(row.get(0));
            return Ok(Requeue::Queued(previous));
        }
        // Nothing changed: one read to say why (a first attempt that
        // succeeded from the stream has only its history row).
        let row = client
            .query_opt(
                &format!(
                    "SELECT status = 'succeeded' FROM {s}.deliveries WHERE id = $1
                     UNION ALL
                     SELECT true FROM {s}.delivered WHERE delivery_id = $1"
                ),
                &[&id],
            )
            .await?;
        Ok(match row {
            None => Requeue::NotFound,
            Some(r) if r.get::<_, bool>(0) => Requeue::Succeeded,
            // Leased at the time of the update (it may have finished since).
            Some(_) => Requeue::InFlight,
        })
    }

    /// Re-queue every `retrying` and `disabled` delivery (of one endpoint, if
    /// given) with a fresh cycle, except those a dispatcher holds a lease on
    /// right now. Returns how many.
    pub async fn retry_all_failed(
        &self,
        client: &Client,
        endpoint: Option<&str>,
    ) -> Result<u64, LedgerError> {
        let f = super::requeue::RequeueFilter {
            endpoint: endpoint.map(str::to_string),
            ..Default::default()
        };
        self.requeue(client, &f, false).await
    }

    /// Switch an endpoint on or off if it is not already; returns whether it
    /// changed. The check is the UPDATE's guard, so two operators (or an
    /// operator and a dispatcher disabling it) cannot both see a change.
    pub async fn switch_endpoint(
        &self,
        client: &Client,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, LedgerError> {
        self.update_endpoint(client, id, enabled, reason, true)
            .await
    }

    /// Enable or disable an endpoint as a whole. Returns false if unknown.
    pub async fn set_endpoint_enabled(
        &self,
        client: &Client,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, LedgerError> {
        self.update_endpoint(client, id, enabled, reason, false)
            .await
    }

    /// `only_if_changed`: leave the row alone when it already is in that state.
    async fn update_endpoint(
        &self,
        client: &Client,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
        only_if_changed: bool,
    ) -> Result<bool, LedgerError> {
        let s = self.q();
        let n = client
            .execute(
                &format!(
                    "UPDATE {s}.endpoints
                        SET enabled = $2,
                            disabled_at = CASE WHEN $2 THEN NULL ELSE now() END,
                            disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END,
                            failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END,
                            updated_at = now()
                      WHERE id = $1 AND (NOT $4 OR enabled <> $2)"
                ),
                &[&id, &enabled, &reason, &only_if_changed],
            )
            .await?;
        if n > 0 && enabled {
            self.notify(client).await?;
        }
        Ok(n > 0)
    }

    /// Track continuous failure of endpoints: `failed` ones start (or keep)
    /// their failing clock, `succeeded` ones reset it. Returns the endpoints
    /// that have now failed for at least `disable_after` and were disabled.
    pub async fn endpoint_health(
        &self,
        client: &Client,
        succeeded: &[String],
        failed: &[String],
        disable_after: Option<Duration>,
    ) -> Result<Vec<String>, LedgerError> {
        let s = self.q();
        if !succeeded.is_empty() {
            client
                .execute(
                    &format!(
                        "UPDATE {s}.endpoints SET failing_since = NULL
                         WHERE id = ANY($1) AND failing_since IS NOT NULL"
                    ),
                    &[&succeeded],
                )
                .await?;
        }
        if failed.is_empty() {
            return Ok(Vec::new());
        }
        client
            .execute(
                &format!(
                    "UPDATE {s}.endpoints SET failing_since = now()
                     WHERE id = ANY($1) AND failing_since IS NULL"
                ),
                &[&failed],
            )
            .await?;
        let Some(after) = disable_after else {
            return Ok(Vec::new());
        };
        let rows = client
            .query(
                &format!(
                    "UPDATE {s}.endpoints
                        SET enabled = false, disabled_at = now(), updated_at = now(),
                            disabled_reason = 'failing continuously since ' || failing_since
                      WHERE id = ANY($1) AND enabled
                        AND failing_since <= now() - make_interval(secs => $2)
                     RETURNING id"
                ),
                &[&failed, &after.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// The claim statement; see [`Ledger::claim`].
fn claim_sql(s: &str, per_record: bool) -> String {
    // "d is the record's earliest open delivery for this endpoint" (in WAL
    // order), as a correlated subquery rather than NOT EXISTS: an anti-join
    // lets the planner, misled by the stale statistics of a young ledger,
    // probe the index by endpoint alone and filter every open delivery per
    // candidate (hundreds of ms per claim); a subquery parameterised by
    // (endpoint_id, record) with LIMIT 1 is one probe of
    // deliveries_record_order. Event seq is not the order: the stream spills
    // a record's events to the ledger in whatever order they fail.
    let order_clause = if per_record {
        format!(
            "AND (d.commit_lsn, d.change_index, d.id) = (
                SELECT p.commit_lsn, p.change_index, p.id FROM {s}.deliveries p
                WHERE p.endpoint_id = d.endpoint_id AND p.record = d.record
                  AND p.status IN ('pending', 'retrying')
                ORDER BY p.commit_lsn, p.change_index, p.id LIMIT 1)"
        )
    } else {
        String::new()
    };
    // A capped endpoint's live leases are counted among its open
    // deliveries (a leased delivery is open until its attempt is recorded),
    // at most up to the cap. No index covers leases (one would make every
    // lease a non-HOT update), so the count reads the endpoint's open
    // deliveries: about 40-100 ms with 100,000 of them waiting.
    format!(
        "WITH req AS (
           SELECT l.endpoint_id,
                  CASE WHEN l.cap > 0 THEN least(l.n, l.cap - (
                    SELECT count(*) FROM (
                      SELECT 1 FROM {s}.deliveries x
                      WHERE x.endpoint_id = l.endpoint_id
                        AND x.status IN ('pending', 'retrying')
                        AND x.lease_until >= now()
                      ORDER BY x.next_attempt_at, x.id
                      LIMIT l.cap) leased))
                  ELSE l.n END AS n
           FROM unnest($3::text[], $5::int8[], $6::int8[]) AS l(endpoint_id, n, cap)
           WHERE l.n > 0
             AND l.endpoint_id NOT IN (SELECT id FROM {s}.endpoints WHERE NOT enabled)
         ), lim AS (
           SELECT endpoint_id, n FROM req WHERE n > 0
         ), cand AS (
           SELECT c.id FROM lim CROSS JOIN LATERAL (
             SELECT d.id, d.next_attempt_at FROM {s}.deliveries d
             WHERE d.endpoint_id = lim.endpoint_id
               AND d.status IN ('pending', 'retrying')
               AND d.next_attempt_at <= now()
               AND (d.lease_until IS NULL OR d.lease_until < now())
               {order_clause}
             ORDER BY d.next_attempt_at, d.id
             LIMIT lim.n
             FOR UPDATE OF d SKIP LOCKED
           ) c
           ORDER BY c.next_attempt_at, c.id
           LIMIT $1
         )
         UPDATE {s}.deliveries d
            SET lease_owner = $2, lease_until = now() + make_interval(secs => $4)
           FROM cand, {s}.events e
          WHERE d.id = cand.id AND e.seq = d.event_seq
         RETURNING d.id, d.endpoint_id, e.event_id, e.name, e.body, d.attempts,
                   d.cycle_attempts, d.cycle_started_at"
    )
}

/// The record statement; see [`Ledger::record`].
fn record_sql(s: &str) -> String {
    format!(
        "WITH r AS (
           SELECT * FROM unnest($1::int8[], $2::text[], $3::timestamptz[], $4::int4[],
                                $5::text[], $6::timestamptz[], $7::int4[], $8::text[],
                                $9::text[], $10::text[], $12::text[], $13::text[])
             AS r(id, status, next_at, code, err, started, dur, kind, excerpt, headers,
                  location, retry_after)
         ), locked AS MATERIALIZED (
           {locked}
         ), upd AS (
           UPDATE {s}.deliveries d
              SET status = r.status,
                  next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
                  attempts = d.attempts + 1,
                  cycle_attempts = d.cycle_attempts + 1,
                  lease_owner = NULL, lease_until = NULL,
                  last_status_code = r.code, last_error = r.err,
                  updated_at = now()
             FROM r JOIN locked USING (id)
            WHERE d.id = r.id
           RETURNING d.id
         ), ins AS (
           INSERT INTO {s}.attempts
             (delivery_id, started_at, duration_ms, status_code, error_kind, error,
              response_excerpt, request_headers, location, retry_after)
           SELECT r.id, r.started, r.dur, r.code, r.kind, r.err, r.excerpt, r.headers::jsonb,
                  r.location, r.retry_after
           FROM r JOIN upd USING (id)
           RETURNING 1
         )
         SELECT count(*) FROM ins",
        locked = locked_in_order(s, "$1", "$11")
    )
}

/// The deliveries among ids `ids` leased by `owner`, locked in id order.
/// Every statement that updates several leased deliveries locks them so:
/// two of them (a lease renewal and a record, say) then never wait for
/// each other in a circle, which Postgres would end as a deadlock.
fn locked_in_order(s: &str, ids: &str, owner: &str) -> String {
    format!(
        "SELECT id FROM {s}.deliveries
          WHERE id = ANY({ids}) AND lease_owner = {owner}
          ORDER BY id FOR UPDATE"
    )
}
