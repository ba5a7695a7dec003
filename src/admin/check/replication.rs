//! The replication connection, opened as `run` opens it (without starting
//! a stream): the role may replicate, a primary is among the hosts of
//! `source.url`, and the URL does not lead to a connection pooler, which
//! cannot carry replication. Then, with `source.failover = true`, what the
//! primary can tell of failover slots.

use tokio_postgres::Client;

use super::{Check, db_fail};
use crate::config::{Config, Secret};
use crate::source::primary;
use crate::source::setup::{self, SetupError};

/// Why `url` (or `error`, the server's answer through it) looks like a
/// connection pooler rather than PostgreSQL itself; `None` when it does not.
pub fn pooler_suspect(url: &Secret, error: Option<&str>) -> Option<String> {
    if let Some(e) = error {
        let lower = e.to_ascii_lowercase();
        for (needle, who) in [
            ("unsupported startup parameter", "PgBouncer's refusal"),
            ("pgbouncer", "PgBouncer"),
            ("supavisor", "Supavisor"),
            ("pooler error", "a pooler's error"),
        ] {
            if lower.contains(needle) {
                return Some(format!("the answer names {who}: {e}"));
            }
        }
    }
    let pg = crate::pg::parse_url(url).ok()?;
    let ports = pg.get_ports();
    for (i, host) in pg.get_hosts().iter().enumerate() {
        let tokio_postgres::config::Host::Tcp(host) = host else {
            continue;
        };
        let host = host.to_ascii_lowercase();
        if host.ends_with(".pooler.supabase.com") {
            return Some(format!("{host} is Supabase's pooler (Supavisor)"));
        }
        if host.contains("-pooler.") {
            return Some(format!(
                "{host} is a pooled endpoint (Neon names them -pooler)"
            ));
        }
        if ports.get(i).or(ports.first()) == Some(&6543) {
            return Some("port 6543 is the transaction pooler's port (Supabase)".into());
        }
    }
    None
}

/// The hint for a connection that looks like it goes through a pooler.
pub fn pooler_hint(why: &str) -> String {
    format!(
        "this looks like a connection pooler ({why}); use the direct connection: logical replication and LISTEN need the database's own host and port (README \"Managed services\")"
    )
}

/// Opens the replication session on each host of `source.url` in turn, as
/// capture does; one check.
pub(super) async fn connection(cfg: &Config) -> Check {
    let name = "replication";
    let url = &cfg.source.url;
    let configs =
        match crate::pg::replication_configs(url, &cfg.source.slot, &cfg.source.publication) {
            Ok(c) => c,
            Err(e) => return Check::fail(name, e.to_string(), "fix source.url"),
        };
    let mut tried = Vec::new();
    for rc in configs {
        let at = primary::host_of(&rc);
        match primary::probe(rc, cfg.source.connect_timeout).await {
            Ok(p) if !p.in_recovery => {
                return Check::ok(
                    name,
                    format!("a replication connection to {at} works (the primary)"),
                );
            }
            Ok(_) => tried.push(format!("{at} is a standby")),
            Err(e) => {
                let e = e.to_string();
                if let Some(why) = pooler_suspect(url, Some(&e)) {
                    return Check::fail(
                        name,
                        format!("{at} refused the replication connection: {e}"),
                        pooler_hint(&why),
                    );
                }
                tried.push(format!("{at}: {e}"));
            }
        }
    }
    let hint = match pooler_suspect(url, None) {
        Some(why) => pooler_hint(&why),
        None => "the role needs REPLICATION (see the privileges check) and pg_hba.conf must let it connect to this database; with several hosts, one must be the primary (target_session_attrs=read-write)".into(),
    };
    Check::fail(
        name,
        format!(
            "no replication connection to a primary: {}",
            tried.join("; ")
        ),
        hint,
    )
}

/// With `source.failover = true`: the server has failover slots (17+), the
/// slot is one, and `synchronized_standby_slots` names the standbys that
/// must have the changes before walhook sees them (a warning when empty:
/// the slot may then run ahead of a standby that is promoted).
pub(super) async fn failover(client: &Client, cfg: &Config) -> Option<Check> {
    if !cfg.source.failover {
        return None;
    }
    let name = "failover";
    Some(match failover_state(client, cfg).await {
        Err(SetupError::FailoverUnsupported { version }) => Check::fail(
            name,
            format!("source.failover = true, but PostgreSQL {version} has no failover slots"),
            "upgrade to PostgreSQL 17 or later, or set source.failover = false",
        ),
        Err(e) => db_fail(name, e),
        Ok((None, _)) => return None, // the slot check says it is missing
        Ok((Some(false), _)) => Check::fail(
            name,
            format!("slot {} is not a failover slot", cfg.source.slot),
            "run `walhook setup` while walhook is stopped (it sets the flag), or recreate the slot (sql/05-slot.sql, failover form)",
        ),
        Ok((Some(true), standby_slots)) if standby_slots.is_empty() => Check::warn(
            name,
            format!(
                "slot {} is a failover slot, but synchronized_standby_slots is empty",
                cfg.source.slot
            ),
            Some("set synchronized_standby_slots on the primary to the standbys' physical slots (README \"Failover\"), so walhook never gets ahead of the standby that takes over".into()),
        ),
        Ok((Some(true), standby_slots)) => Check::ok(
            name,
            format!(
                "slot {} is a failover slot; synchronized_standby_slots = '{standby_slots}' (the standbys' settings are not visible from here: README \"Failover\")",
                cfg.source.slot
            ),
        ),
    })
}

async fn failover_state(
    client: &Client,
    cfg: &Config,
) -> Result<(Option<bool>, String), SetupError> {
    setup::check_failover_support(client, cfg).await?;
    let flag = setup::slot_failover(client, &cfg.source.slot).await?;
    let standby_slots: String = client
        .query_one("SHOW synchronized_standby_slots", &[])
        .await
        .map_err(setup::db_err("read synchronized_standby_slots"))?
        .get(0);
    Ok((flag, standby_slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspect(url: &str, error: Option<&str>) -> Option<String> {
        pooler_suspect(&Secret::new(url), error)
    }

    #[test]
    fn poolers_are_recognised_by_their_answer() {
        let e = "db error: FATAL: unsupported startup parameter: replication";
        assert!(
            suspect("postgres://u@db.example/app", Some(e))
                .unwrap()
                .contains("PgBouncer")
        );
        let e = "FATAL: a made-up refusal that names Supavisor";
        assert!(
            suspect("postgres://u@h/app", Some(e))
                .unwrap()
                .contains("Supavisor")
        );
        let e = "password authentication failed for user \"u\"";
        assert_eq!(suspect("postgres://u@db.example/app", Some(e)), None);
    }

    #[test]
    fn poolers_are_recognised_by_their_address() {
        let supa = suspect(
            "postgres://u@aws-0-eu-west-1.pooler.supabase.com:5432/postgres",
            None,
        );
        assert!(supa.unwrap().contains("Supavisor"));
        let neon = suspect(
            "postgres://u@ep-cool-1234-pooler.us-east-2.aws.neon.tech/db",
            None,
        );
        assert!(neon.unwrap().contains("-pooler"));
        let port = suspect("postgres://u@db.abc.supabase.co:6543/postgres", None);
        assert!(port.unwrap().contains("6543"));
        assert_eq!(
            suspect("postgres://u@db.abc.supabase.co:5432/postgres", None),
            None
        );
        assert_eq!(suspect("host=/var/run/postgresql port=6543", None), None);
        assert!(
            pooler_hint("x")
                .starts_with("this looks like a connection pooler (x); use the direct connection")
        );
    }
}
