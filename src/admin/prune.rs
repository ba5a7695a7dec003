//! `walhook prune`: retention by hand. The same pass `walhook run` makes
//! every minute ([`crate::dispatch::prune`]), with the retention of the
//! config or `--older-than`, or, with `--dry-run`, only the counts.

use std::time::Duration;

use serde::Serialize;

use super::dbs::Dbs;
use super::human::human_duration;
use crate::config::Config;
use crate::ledger::prune::{Pruned, ReplayFloor, Retention, replay_floor};
use crate::ledger::{Ledger, LedgerError};

/// How long `walhook prune` waits for a running pruner to finish its pass.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why `walhook prune` could not prune.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "another process has been pruning the ledger for over {}s; try again later (a running `walhook run` prunes every minute on its own)",
        LOCK_WAIT.as_secs()
    )]
    Busy,
}

/// What `walhook prune` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    /// Succeeded history and unreferenced events older than this go
    /// (`ledger.retention` or `--older-than`), e.g. `7d0h`.
    pub older_than: String,
    pub older_than_ms: u64,
    /// Disabled deliveries unchanged for longer than this go (`ledger.retention_failed`).
    pub disabled_older_than: String,
    pub disabled_older_than_ms: u64,
    /// False when the slot's position could not be read: events stay then.
    pub events_considered: bool,
    /// Rows per table.
    pub rows: Pruned,
}

/// Prunes the ledger once (or counts, with `dry_run`). `older_than`
/// overrides `ledger.retention` for succeeded history.
pub async fn prune(
    cfg: &Config,
    dbs: &Dbs,
    older_than: Option<Duration>,
    dry_run: bool,
) -> Result<PruneReport, PruneError> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    ledger.ensure_exists(dbs.ledger()).await?;
    let retention = Retention {
        succeeded: older_than.unwrap_or(cfg.ledger.retention),
        disabled: cfg.ledger.retention_failed,
        floor: replay_floor(dbs.source(), &cfg.source.slot).await?,
    };
    let rows = if dry_run {
        ledger.prunable(dbs.ledger(), &retention).await?
    } else {
        wait_for_lock(&ledger, dbs).await?;
        let pruned = ledger.prune(dbs.ledger(), &retention).await;
        ledger.unlock_pruner(dbs.ledger()).await?;
        pruned?
    };
    Ok(PruneReport {
        dry_run,
        older_than: human_duration(retention.succeeded),
        older_than_ms: retention.succeeded.as_millis() as u64,
        disabled_older_than: human_duration(retention.disabled),
        disabled_older_than_ms: retention.disabled.as_millis() as u64,
        events_considered: retention.floor != ReplayFloor::Unknown,
        rows,
    })
}

async fn wait_for_lock(ledger: &Ledger, dbs: &Dbs) -> Result<(), PruneError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    while !ledger.try_lock_pruner(dbs.ledger()).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(PruneError::Busy);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
