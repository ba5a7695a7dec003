//! Reading the ledger's history: every query `walhook status|deliveries|
//! endpoints`, the admin API and the history page run over the ledger's
//! tables, and the row types they return.
//!
//! The rows are what operators are shown, so they are `Serialize` and
//! display-ready: timestamps are RFC 3339 strings in UTC with milliseconds,
//! LSNs are text as Postgres prints them. The admin room re-exports them
//! rather than mapping them to look-alike types.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Row};

use super::states::SHOWN_STATE_SQL;
pub use super::states::{DeliveryState, StateCounts, UnknownState};
use super::{Ledger, LedgerError};
use crate::pg::{Lsn, unix_ms};

/// Deliveries by state, overall and per endpoint id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub all: StateCounts,
    pub per_endpoint: BTreeMap<String, StateCounts>,
}

/// Events in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub total: i64,
    pub by_name: BTreeMap<String, i64>,
}

/// The replication position the ledger holds for a slot, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRow {
    pub lsn: Lsn,
    pub updated_at: String,
    /// Seconds since `updated_at`, by the database's clock.
    pub age_seconds: Option<f64>,
}

/// An endpoint's row in the ledger (state that outlives a process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: String,
    pub enabled: bool,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<String>,
}

/// One delivery, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliverySummary {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub endpoint: String,
    /// `slug:record_key`
    pub record: String,
    /// `held` (derived) when pending or retrying while its endpoint is disabled.
    pub status: DeliveryState,
    /// Why it is held: the endpoint's disabled reason.
    pub held_reason: Option<String>,
    pub attempts: i32,
    /// An attempt is under way (a dispatcher holds the lease).
    pub in_flight: bool,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending and retrying only, not held).
    pub next_attempt_at: Option<String>,
    pub commit_time: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    pub id: i64,
    pub started_at: String,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    /// `status`, `timeout`, `connect` or `other`; absent on success.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The headers sent (signatures are HMAC outputs, not secrets).
    pub request_headers: serde_json::Value,
    /// The response's `Location` header (a redirect's target), as received.
    pub location: Option<String>,
    /// The response's `Retry-After` header, as received.
    pub retry_after: Option<String>,
}

/// One delivery with the event body and every attempt, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliverySummary,
    pub body: serde_json::Value,
    pub attempts: Vec<AttemptView>,
}

/// What to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// The shown state (`held` included).
    pub status: Option<DeliveryState>,
    /// An event id (has `:`), an exact name, or a filter (`lead.*`, `*.delete`).
    pub event: Option<String>,
    pub endpoint: Option<String>,
    /// Only deliveries created at or after this time.
    pub since: Option<SystemTime>,
    /// Only deliveries created before this time.
    pub until: Option<SystemTime>,
    /// Only deliveries with a smaller id (paging, newest first).
    pub before: Option<i64>,
    /// How many at most; the admin room applies its default and bounds.
    pub limit: Option<i64>,
}

/// How an `event` filter is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventMatch {
    Id(String),
    /// A SQL `LIKE` pattern for the name.
    NameLike(String),
}

/// Event ids contain `:`, names never do; `*` in a name is a wildcard.
pub fn event_match(s: &str) -> EventMatch {
    if s.contains(':') {
        return EventMatch::Id(s.to_string());
    }
    let mut like = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            '*' => like.push('%'),
            c => like.push(c),
        }
    }
    EventMatch::NameLike(like)
}

/// RFC 3339 in UTC with milliseconds (`2025-02-21T08:33:28.148Z`).
fn rfc3339(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&format).unwrap_or_default()
}

fn opt_time(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}

/// The columns [`summary`] reads, over [`delivery_rows`].
/// (Its sixth column is [`SHOWN_STATE_SQL`]; a test keeps them equal.)
const SUMMARY_COLUMNS: &str = "d.id, e.event_id, e.name, d.endpoint_id, d.record,
        CASE WHEN d.status IN ('pending', 'retrying') AND h.enabled IS FALSE
        THEN 'held' ELSE d.status END, d.attempts,
        coalesce(d.lease_until > now(), false), d.last_status_code, d.last_error,
        CASE WHEN d.status IN ('pending', 'retrying') AND h.enabled IS NOT FALSE
             THEN d.next_attempt_at END,
        e.commit_time, d.created_at, d.updated_at,
        CASE WHEN d.status IN ('pending', 'retrying') AND h.enabled IS FALSE
             THEN coalesce(h.disabled_reason, 'the endpoint is disabled') END";

