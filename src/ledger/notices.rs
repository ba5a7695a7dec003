//! What capture tells operators beyond its own log, kept in the ledger so
//! that `walhook status` and the admin API (other processes) show it: a
//! capture blocked by something only the operator can fix (error), and
//! schema drift walhook follows (warnings: a renamed table or excluded
//! column, a dropped primary key). Capture writes a notice when it happens
//! and deletes it once it is resolved.

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use super::{Ledger, LedgerError};
use crate::pg::Lsn;

/// How serious a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// walhook goes on; the operator should update the config.
    Warning,
    /// Capture is stopped until the operator acts.
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One notice as written by capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotice {
    /// What kind of thing happened (`capture_blocked`, `table_renamed`...).
    pub kind: String,
    /// What it happened to (a slot, an object's slug...): one notice per
    /// (kind, subject).
    pub subject: String,
    pub level: Level,
    pub message: String,
    /// For a blocked capture: the commit position of the transaction it
    /// could not get past (none when it stopped before reading any).
    pub at: Option<Lsn>,
}

/// One notice as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoticeView {
    pub kind: String,
    pub subject: String,
    pub level: Level,
    pub message: String,
    /// RFC 3339 UTC: when it was first written.
    pub since: String,
    /// RFC 3339 UTC: when capture last wrote it.
    pub updated_at: String,
}

/// RFC 3339 in UTC with milliseconds, in SQL.
const RFC3339: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

impl Ledger {
    /// Write `n`, replacing the notice of the same kind and subject (its
    /// `since` is kept while the same problem goes on).
    pub async fn set_notice(&self, client: &Client, n: &NewNotice) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.notices (kind, subject, level, message, at_lsn)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (kind, subject) DO UPDATE SET
                       level = EXCLUDED.level, message = EXCLUDED.message,
                       at_lsn = EXCLUDED.at_lsn, updated_at = now()"
                ),
                &[
                    &n.kind,
                    &n.subject,
                    &n.level.as_str(),
                    &n.message,
                    &n.at.map(|l| PgLsn::from(l.as_u64())),
                ],
            )
            .await?;
        Ok(())
    }

    /// Delete the notice of `kind` about `subject`, if any.
    pub async fn clear_notice(
        &self,
        client: &Client,
        kind: &str,
        subject: &str,
    ) -> Result<(), LedgerError> {
        let s = self.q();
        client
            .execute(
                &format!("DELETE FROM {s}.notices WHERE kind = $1 AND subject = $2"),
                &[&kind, &subject],
            )
            .await?;
        Ok(())
    }

    /// Make the warnings exactly `warnings`: the others are resolved.
    pub async fn sync_warnings(
        &self,
        client: &Client,
        warnings: &[NewNotice],
    ) -> Result<(), LedgerError> {
        let s = self.q();
        let keys: Vec<String> = warnings
            .iter()
            .map(|n| format!("{}\u{1f}{}", n.kind, n.subject))
            .collect();
        client
            .execute(
                &format!(
                    "DELETE FROM {s}.notices WHERE level = 'warning'
                       AND NOT (kind || chr(31) || subject = ANY($1::text[]))"
                ),
                &[&keys],
            )
            .await?;
        for n in warnings {
            self.set_notice(client, n).await?;
        }
        Ok(())
    }

    /// The notice of `kind` about `subject`: its message and position.
    pub async fn notice(
        &self,
        client: &Client,
        kind: &str,
        subject: &str,
    ) -> Result<Option<(String, Option<Lsn>)>, LedgerError> {
        let s = self.q();
        let row = client
            .query_opt(
                &format!(
                    "SELECT message, at_lsn FROM {s}.notices WHERE kind = $1 AND subject = $2"
                ),
                &[&kind, &subject],
            )
            .await?;
        Ok(row.map(|r| {
            let at: Option<PgLsn> = r.get(1);
            (r.get(0), at.map(Lsn::from))
        }))
    }

    /// Every notice, errors first, then oldest first.
    pub async fn notices(&self, client: &Client) -> Result<Vec<NoticeView>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT kind, subject, level, message,
                            to_char(since AT TIME ZONE 'UTC', {RFC3339}),
                            to_char(updated_at AT TIME ZONE 'UTC', {RFC3339})
                     FROM {s}.notices ORDER BY level = 'warning', since, kind, subject"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NoticeView {
                kind: r.get(0),
                subject: r.get(1),
                level: if r.get::<_, &str>(2) == "error" {
                    Level::Error
                } else {
                    Level::Warning
                },
                message: r.get(3),
                since: r.get(4),
                updated_at: r.get(5),
            })
            .collect())
    }
}
