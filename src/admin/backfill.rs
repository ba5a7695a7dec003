//! Asking for backfills, listing and cancelling them, shared by the CLI
//! (`walhook backfill`) and the admin API (`/api/backfills`). The work
//! itself is done by the process that reads the slot
//! ([`crate::source::backfill`]); this only checks the request and queues it
//! in the ledger.
//!
//! Promise: a request that could not run is refused here, with what to fix:
//! an object or endpoint that is not configured, an endpoint that does not
//! subscribe to the events the backfill sends, or a `--where` condition the
//! server rejects (checked with `EXPLAIN`, which runs nothing).

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::ledger::backfills::{Backfill, BackfillRequest, event_name};
use crate::ledger::{Ledger, LedgerError};
use crate::pg::{self, DbError};
use crate::source::setup::{self, SetupError};

/// Backfills listed when no limit is given.
pub const LIST_LIMIT: i64 = 50;

/// Why a backfill request was refused, or a query failed. Each message says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("unknown object `{slug}`: the configured objects are {known}")]
    UnknownObject { slug: String, known: String },
    #[error(
        "unknown endpoint `{id}`: the configured endpoints are {known}. Check the id, or add it to [[endpoints]] in the config."
    )]
    UnknownEndpoint { id: String, known: String },
    #[error(
        "endpoint `{endpoint}` does not subscribe to {event} (its events are {events}); add it to the endpoint's `events`{hint}"
    )]
    NotSubscribed {
        endpoint: String,
        event: String,
        events: String,
        hint: &'static str,
    },
    #[error(
        "no endpoint subscribes to {event}, so the backfill would send nothing; add it to an endpoint's `events`{hint}"
    )]
    NoSubscriber { event: String, hint: &'static str },
    #[error("--where is not a valid condition on {table}: {message}")]
    BadWhere { table: String, message: String },
    #[error("--rate must be a positive number of rows per second, not {0}")]
    BadRate(f64),
    #[error("no backfill with id {0}; `walhook backfill list` shows them")]
    NotFound(i64),
    #[error("backfill {id} already ended ({state}); only a queued or running one can be cancelled")]
    Ended { id: i64, state: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Source(#[from] SetupError),
    #[error("{0}")]
    Db(#[from] DbError),
}

impl BackfillError {
    /// Whether the caller asked for something wrong (else a database failed).
    pub fn is_bad_request(&self) -> bool {
        !matches!(
            self,
            BackfillError::Ledger(_) | BackfillError::Source(_) | BackfillError::Db(_)
        )
    }
}

/// A queued backfill, and whether a process is reading the slot to run it.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub backfill: Backfill,
    /// The events it sends.
    pub event: String,
    /// The replication slot is in use (a `walhook run` is capturing).
    pub capturing: bool,
}

/// Checks `req` against the config and the table, then queues it.
pub async fn queue(
    cfg: &Config,
    source: &Client,
    ledger_db: &Client,
    req: &BackfillRequest,
) -> Result<Queued, BackfillError> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    ledger.ensure_exists(ledger_db).await?;
    check_request(cfg, req)?;
    if let Some(w) = &req.where_sql {
        let table = table_sql(cfg, &ledger, source, ledger_db, &req.slug).await?;
        explain_where(source, &table, w).await?;
    }
    let backfill = ledger.request_backfill(ledger_db, req).await?;
    let capturing = setup::slot_state(source, &cfg.source.slot)
        .await?
        .is_some_and(|s| s.active);
    Ok(Queued {
        event: backfill.event_name(),
        backfill,
        capturing,
    })
}

/// What can be checked without a database: the object, the endpoint and
/// its subscription, the rate.
pub fn check_request(cfg: &Config, req: &BackfillRequest) -> Result<(), BackfillError> {
    if !cfg.objects.iter().any(|o| o.slug == req.slug) {
        return Err(BackfillError::UnknownObject {
            slug: req.slug.clone(),
            known: listed(cfg.objects.iter().map(|o| o.slug.as_str())),
        });
    }
    if let Some(rate) = req.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(BackfillError::BadRate(rate));
    }
    let event = event_name(&req.slug, req.as_create);
    let hint = if req.as_create {
        ""
    } else {
        " (or send them as creates with --as create)"
    };
    match &req.endpoint {
        Some(id) => {
            let ep = cfg
                .endpoint(id)
                .ok_or_else(|| BackfillError::UnknownEndpoint {
                    id: id.clone(),
                    known: listed(cfg.endpoints.iter().map(|e| e.id.as_str())),
                })?;
            if !ep.subscribes_to(&event) {
                return Err(BackfillError::NotSubscribed {
                    endpoint: id.clone(),
                    event,
                    events: ep.events.join(", "),
                    hint,
                });
            }
        }
        None if !cfg.endpoints.iter().any(|e| e.subscribes_to(&event)) => {
            return Err(BackfillError::NoSubscriber { event, hint });
        }
        None => {}
    }
    Ok(())
}

fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The object's table as SQL: by the relation the ledger remembers (it
/// follows a rename), else as configured.
async fn table_sql(
    cfg: &Config,
    ledger: &Ledger,
    source: &Client,
    ledger_db: &Client,
    slug: &str,
) -> Result<String, BackfillError> {
    if let Some(row) = ledger
        .objects(ledger_db)
        .await?
        .into_iter()
        .find(|o| o.slug == slug)
        && let Some(r) = source
            .query_opt(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = $1",
                &[&row.relid],
            )
            .await
            .map_err(DbError)?
    {
        return Ok(r.get(0));
    }
    let object = cfg.objects.iter().find(|o| o.slug == slug);
    Ok(object.map(|o| o.qualified_sql()).unwrap_or_default())
}

/// `EXPLAIN` of the condition on the table: the server parses and plans it
/// (unknown columns, type errors) without reading a row.
async fn explain_where(source: &Client, table: &str, where_sql: &str) -> Result<(), BackfillError> {
    let sql = format!("EXPLAIN SELECT * FROM {table} t WHERE ({where_sql})");
    // A prepared statement: one statement only, whatever the text holds.
    match source.execute(&sql, &[]).await {
        Ok(_) => Ok(()),
        Err(e) if e.as_db_error().is_some() => Err(BackfillError::BadWhere {
            table: table.to_string(),
            message: pg::describe(&e),
        }),
        Err(e) => Err(DbError(e).into()),
    }
}

/// The most recent backfills, newest first.
pub async fn list(
    cfg: &Config,
    ledger_db: &Client,
    limit: i64,
) -> Result<Vec<Backfill>, BackfillError> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    ledger.ensure_exists(ledger_db).await?;
    Ok(ledger.backfills(ledger_db, limit.clamp(1, 1000)).await?)
}

/// Cancels backfill `id`; returns it as it is now. Rows already sent stay
/// sent; a running process stops at its next chunk.
pub async fn cancel(cfg: &Config, ledger_db: &Client, id: i64) -> Result<Backfill, BackfillError> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    ledger.ensure_exists(ledger_db).await?;
    let cancelled = ledger.cancel_backfill(ledger_db, id).await?;
    let now = ledger
        .backfill(ledger_db, id)
        .await?
        .ok_or(BackfillError::NotFound(id))?;
    if !cancelled {
        return Err(BackfillError::Ended {
            id,
            state: now.state,
        });
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml_str(
            r#"
[source]
url = "postgres://u@127.0.0.1/db"
[[objects]]
table = "leads"
slug = "lead"
[[endpoints]]
id = "crm"
url = "http://127.0.0.1:9/"
secret = "s"
events = ["lead.create"]
"#,
            "test",
        )
        .unwrap()
    }

    fn req(slug: &str, endpoint: Option<&str>, as_create: bool) -> BackfillRequest {
        BackfillRequest {
            slug: slug.into(),
            endpoint: endpoint.map(String::from),
            where_sql: None,
            as_create,
            rate: None,
        }
    }

    #[test]
    fn requests_are_checked_against_the_config() {
        let cfg = cfg();
        let e = check_request(&cfg, &req("deal", None, false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown object `deal`: the configured objects are `lead`"
        );
        let e = check_request(&cfg, &req("lead", Some("x"), true)).unwrap_err();
        assert!(e.to_string().contains("unknown endpoint `x`"), "{e}");
        let e = check_request(&cfg, &req("lead", Some("crm"), false)).unwrap_err();
        assert!(
            e.to_string()
                .contains("`crm` does not subscribe to lead.backfill"),
            "{e}"
        );
        assert!(e.to_string().contains("--as create"), "{e}");
        let e = check_request(&cfg, &req("lead", None, false)).unwrap_err();
        assert!(matches!(e, BackfillError::NoSubscriber { .. }), "{e}");
        assert!(check_request(&cfg, &req("lead", Some("crm"), true)).is_ok());
        assert!(check_request(&cfg, &req("lead", None, true)).is_ok());
        let mut r = req("lead", None, true);
        r.rate = Some(0.0);
        assert!(matches!(
            check_request(&cfg, &r),
            Err(BackfillError::BadRate(_))
        ));
        assert!(e.is_bad_request());
    }
}
