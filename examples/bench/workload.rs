//! The application's side: a CRM-like table with ten columns and the
//! transactions the benchmarks commit to it.

use std::time::Instant;

use anyhow::{Result, bail};
use tokio_postgres::Client;

pub const LEADS_DDL: &str = "
CREATE TABLE public.leads (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL,
    phone      text,
    company    text,
    stage      text NOT NULL,
    score      integer NOT NULL,
    amount     numeric(12,2),
    tags       text[],
    updated_at timestamptz NOT NULL
);
-- The workload table is not what is measured: keep autovacuum off it.
ALTER TABLE public.leads SET (autovacuum_enabled = off);
";

/// Rows `$1..=$2` (ids `lead_000000001`...), about 200 bytes each.
pub const INSERT_SQL: &str = "
INSERT INTO public.leads (id, name, email, phone, company, stage, score, amount, tags, updated_at)
SELECT 'lead_' || lpad(g::text, 9, '0'),
       'Lead Person ' || g,
       'lead.person.' || g || '@example.com',
       '+1-555-' || lpad((g % 10000)::text, 4, '0'),
       'Company ' || (g % 5000) || ' Ltd',
       (ARRAY['new','contacted','qualified','proposal','won','lost'])[1 + g % 6],
       (g % 100)::int,
       ((g * 37) % 1000000) / 100.0,
       ARRAY['tag' || (g % 7), 'region' || (g % 3)],
       clock_timestamp()
FROM generate_series($1::int8, $2::int8) AS g";

/// Changes three columns of each listed row (so every row emits an event).
const UPDATE_SQL: &str = "
UPDATE public.leads
   SET stage = (ARRAY['new','contacted','qualified','proposal','won','lost'])[1 + (score + 1) % 6],
       score = score + 1,
       updated_at = clock_timestamp()
 WHERE id = ANY($1::text[])";

const DELETE_SQL: &str = "DELETE FROM public.leads WHERE id = ANY($1::text[])";

pub fn lead_id(n: u64) -> String {
    format!("lead_{n:09}")
}

/// The number in a `lead_000000123` id.
pub fn lead_number(id: &str) -> Option<u64> {
    id.strip_prefix("lead_")?.parse().ok()
}

pub enum Op {
    Insert(u64, u64),
    Update(Vec<String>),
    Delete(Vec<String>),
}

/// The transactions of the mixed workload: `changes / t` transactions of
/// `t` rows, in groups of ten: six insert new rows, three update rows
/// inserted earlier, one deletes rows no update touches, so every statement
/// changes exactly `t` rows. A last, incomplete group keeps the group's
/// order (inserts first). 200,200 changes in transactions of 100 are 200
/// groups and two more inserts: 120,200 inserts, 60,000 updates, 20,000
/// deletes.
pub fn workload(changes: u64, t: u64) -> Result<Vec<Op>> {
    if t == 0 || !changes.is_multiple_of(t) {
        bail!("--changes must be a multiple of --txn-rows");
    }
    let txns = (changes / t) as usize;
    // Each group inserts 6t rows; its last t are deleted, the first 5t
    // survive. Surviving row number r (0-based, over all groups):
    let survivor = |r: u64| (r / (5 * t)) * 6 * t + r % (5 * t) + 1;
    let mut ops = Vec::with_capacity(txns + 10);
    for k in 0..txns.div_ceil(10) as u64 {
        for i in 0..6 {
            let first = 6 * t * k + i * t + 1;
            ops.push(Op::Insert(first, first + t - 1));
        }
        for i in 0..3 {
            let first = 3 * t * k + i * t;
            ops.push(Op::Update(
                (first..first + t).map(|r| lead_id(survivor(r))).collect(),
            ));
        }
        let first = 6 * t * k + 5 * t + 1;
        ops.push(Op::Delete((first..first + t).map(lead_id).collect()));
    }
    ops.truncate(txns);
    Ok(ops)
}