/// Ledger deliveries with their event and their endpoint's state, as
/// `d`, `e` and `h`.
fn delivery_rows(s: &str) -> String {
    format!(
        "{s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq
         LEFT JOIN {s}.endpoints h ON h.id = d.endpoint_id"
    )
}

/// The same columns over `delivered x`: a first attempt that succeeded from
/// the stream is a delivery with one attempt.
const DELIVERED_COLUMNS: &str =
    "x.delivery_id, x.event_id, x.event_name, x.endpoint_id, x.record, 'succeeded'::text, 1,
        false, x.status_code::int, NULL::text, NULL::timestamptz,
        x.commit_time, x.started_at, x.started_at, NULL::text";

fn summary(r: &Row) -> DeliverySummary {
    DeliverySummary {
        id: r.get(0),
        event_id: r.get(1),
        event: r.get(2),
        endpoint: r.get(3),
        record: r.get(4),
        status: DeliveryState::of_column(r.get(5)),
        held_reason: r.get(14),
        attempts: r.get(6),
        in_flight: r.get(7),
        last_status_code: r.get(8),
        last_error: r.get(9),
        next_attempt_at: opt_time(r.get(10)),
        commit_time: rfc3339(r.get(11)),
        created_at: rfc3339(r.get(12)),
        updated_at: rfc3339(r.get(13)),
    }
}

fn attempt(r: &Row) -> AttemptView {
    AttemptView {
        id: r.get(1),
        started_at: rfc3339(r.get(2)),
        duration_ms: r.get(3),
        status_code: r.get(4),
        error_kind: r.get::<_, Option<String>>(5).filter(|k| k != "none"),
        error: r.get(6),
        response_excerpt: r.get(7),
        request_headers: r.get(8),
        location: r.get(9),
        retry_after: r.get(10),
    }
}

