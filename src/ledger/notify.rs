//! Waking dispatchers: a committed delivery (or a manual retry) sends a
//! NOTIFY on the ledger's channel, and every dispatcher LISTENs on it, so work
//! added by another process is picked up at once rather than at the next poll.
//! Only a hint: dispatchers also poll, so a lost notification delays, never loses.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::Client;

use super::{Ledger, LedgerError};
use crate::pg::{self, quote_ident};
use crate::secret::Secret;

/// The LISTEN/NOTIFY channel that wakes dispatchers when deliveries are added.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_deliveries")
}

impl Ledger {
    /// Wake dispatchers (in every process) listening on the ledger's channel.
    pub async fn notify(&self, client: &Client) -> Result<(), LedgerError> {
        client
            .execute(
                "SELECT pg_notify($1, '')",
                &[&notify_channel(self.schema())],
            )
            .await?;
        Ok(())
    }

    /// A session that LISTENs on the ledger's channel and wakes `wake` on
    /// every notification. It lives as long as the returned client.
    pub async fn listen(
        &self,
        url: &Secret,
        timeout: Duration,
        wake: Arc<Notify>,
    ) -> Result<Client, LedgerError> {
        let client =
            pg::connect_notifying(url, "walhook listen", timeout, move |_| wake.notify_one())
                .await?;
        client
            .batch_execute(&format!(
                "LISTEN {}",
                quote_ident(&notify_channel(self.schema()))
            ))
            .await?;
        Ok(client)
    }
}
