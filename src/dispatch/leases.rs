//! The leases this process holds on ledger deliveries while their attempts
//! run, renewed every third of `delivery.lease`. An attempt may therefore
//! take longer than the lease, and after a crash what the dead process held
//! is free again within one lease.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::pg;
use crate::secret::Secret;

/// Delivery ids whose leases this process renews; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<Mutex<HashSet<i64>>>);

impl Leases {
    pub fn hold(&self, id: i64) {
        self.lock().insert(id);
    }

    pub fn release(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn ids(&self) -> Vec<i64> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // The set stays consistent even if a holder panicked mid-update.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Renews the held leases until `shutdown`, reconnecting as needed.
pub async fn keep(
    leases: Leases,
    ledger: Ledger,
    url: Secret,
    owner: String,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    let mut db = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ids = leases.ids();
        if ids.is_empty() {
            continue;
        }
        if db.is_none() {
            db = pg::connect(&url, "walhook leases", pg::DEFAULT_LOGIN_TIMEOUT)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "cannot renew leases"))
                .ok();
        }
        if let Some(client) = &db
            && let Err(e) = ledger.renew(client, &owner, &ids, lease).await
        {
            tracing::warn!(error = %e, "cannot renew leases; reconnecting");
            db = None;
        }
    }
}
