//! What the stream asks the ledger to keep per-record order across both
//! paths: which records and endpoints have deliveries waiting (pending or
//! retrying), and which endpoints are disabled.

use tokio_postgres::Client;

use super::{Ledger, LedgerError};

/// (endpoint id, `slug:record_key`).
pub type OpenKey = (String, String);

impl Ledger {
    /// Records with open deliveries, at most `limit` (then `true`: there
    /// are more).
    pub async fn open_records(
        &self,
        client: &Client,
        limit: i64,
    ) -> Result<(Vec<OpenKey>, bool), LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT endpoint_id, record FROM {s}.deliveries
                     WHERE status IN ('pending', 'retrying') LIMIT $1"
                ),
                &[&(limit + 1)],
            )
            .await?;
        let more = rows.len() as i64 > limit;
        let keys = rows
            .iter()
            .take(limit as usize)
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok((keys, more))
    }

    /// Of `keys`, those that still have open deliveries.
    pub async fn still_open(
        &self,
        client: &Client,
        keys: &[OpenKey],
    ) -> Result<Vec<OpenKey>, LedgerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.q();
        let (eps, records): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(e, r)| (e.as_str(), r.as_str())).unzip();
        let rows = client
            .query(
                &format!(
                    "SELECT k.e, k.r FROM unnest($1::text[], $2::text[]) AS k(e, r)
                     WHERE EXISTS (SELECT 1 FROM {s}.deliveries p
                                   WHERE p.endpoint_id = k.e AND p.record = k.r
                                     AND p.status IN ('pending', 'retrying'))"
                ),
                &[&eps, &records],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Of `endpoints`, those with open deliveries.
    pub async fn endpoints_with_open(
        &self,
        client: &Client,
        endpoints: &[String],
    ) -> Result<Vec<String>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT e FROM unnest($1::text[]) AS e
                     WHERE EXISTS (SELECT 1 FROM {s}.deliveries p
                                   WHERE p.endpoint_id = e
                                     AND p.status IN ('pending', 'retrying'))"
                ),
                &[&endpoints],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Endpoints disabled as a whole.
    pub async fn disabled_endpoints(&self, client: &Client) -> Result<Vec<String>, LedgerError> {
        let s = self.q();
        let rows = client
            .query(
                &format!("SELECT id FROM {s}.endpoints WHERE NOT enabled"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