/// "120,200 inserts, 60,000 updates (3 columns), 20,000 deletes".
pub fn describe(ops: &[Op]) -> String {
    let (mut ins, mut upd, mut del) = (0u64, 0u64, 0u64);
    for op in ops {
        match op {
            Op::Insert(a, b) => ins += b - a + 1,
            Op::Update(ids) => upd += ids.len() as u64,
            Op::Delete(ids) => del += ids.len() as u64,
        }
    }
    use crate::figures::grouped;
    format!(
        "{} inserts, {} updates (3 columns), {} deletes, interleaved",
        grouped(ins as f64),
        grouped(upd as f64),
        grouped(del as f64)
    )
}

/// Runs one operation as its own transaction. Returns the WAL insert position
/// read inside it (after the change): the transaction's commit record comes
/// after that position, and every earlier transaction's commit before it.
pub async fn run_op(db: &mut Client, op: &Op) -> Result<String> {
    let tx = db.transaction().await?;
    let (n, want) = match op {
        Op::Insert(a, b) => (
            tx.execute(INSERT_SQL, &[&(*a as i64), &(*b as i64)])
                .await?,
            b - a + 1,
        ),
        Op::Update(ids) => (tx.execute(UPDATE_SQL, &[ids]).await?, ids.len() as u64),
        Op::Delete(ids) => (tx.execute(DELETE_SQL, &[ids]).await?, ids.len() as u64),
    };
    if n != want {
        bail!("workload statement changed {n} rows, expected {want}");
    }
    let lsn: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(lsn)
}

/// What committing a workload took and where it ended in the WAL.
pub struct Committed {
    /// From the first BEGIN to the last COMMIT's return.
    pub secs: f64,
    /// A position inside the last transaction.
    pub end: String,
    /// A position inside the second-last transaction.
    pub before_end: String,
}

/// Commits `ops`, one transaction each, from one connection.
pub async fn commit_all(db: &mut Client, ops: &[Op]) -> Result<Committed> {
    let started = Instant::now();
    let mut lsns = Vec::with_capacity(ops.len());
    for op in ops {
        lsns.push(run_op(db, op).await?);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Committed {
        secs,
        end: lsns.last().cloned().unwrap_or_default(),
        before_end: lsns.iter().rev().nth(1).cloned().unwrap_or_default(),
    })
}

/// Inserts rows `1..=total`, `per_txn` per transaction; returns a position
/// inside the last transaction.
pub async fn insert_rows(db: &mut Client, total: u64, per_txn: u64) -> Result<String> {
    let mut lsn = String::new();
    let mut first = 1;
    while first <= total {
        let last = (first + per_txn - 1).min(total);
        lsn = run_op(db, &Op::Insert(first, last)).await?;
        first = last + 1;
    }
    Ok(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the ops on a set of live ids: no row is inserted twice, no
    /// missing row is updated or deleted. Returns (changes, live rows).
    fn replay(ops: &[Op]) -> (u64, usize) {
        let mut live = std::collections::BTreeSet::new();
        let mut changed = 0;
        for op in ops {
            match op {
                Op::Insert(a, b) => {
                    for n in *a..=*b {
                        assert!(live.insert(lead_id(n)), "inserted twice: {n}");
                        changed += 1;
                    }
                }
                Op::Update(ids) => {
                    for id in ids {
                        assert!(live.contains(id), "update of a missing row {id}");
                        changed += 1;
                    }
                }
                Op::Delete(ids) => {
                    for id in ids {
                        assert!(live.remove(id), "delete of a missing row {id}");
                        changed += 1;
                    }
                }
            }
        }
        (changed, live.len())
    }

    #[test]
    fn workload_changes_each_row_as_planned() {
        let ops = workload(200, 10).unwrap();
        assert_eq!(ops.len(), 20);
        assert_eq!(replay(&ops), (200, 120 - 20));
    }

    #[test]
    fn an_incomplete_last_group_still_replays() {
        // 200,200 in transactions of 100: 200 groups and two inserts.
        let ops = workload(2_020, 10).unwrap();
        assert_eq!(ops.len(), 202);
        assert_eq!(replay(&ops), (2_020, 1_000 + 20));
        assert!(describe(&ops).starts_with("1,220 inserts, 600 updates"));
        for n in [1_070, 1_090] {
            let ops = workload(n, 10).unwrap();
            assert_eq!(replay(&ops).0, n);
        }
        assert!(workload(2_025, 10).is_err());
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(lead_number(&lead_id(123)), Some(123));
        assert_eq!(lead_number("x_1"), None);
    }
}
