//! What the ledger remembers of each mapped table's identity: its relation
//! oid and the attribute numbers of its key and excluded columns. The
//! catalog knows tables and columns by name only as they are now; with this
//! a table renamed while walhook was stopped is still followed, and a column
//! renamed since its exclusion was configured is still excluded.

use tokio_postgres::Client;

use super::{Ledger, LedgerError};

/// One mapped table as the ledger remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub slug: String,
    pub relid: u32,
    /// `schema.table` when it was last saved.
    pub table_name: String,
    pub key_attnums: Vec<i16>,
    /// Excluded columns: attribute numbers with the names they had when saved.
    pub excluded: Vec<(i16, String)>,
}

impl Ledger {
    /// Every remembered mapped table (none before `walhook setup`).
    pub async fn objects(&self, client: &Client) -> Result<Vec<ObjectRow>, LedgerError> {
        if !self.missing_tables(client).await?.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT slug, relid, table_name, key_attnums, excluded_attnums, excluded_names
                     FROM {s}.objects ORDER BY slug"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let attnums: Vec<i16> = r.get(4);
                let names: Vec<String> = r.get(5);
                ObjectRow {
                    slug: r.get(0),
                    relid: r.get(1),
                    table_name: r.get(2),
                    key_attnums: r.get(3),
                    excluded: attnums.into_iter().zip(names).collect(),
                }
            })
            .collect())
    }

    /// Remember `row` (replacing what was remembered for its slug).
    pub async fn save_object(&self, client: &Client, row: &ObjectRow) -> Result<(), LedgerError> {
        let s = self.q();
        let (attnums, names): (Vec<i16>, Vec<&str>) =
            row.excluded.iter().map(|(a, n)| (*a, n.as_str())).unzip();
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.objects
                       (slug, relid, table_name, key_attnums, excluded_attnums, excluded_names)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (slug) DO UPDATE SET
                       relid = EXCLUDED.relid, table_name = EXCLUDED.table_name,
                       key_attnums = EXCLUDED.key_attnums,
                       excluded_attnums = EXCLUDED.excluded_attnums,
                       excluded_names = EXCLUDED.excluded_names, updated_at = now()
                     WHERE ({s}.objects.relid, {s}.objects.table_name, {s}.objects.key_attnums,
                            {s}.objects.excluded_attnums, {s}.objects.excluded_names)
                       IS DISTINCT FROM (EXCLUDED.relid, EXCLUDED.table_name, EXCLUDED.key_attnums,
                            EXCLUDED.excluded_attnums, EXCLUDED.excluded_names)"
                ),
                &[
                    &row.slug,
                    &row.relid,
                    &row.table_name,
                    &row.key_attnums,
                    &attnums,
                    &names,
                ],
            )
            .await?;
        Ok(())
    }
}
