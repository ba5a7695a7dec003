//! Backfill jobs: `walhook backfill` asks for one here, the process that
//! reads the slot runs it chunk by chunk and records its progress, and
//! `status`, the API and the page show it.

use serde::Serialize;
use tokio_postgres::{Client, Row};

use super::{Ledger, LedgerError};

/// A backfill as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillRequest {
    pub slug: String,
    /// Only this endpoint (else every subscribed one).
    pub endpoint: Option<String>,
    /// An SQL condition on the table's rows.
    pub where_sql: Option<String>,
    /// Send `{slug}.create` instead of `{slug}.backfill`.
    pub as_create: bool,
    /// Rows per second at most.
    pub rate: Option<f64>,
}

/// A backfill job and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backfill {
    pub id: i64,
    pub slug: String,
    pub endpoint: Option<String>,
    pub where_sql: Option<String>,
    pub as_create: bool,
    pub rate: Option<f64>,
    /// `queued`, `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// The key of the last row sent (and resolved), as text values.
    pub last_key: Option<Vec<String>>,
    pub rows_sent: i64,
    pub error: Option<String>,
    pub requested_at: String,
    /// When a process began running it.
    pub started_at: Option<String>,
    /// When it ended (done, cancelled or failed).
    pub finished_at: Option<String>,
    pub updated_at: String,
}

impl Backfill {
    /// Whether it is still to run or running.
    pub fn active(&self) -> bool {
        self.state == "queued" || self.state == "running"
    }

    /// The name of the events it sends.
    pub fn event_name(&self) -> String {
        event_name(&self.slug, self.as_create)
    }
}

/// `{slug}.backfill`, or `{slug}.create` with `--as create`.
pub fn event_name(slug: &str, as_create: bool) -> String {
    format!("{slug}.{}", if as_create { "create" } else { "backfill" })
}

const COLUMNS: &str =
    "id, slug, endpoint_id, where_sql, as_create, rate, state, last_key, rows_sent,
     error, to_char(requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
     to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
     to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn backfill(r: &Row) -> Backfill {
    Backfill {
        id: r.get(0),
        slug: r.get(1),
        endpoint: r.get(2),
        where_sql: r.get(3),
        as_create: r.get(4),
        rate: r.get(5),
        state: r.get(6),
        last_key: r.get(7),
        rows_sent: r.get(8),
        error: r.get(9),
        requested_at: r.get(10),
        updated_at: r.get(11),
        started_at: r.get(12),
        finished_at: r.get(13),
    }
}

impl Ledger {
    /// Queue a backfill; returns it.
    pub async fn request_backfill(
        &self,
        client: &Client,
        req: &BackfillRequest,
    ) -> Result<Backfill, LedgerError> {
        let s = self.q();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {s}.backfills (slug, endpoint_id, where_sql, as_create, rate)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
                ),
                &[
                    &req.slug,
                    &req.endpoint,
                    &req.where_sql,
                    &req.as_create,
                    &req.rate,
                ],
            )
            .await?;
        self.notify(client).await?;
        Ok(backfill(&row))
    }

    /// Backfills, newest first.
    pub async fn backfills(
        &self,
        client: &Client,
        limit: i64,
    ) -> Result<Vec<Backfill>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM {s}.backfills ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(backfill).collect())
    }

    /// Backfill `id`, if there is one.
    pub async fn backfill(
        &self,
        client: &Client,
        id: i64,
    ) -> Result<Option<Backfill>, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {s}.backfills WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(backfill))
    }

    /// A process begins (or resumes) running backfill `id`.
    pub async fn start_backfill(&self, client: &Client, id: i64) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!(
                    "UPDATE {s}.backfills
                        SET state = 'running', started_at = coalesce(started_at, now()),
                            updated_at = now()
                      WHERE id = $1 AND state IN ('queued', 'running')"
                ),
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// The oldest backfill to run (one that was running first: it resumes).
    pub async fn next_backfill(&self, client: &Client) -> Result<Option<Backfill>, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM {s}.backfills WHERE state IN ('queued', 'running')
                     ORDER BY state = 'running' DESC, id LIMIT 1"
                ),
                &[],
            )
            .await?;
        Ok(row.as_ref().map(backfill))
    }

    /// A chunk is resolved: it ended at `last_key` and sent `rows` more.
    /// Returns false when the job was cancelled meanwhile.
    pub async fn backfill_progress(
        &self,
        client: &Client,
        id: i64,
        last_key: &[String],
        rows: i64,
    ) -> Result<bool, LedgerError> {
        let s = self.q();
        let n = client
            .execute(
                &format!(
                    "UPDATE {s}.backfills
                        SET state = 'running', last_key = $2, rows_sent = rows_sent + $3,
                            updated_at = now()
                      WHERE id = $1 AND state IN ('queued', 'running')"
                ),
                &[&id, &last_key, &rows],
            )
            .await?;
        Ok(n > 0)
    }

    /// The job ended (`done` or `failed`, with the reason).
    pub async fn finish_backfill(
        &self,
        client: &Client,
        id: i64,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!(
                    "UPDATE {s}.backfills
                        SET state = $2, error = $3, finished_at = now(), updated_at = now()
                      WHERE id = $1 AND state IN ('queued', 'running')"
                ),
                &[&id, &state, &error],
            )
            .await?;
        Ok(())
    }

    /// Cancel a queued or running backfill; returns whether one was.
    pub async fn cancel_backfill(&self, client: &Client, id: i64) -> Result<bool, LedgerError> {
        let s = self.q();
        let n = client
            .execute(
                &format!(
                    "UPDATE {s}.backfills
                        SET state = 'cancelled', finished_at = now(), updated_at = now()
                      WHERE id = $1 AND state IN ('queued', 'running')"
                ),
                &[&id],
            )
            .await?;
        Ok(n > 0)
    }

    /// Whether backfill `id` is still to run (not cancelled or ended).
    pub async fn backfill_active(&self, client: &Client, id: i64) -> Result<bool, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {s}.backfills WHERE id = $1 AND state IN ('queued', 'running')"
                ),
                &[&id],
            )
            .await?;
        Ok(row.is_some())
    }
}
