//! `walhook teardown`: drops the slot (so Postgres stops retaining WAL for
//! walhook) and the publication in the source database, and the ledger
//! schema (in the ledger's database) only when asked. The mapped tables keep
//! their replica identity: other consumers may rely on it.

use tokio_postgres::Client;

use super::setup::{SetupError, db_err};
use crate::config::Config;
use crate::pg::quote_ident;

/// Drops the slot and the publication (`client` is connected to the source
/// database); returns one line per step. Refuses while a process reads the
/// slot.
pub async fn run(client: &Client, cfg: &Config) -> Result<Vec<String>, SetupError> {
    let slot = &cfg.source.slot;
    let mut out = Vec::new();
    let active: Option<bool> = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(db_err("look up the replication slot"))?
        .map(|r| r.get(0));
    match active {
        Some(true) => return Err(SetupError::SlotInUse { slot: slot.clone() }),
        Some(false) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(db_err("drop the replication slot"))?;
            out.push(format!("- replication slot {slot} dropped"));
        }
        None => out.push(format!("= replication slot {slot} was not there")),
    }
    let publication = &cfg.source.publication;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
        .map_err(db_err("drop the publication"))?;
    out.push(format!("- publication {publication} dropped"));
    Ok(out)
}

/// Drops the ledger schema with every event and delivery (`client` is
/// connected to the ledger's database); returns what it did.
pub async fn drop_ledger(client: &Client, schema: &str) -> Result<String, SetupError> {
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(schema)
        ))
        .await
        .map_err(db_err("drop the ledger schema"))?;
    Ok(format!("- ledger schema {schema} dropped"))
}
