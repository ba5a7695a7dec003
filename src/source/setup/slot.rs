//! The logical slot: made by setup if missing, as a failover slot when
//! `source.failover` says so (PostgreSQL 17+: standbys with
//! `sync_replication_slots = on` keep a copy in step, so the slot survives a
//! failover), and its failover flag changed when the config changed it.

use tokio_postgres::Client;

use super::plan::create_slot_sql;
use super::{SetupError, Step, db_err, slot_plugin};
use crate::config::Config;
use crate::pg::{self, quote_ident};
use crate::source::error::replication_sqlstate;
use crate::source::primary;

/// The first PostgreSQL version with failover slots.
pub const FAILOVER_SINCE: i32 = 170_000;

/// `server_version_num` and `server_version`.
pub async fn server_version(client: &Client) -> Result<(i32, String), SetupError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(db_err("read the server version"))?;
    Ok((row.get(0), row.get(1)))
}

/// `source.failover = true` needs PostgreSQL 17 or later.
pub async fn check_failover_support(client: &Client, cfg: &Config) -> Result<(), SetupError> {
    if !cfg.source.failover {
        return Ok(());
    }
    let (num, version) = server_version(client).await?;
    if num < FAILOVER_SINCE {
        return Err(SetupError::FailoverUnsupported { version });
    }
    Ok(())
}

/// The slot's failover flag; `None` when the slot does not exist or the
/// server has no such flag (before 17).
pub async fn slot_failover(client: &Client, slot: &str) -> Result<Option<bool>, SetupError> {
    let row = client
        .query_opt(
            "SELECT (to_jsonb(s) ->> 'failover')::boolean FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(db_err("read the replication slot's failover flag"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Setup's slot step: found, created, or its failover flag changed.
pub(super) async fn slot(client: &Client, cfg: &Config) -> Result<Step, SetupError> {
    let slot = &cfg.source.slot;
    let kind = if cfg.source.failover {
        "pgoutput, failover"
    } else {
        "pgoutput"
    };
    match slot_plugin(client, slot).await? {
        Some(p) if p == "pgoutput" => {}
        Some(plugin) => {
            return Err(SetupError::SlotPlugin {
                slot: slot.clone(),
                plugin,
            });
        }
        None => {
            let created = if cfg.source.failover {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
                        &[slot],
                    )
                    .await
            } else {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[slot],
                    )
                    .await
            };
            let what = format!("replication slot {slot} ({kind})");
            return match created.map_err(db_err("create the replication slot")) {
                Ok(_) => Ok(Step::made(format!(
                    "replication slot {slot} created ({kind})"
                ))),
                Err(e) => Step::skip_denied(e, what, vec![create_slot_sql(cfg)]),
            };
        }
    }
    let have = slot_failover(client, slot).await?.unwrap_or(false);
    if have == cfg.source.failover {
        return Ok(Step::found(format!("replication slot {slot} ({kind})")));
    }
    let what = format!(
        "replication slot {slot} set to failover = {}",
        cfg.source.failover
    );
    match alter_failover(cfg).await {
        Ok(()) => Ok(Step::made(what)),
        Err(e) => Step::skip_denied(e, what, vec![alter_failover_sql(cfg)]),
    }
}

/// What a DBA runs to change the flag: a replication command, so on a
/// replication connection.
fn alter_failover_sql(cfg: &Config) -> String {
    format!(
        "-- on a replication connection (psql \"dbname=... replication=database\"): {}",
        alter_failover_command(cfg)
    )
}

fn alter_failover_command(cfg: &Config) -> String {
    format!(
        "ALTER_REPLICATION_SLOT {} ( FAILOVER {} )",
        quote_ident(&cfg.source.slot),
        cfg.source.failover
    )
}

/// `ALTER_REPLICATION_SLOT` on a replication session to the primary (there
/// is no SQL function for it). The slot must not be in use.
async fn alter_failover(cfg: &Config) -> Result<(), SetupError> {
    let action = "change the replication slot's failover flag";
    let fail = |detail: String| SetupError::Replication {
        action: action.into(),
        detail,
    };
    let configs =
        pg::replication_configs(&cfg.source.url, &cfg.source.slot, &cfg.source.publication)
            .map_err(|e| fail(e.to_string()))?;
    let mut tried = Vec::new();
    for rc in configs {
        let at = primary::host_of(&rc);
        let mut p = match primary::probe(rc, cfg.source.connect_timeout).await {
            Ok(p) if !p.in_recovery => p,
            Ok(_) => {
                tried.push(format!("{at}: a standby"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{at}: {e}"));
                continue;
            }
        };
        return match p.client.simple_query(&alter_failover_command(cfg)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match replication_sqlstate(&e) {
                Some("55006") => SetupError::SlotInUse {
                    slot: cfg.source.slot.clone(),
                },
                Some("42501") => SetupError::Privilege {
                    action: action.into(),
                    detail: e.to_string(),
                },
                _ => fail(e.to_string()),
            }),
        };
    }
    Err(fail(format!("no primary among {}", tried.join("; "))))
}
