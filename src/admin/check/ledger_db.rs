//! The checks of the ledger: its schema, where it lives, and (with a
//! database of its own) that the source holds none of walhook's tables.

use tokio_postgres::Client;

use super::{Check, db_fail};
use crate::config::Config;
use crate::ledger::{self, Ledger};
use crate::source::setup;

pub(super) async fn ledger_schema(client: &Client, cfg: &Config, checks: &mut Vec<Check>) -> bool {
    let schema = &cfg.ledger.schema;
    let missing = match Ledger::new(schema).missing_tables(client).await {
        Ok(m) => m,
        Err(e) => {
            checks.push(db_fail("ledger", e));
            return false;
        }
    };
    if missing.is_empty() {
        let place = if setup::separate_ledger(cfg) {
            format!(" in {}", crate::pg::describe_target(cfg.ledger_url()))
        } else {
            String::new()
        };
        checks.push(Check::ok(
            "ledger",
            format!("schema {schema} is set up{place}"),
        ));
        true
    } else if missing.len() == ledger::schema::TABLES.len() {
        checks.push(Check::fail(
            "ledger",
            format!("schema {schema} is not set up"),
            "run `walhook setup` (or sql/01-ledger.sql as printed by `walhook setup --print-sql`)",
        ));
        false
    } else {
        checks.push(Check::fail(
            "ledger",
            format!("schema {schema} lacks the table(s) {}", missing.join(", ")),
            "run `walhook setup` (its DDL is idempotent and adds what is missing)",
        ));
        false
    }
}

/// With the ledger in a database of its own, the source should hold no
/// schema of that name: one left from before the ledger moved is no longer
/// used (and its tables no longer pruned).
pub(super) async fn source_holds_no_ledger(source: &Client, cfg: &Config) -> Check {
    let schema = &cfg.ledger.schema;
    let row = source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[schema],
        )
        .await;
    match row {
        Err(e) => db_fail("ledger database", e),
        Ok(r) if r.get::<_, bool>(0) => Check::warn(
            "ledger database",
            format!(
                "the source database also has a schema {schema}, which walhook does not use: the ledger is in {}",
                crate::pg::describe_target(cfg.ledger_url())
            ),
            Some(format!(
                "if it is a ledger left from before ledger.url was set, drop it once its history is no longer needed: DROP SCHEMA {} CASCADE;",
                crate::pg::quote_ident(schema)
            )),
        ),
        Ok(_) => Check::ok(
            "ledger database",
            format!("the source database holds no {schema} schema: walhook writes nothing there"),
        ),
    }
}