impl Ledger {
    /// The position the ledger holds for `slot`; `None` also when the
    /// ledger is not set up (the slot can exist without it).
    pub async fn progress_row(
        &self,
        client: &Client,
        slot: &str,
    ) -> Result<Option<ProgressRow>, LedgerError> {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(format('%I.progress', $1::text)) IS NOT NULL",
                &[&self.schema()],
            )
            .await?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let s = self.q();
        let row = client
            .query_opt(
                &format!(
                    "SELECT lsn, updated_at, extract(epoch FROM now() - updated_at)::float8
                     FROM {s}.progress WHERE slot = $1"
                ),
                &[&slot],
            )
            .await?;
        Ok(row.map(|r| ProgressRow {
            lsn: Lsn::from(r.get::<_, PgLsn>(0)),
            updated_at: rfc3339(r.get(1)),
            age_seconds: r.get(2),
        }))
    }

    /// Deliveries by state, overall and per endpoint.
    pub async fn delivery_counts(&self, client: &Client) -> Result<DeliveryCounts, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT d.endpoint_id, {SHOWN_STATE_SQL}, count(*)
                     FROM {s}.deliveries d LEFT JOIN {s}.endpoints h ON h.id = d.endpoint_id
                     GROUP BY 1, 2"
                ),
                &[],
            )
            .await?;
        let mut out = DeliveryCounts::default();
        for r in rows {
            let state = DeliveryState::of_column(r.get(1));
            let n: i64 = r.get(2);
            out.all.add(state, n);
            out.per_endpoint.entry(r.get(0)).or_default().add(state, n);
        }
        // First attempts that succeeded from the stream (counted as written,
        // so pruning their history does not lower the count).
        for (endpoint, n) in self.counters(client, "delivered:").await? {
            out.all.add(DeliveryState::Succeeded, n);
            out.per_endpoint
                .entry(endpoint)
                .or_default()
                .add(DeliveryState::Succeeded, n);
        }
        Ok(out)
    }

    /// Deliveries not yet succeeded, by (endpoint, state); endpoints with
    /// none are absent.
    pub async fn open_counts(
        &self,
        client: &Client,
    ) -> Result<BTreeMap<(String, DeliveryState), i64>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT endpoint_id, status, count(*) FROM {s}.deliveries
                     WHERE status <> 'succeeded' GROUP BY 1, 2"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), DeliveryState::of_column(r.get(1))), r.get(2)))
            .collect())
    }

    /// Every endpoint row, by id.
    pub async fn endpoint_rows(&self, client: &Client) -> Result<Vec<EndpointRow>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT id, enabled, disabled_at, disabled_reason, failing_since
                     FROM {s}.endpoints ORDER BY id"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| EndpointRow {
                id: r.get(0),
                enabled: r.get(1),
                disabled_at: opt_time(r.get(2)),
                disabled_reason: r.get(3),
                failing_since: opt_time(r.get(4)),
            })
            .collect())
    }

    /// Events captured, by name (counted as the stream records them).
    pub async fn event_counts(&self, client: &Client) -> Result<EventCounts, LedgerError> {
        let mut out = EventCounts::default();
        for (name, n) in self.counters(client, "captured:").await? {
            out.total += n;
            out.by_name.insert(name, n);
        }
        Ok(out)
    }

    /// Counters named `{prefix}{key}`, by key.
    async fn counters(
        &self,
        client: &Client,
        prefix: &str,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT substr(name, length($1) + 1), value FROM {s}.counters
                     WHERE starts_with(name, $1) ORDER BY name"
                ),
                &[&prefix],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// TRUNCATEs counted by [`Ledger::count_truncate`].
    pub async fn truncates(&self, client: &Client) -> Result<i64, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!("SELECT value FROM {s}.counters WHERE name = 'truncates'"),
                &[],
            )
            .await?;
        Ok(row.map(|r| r.get(0)).unwrap_or(0))
    }

    /// Deliveries matching `f`, newest first, `limit` at most.
    pub async fn deliveries(
        &self,
        client: &Client,
        f: &DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<DeliverySummary>, LedgerError> {
        let s = self.q();
        let (event_id, name_like) = match f.event.as_deref().map(event_match) {
            None => (None, None),
            Some(EventMatch::Id(id)) => (Some(id), None),
            Some(EventMatch::NameLike(p)) => (None, Some(p)),
        };
        let status = f.status.map(|s| s.as_str());
        let params: [&(dyn ToSql + Sync); 8] = [
            &status,
            &event_id,
            &name_like,
            &f.endpoint,
            &f.since,
            &f.before,
            &limit,
            &f.until,
        ];
        let from = delivery_rows(&s);
        let rows = client
            .query(
                &format!(
                    "(SELECT {SUMMARY_COLUMNS}
                      FROM {from}
                      WHERE ($1::text IS NULL OR {SHOWN_STATE_SQL} = $1)
                        AND ($2::text IS NULL OR e.event_id = $2)
                        AND ($3::text IS NULL OR e.name LIKE $3)
                        AND ($4::text IS NULL OR d.endpoint_id = $4)
                        AND ($5::timestamptz IS NULL OR d.created_at >= $5)
                        AND ($8::timestamptz IS NULL OR d.created_at < $8)
                        AND ($6::int8 IS NULL OR d.id < $6)
                      ORDER BY d.id DESC LIMIT $7)
                     UNION ALL
                     (SELECT {DELIVERED_COLUMNS}
                      FROM {s}.delivered x
                      WHERE ($1::text IS NULL OR $1 = 'succeeded')
                        AND ($2::text IS NULL OR x.event_id = $2)
                        AND ($3::text IS NULL OR x.event_name LIKE $3)
                        AND ($4::text IS NULL OR x.endpoint_id = $4)
                        AND ($5::timestamptz IS NULL OR x.started_at >= $5)
                        AND ($8::timestamptz IS NULL OR x.started_at < $8)
                        AND ($6::int8 IS NULL OR x.delivery_id < $6)
                      ORDER BY x.delivery_id DESC LIMIT $7)
                     ORDER BY 1 DESC LIMIT $7"
                ),
                &params,
            )
            .await?;
        Ok(rows.iter().map(summary).collect())
    }

    /// One delivery with its event body and attempts.
    pub async fn delivery(
        &self,
        client: &Client,
        id: i64,
    ) -> Result<Option<DeliveryDetail>, LedgerError> {
        let s = self.q();
        let from = delivery_rows(&s);
        let rows = client
            .query(
                &format!(
                    "SELECT {SUMMARY_COLUMNS}, e.body
                     FROM {from}
                     WHERE d.id = $1
                     UNION ALL
                     SELECT {DELIVERED_COLUMNS}, e.body
                     FROM {s}.delivered x LEFT JOIN {s}.events e ON e.event_id = x.event_id
                     WHERE x.delivery_id = $1"
                ),
                &[&id],
            )
            .await?;
        Ok(self.details(client, rows).await?.pop())
    }

    /// Every delivery of one event (oldest first), with body and attempts.
    pub async fn event_deliveries(
        &self,
        client: &Client,
        event_id: &str,
    ) -> Result<Vec<DeliveryDetail>, LedgerError> {
        let s = self.q();
        let from = delivery_rows(&s);
        let rows = client
            .query(
                &format!(
                    "SELECT {SUMMARY_COLUMNS}, e.body
                     FROM {from}
                     WHERE e.event_id = $1
                     UNION ALL
                     SELECT {DELIVERED_COLUMNS}, e.body
                     FROM {s}.delivered x LEFT JOIN {s}.events e ON e.event_id = x.event_id
                     WHERE x.event_id = $1
                     ORDER BY 1"
                ),
                &[&event_id],
            )
            .await?;
        self.details(client, rows).await
    }

    /// The summaries of `rows` (summary columns, then the body) with their attempts.
    async fn details(
        &self,
        client: &Client,
        rows: Vec<Row>,
    ) -> Result<Vec<DeliveryDetail>, LedgerError> {
        let s = self.q();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut attempts: BTreeMap<i64, Vec<AttemptView>> = BTreeMap::new();
        for r in client
            .query(
                &format!(
                    "SELECT delivery_id, id, started_at, duration_ms, status_code, error_kind, error,
                            response_excerpt, request_headers, location, retry_after
                     FROM {s}.attempts WHERE delivery_id = ANY($1)
                     UNION ALL
                     SELECT delivery_id, delivery_id, started_at, duration_ms, status_code::int,
                            NULL, NULL, response_excerpt, '{{}}'::jsonb, NULL, NULL
                     FROM {s}.delivered WHERE delivery_id = ANY($1)
                     ORDER BY 2"
                ),
                &[&ids],
            )
            .await?
        {
            attempts.entry(r.get(0)).or_default().push(attempt(&r));
        }
        Ok(rows
            .iter()
            .map(|r| {
                // A first attempt's event body is kept with keep_bodies = "all".
                let body = match r.get::<_, Option<String>>(15) {
                    Some(b) => serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)),
                    None => serde_json::Value::Null,
                };
                let delivery = summary(r);
                DeliveryDetail {
                    attempts: attempts.remove(&delivery.id).unwrap_or_default(),
                    body,
                    delivery,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn event_filters() {
        assert_eq!(
            event_match("app:lead:1:k:lead.create:abcdefgh"),
            EventMatch::Id("app:lead:1:k:lead.create:abcdefgh".into())
        );
        assert_eq!(event_match("lead.*"), EventMatch::NameLike("lead.%".into()));
        assert_eq!(
            event_match("*.delete"),
            EventMatch::NameLike("%.delete".into())
        );
        assert_eq!(
            event_match("my_obj.create"),
            EventMatch::NameLike("my\\_obj.create".into())
        );
    }

    #[test]
    fn summary_shows_the_derived_state() {
        assert!(SUMMARY_COLUMNS.contains(SHOWN_STATE_SQL));
    }

    #[test]
    fn timestamps_are_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_740_126_808_148);
        assert_eq!(rfc3339(t), "2025-02-21T08:33:28.148Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
