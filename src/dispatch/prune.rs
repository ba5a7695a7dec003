//! Retention while running: every minute (sooner with a short
//! `ledger.retention`), one process prunes the ledger
//! ([`Ledger::prune`]). Processes sharing a ledger take turns through an
//! advisory lock on the ledger's database, so only one prunes at a time,
//! and a pass is batches of short statements: dispatchers never wait on it.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::prune::{Pruned, ReplayFloor, Retention, replay_floor};
use crate::ledger::{Ledger, LedgerError};
use crate::pg;

/// How often to prune for `retention`: every minute, or every half
/// retention when that is shorter (tests run with retentions of seconds).
pub fn interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_millis(200), Duration::from_secs(60))
}

/// The pruner's connections, opened when first needed and again after an error.
#[derive(Default)]
struct Conns {
    ledger: Option<Client>,
    /// `None` also when the ledger is in the source database (then `ledger` serves).
    source: Option<Client>,
}

/// Prunes the ledger every [`interval`] until `shutdown`.
pub async fn keep(cfg: Arc<Config>, shutdown: CancellationToken) {
    let ledger = Ledger::new(&cfg.ledger.schema);
    let every = interval(cfg.ledger.retention.min(cfg.ledger.retention_failed));
    let mut conns = Conns::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = pass(&cfg, &ledger, &mut conns) => match r {
                Ok(Some(p)) if p.total() > 0 => tracing::info!(
                    delivered = p.delivered,
                    deliveries_succeeded = p.deliveries_succeeded,
                    deliveries_disabled = p.deliveries_disabled,
                    attempts = p.attempts,
                    events = p.events,
                    "pruned the ledger's old history"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune the ledger now; trying again later");
                    conns = Conns::default();
                }
            },
        }
    }
}

/// One pass, when this process gets the lock (`None`: another one holds it).
async fn pass(
    cfg: &Config,
    ledger: &Ledger,
    conns: &mut Conns,
) -> Result<Option<Pruned>, LedgerError> {
    let separate = cfg.ledger_url().expose() != cfg.source.url.expose();
    if conns.ledger.is_none() {
        conns.ledger = Some(connect(cfg.ledger_url()).await?);
    }
    if separate && conns.source.is_none() {
        // The source only tells how far the slot is; pruning goes on without it.
        conns.source = connect(&cfg.source.url)
            .await
            .inspect_err(|e| tracing::debug!(error = %e, "pruner: source not reachable"))
            .ok();
    }
    let Some(db) = conns.ledger.as_ref() else {
        return Ok(None);
    };
    if !ledger.try_lock_pruner(db).await? {
        return Ok(None);
    }
    let source = if separate {
        conns.source.as_ref()
    } else {
        Some(db)
    };
    let floor = match source {
        Some(source) => replay_floor(source, &cfg.source.slot)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "pruner: cannot read the slot");
                ReplayFloor::Unknown
            }),
        None => ReplayFloor::Unknown,
    };
    if floor == ReplayFloor::Unknown && separate {
        conns.source = None;
    }
    let retention = Retention {
        succeeded: cfg.ledger.retention,
        disabled: cfg.ledger.retention_failed,
        floor,
    };
    let pruned = ledger.prune(db, &retention).await;
    ledger.unlock_pruner(db).await?;
    pruned.map(Some)
}

async fn connect(url: &crate::secret::Secret) -> Result<Client, LedgerError> {
    Ok(pg::connect(url, "walhook prune", pg::DEFAULT_LOGIN_TIMEOUT).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_minute_or_half_a_short_retention() {
        assert_eq!(
            interval(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            interval(Duration::from_millis(10)),
            Duration::from_millis(200)
        );
    }
}
