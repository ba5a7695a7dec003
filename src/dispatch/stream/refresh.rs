//! The stream's view of the ledger, refreshed every second on a connection
//! of its own: which of the records it sent to the ledger are clear again,
//! which parked endpoints have nothing waiting there, which endpoints are
//! disabled. Each answer says when its look started, so nothing spilled
//! after that is cleared by it.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::ledger::open::OpenKey;
use crate::ledger::{Ledger, LedgerError};

/// At most this many records are asked about per look.
pub const MAX_KEYS: usize = 10_000;

/// What to look at.
pub struct Ask {
    pub records: Vec<OpenKey>,
    pub parked: Vec<String>,
}

/// What was seen.
pub struct Seen {
    pub looked_at: Instant,
    /// Asked-about records with no open delivery.
    pub cleared: Vec<OpenKey>,
    /// Asked-about parked endpoints with no open delivery.
    pub idle: Vec<String>,
    pub disabled: Vec<String>,
}

/// Answers each question until `asks` closes.
pub async fn refresher(
    db: Client,
    ledger: Ledger,
    mut asks: mpsc::Receiver<Ask>,
    answers: mpsc::UnboundedSender<Result<Seen, LedgerError>>,
) {
    while let Some(ask) = asks.recv().await {
        let result = look(&db, &ledger, ask).await;
        let failed = result.is_err();
        if answers.send(result).is_err() || failed {
            return;
        }
    }
}

async fn look(db: &Client, ledger: &Ledger, ask: Ask) -> Result<Seen, LedgerError> {
    let looked_at = Instant::now();
    let open: std::collections::HashSet<OpenKey> = ledger
        .still_open(db, &ask.records)
        .await?
        .into_iter()
        .collect();
    let cleared = ask
        .records
        .into_iter()
        .filter(|k| !open.contains(k))
        .collect();
    let busy = if ask.parked.is_empty() {
        Vec::new()
    } else {
        ledger.endpoints_with_open(db, &ask.parked).await?
    };
    let idle = ask
        .parked
        .into_iter()
        .filter(|e| !busy.contains(e))
        .collect();
    Ok(Seen {
        looked_at,
        cleared,
        idle,
        disabled: ledger.disabled_endpoints(db).await?,
    })
}
