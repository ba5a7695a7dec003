//! The stream's two ledger writers, each a task with a connection of its
//! own that takes jobs in order and reports each one done: the spill writer
//! (deliveries that must wait, and the results of attempts that went on
//! after their delivery spilled) and the history writer (first attempts that
//! succeeded). Batches accumulate while a job is in flight, so the number of
//! commits stays small whatever the rate.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{Ev, StreamDeps};
use crate::dispatch::outcome::{BatchOutcomes, Health};
use crate::ledger::queue::AttemptRow;
use crate::ledger::spill::{Delivered, SpillState, Spilled};
use crate::ledger::{Ledger, LedgerError};

/// A delivery to spill (`id`: the stream's own handle).
pub struct SpillItem {
    pub id: u64,
    pub ev: Arc<Ev>,
    pub endpoint: Arc<str>,
    pub state: SpillState,
}

/// A first attempt that succeeded, to record.
pub struct DeliveredItem {
    pub id: u64,
    pub ev: Arc<Ev>,
    pub endpoint: Arc<str>,
    pub started_unix_ms: i64,
    pub duration_ms: i32,
    pub status_code: i16,
    pub response_excerpt: Option<String>,
}

pub enum SpillJob {
    Spill(Vec<SpillItem>),
    /// Attempts of leased deliveries, recorded under this process's lease.
    Record(Vec<AttemptRow>),
    /// What first attempts said about their endpoints (410 Gone, the
    /// failing clock of `endpoint_disable_after`).
    Health(BatchOutcomes),
}

pub enum SpillDone {
    /// The ledger id of each spilled item (`None`: it was already there).
    Spilled(Vec<(u64, Option<i64>)>),
    Recorded(Vec<i64>),
    Health,
}

pub struct HistoryJob {
    pub rows: Vec<DeliveredItem>,
    /// Events captured since the last job, per name.
    pub captured: Vec<(String, i64)>,
}

/// Runs the spill writer until `jobs` closes.
pub async fn spill_writer(
    mut db: Client,
    ledger: Ledger,
    deps: StreamDeps,
    mut jobs: mpsc::Receiver<SpillJob>,
    done: mpsc::UnboundedSender<Result<SpillDone, LedgerError>>,
) {
    let mut health = Health::new(&deps.cfg);
    let (owner, lease) = (deps.owner.as_str(), deps.cfg.delivery.lease);
    while let Some(job) = jobs.recv().await {
        let result = match job {
            SpillJob::Spill(items) => {
                let rows: Vec<Spilled> = items
                    .iter()
                    .map(|i| Spilled {
                        captured: &i.ev.captured,
                        body: i.ev.body_text(),
                        endpoint: &i.endpoint,
                        record: &i.ev.record,
                        state: i.state.clone(),
                    })
                    .collect();
                ledger
                    .spill(&mut db, owner, lease, &rows)
                    .await
                    .map(|ids| SpillDone::Spilled(items.iter().map(|i| i.id).zip(ids).collect()))
            }
            SpillJob::Record(rows) => {
                let ids = rows.iter().map(|r| r.delivery_id).collect();
                ledger
                    .record(&db, owner, &rows)
                    .await
                    .map(|_| SpillDone::Recorded(ids))
            }
            SpillJob::Health(outcomes) => health
                .apply(&deps.cfg, &ledger, &db, outcomes)
                .await
                .map(|()| SpillDone::Health),
        };
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Runs the history writer until `jobs` closes; reports the stream ids of
/// each job's rows once they are committed.
pub async fn history_writer(
    mut db: Client,
    ledger: Ledger,
    keep_bodies: bool,
    mut jobs: mpsc::Receiver<HistoryJob>,
    done: mpsc::UnboundedSender<Result<Vec<u64>, LedgerError>>,
) {
    while let Some(job) = jobs.recv().await {
        let rows: Vec<Delivered> = job
            .rows
            .iter()
            .map(|r| Delivered {
                captured: &r.ev.captured,
                body: r.ev.body_text(),
                endpoint: &r.endpoint,
                record: &r.ev.record,
                started_unix_ms: r.started_unix_ms,
                duration_ms: r.duration_ms,
                status_code: r.status_code,
                response_excerpt: r.response_excerpt.as_deref(),
            })
            .collect();
        let result = ledger
            .delivered(&mut db, &rows, keep_bodies, &job.captured)
            .await
            .map(|()| job.rows.iter().map(|r| r.id).collect());
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}
