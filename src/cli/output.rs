//! How the commands print: JSON or the human rendering, and errors with
//! each cause said once.

use anyhow::Result;

use walhook::admin::dbs;
use walhook::config::Config;

/// The error and its causes, `: `-separated, each said once: a cause whose
/// text is already there is left out, and so is tokio-postgres' own error
/// for what the server sent ("db error: ..."), which [`walhook::pg::DbError`]
/// has already put as the server said it (message, SQLSTATE, hint).
pub fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let server_said = cause
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(|pg| pg.as_db_error().is_some())
            || cause.is::<tokio_postgres::error::DbError>();
        let text = cause.to_string();
        if server_said || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// JSON (pretty, on stdout) or the human rendering.
pub fn print_out<T: serde::Serialize>(
    json: bool,
    value: &T,
    human: fn(&T) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

/// The ledger's database, where every delivery and endpoint command works.
pub async fn admin_connect(cfg: &Config) -> Result<tokio_postgres::Client> {
    Ok(dbs::connect_ledger(cfg, "walhook admin").await?)
}
