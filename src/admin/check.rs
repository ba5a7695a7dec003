//! `walhook check`: a doctor that looks at everything `walhook run` depends
//! on and says, for each problem, what to do. It only reads: no DDL, no HTTP
//! request to endpoints (their host names are resolved, nothing is sent).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, ReplicaIdentity};
use crate::ledger::Ledger;
use crate::source::objects::{self, Mapping, ResolveError};
use crate::source::setup::{self, SetupError};

mod ledger_db;
mod privileges;
mod replication;

use ledger_db::{ledger_schema, source_holds_no_ledger};
use privileges::{privileges, publication_owner};

use super::human::human_lag;
use super::reports::{Reports, url_origin};

/// How long one endpoint host name may take to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// The verdict of one check. `Warn` does not fail `walhook check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
    Warn,
    Fail,
}

/// One line of `walhook check`: what was checked, what was found, and for a
/// failure (or warning) what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub state: CheckState,
    pub detail: String,
    pub hint: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            state: CheckState::Ok,
            detail: detail.into(),
            hint: None,
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, hint: Option<String>) -> Check {
        Check {
            name: name.into(),
            state: CheckState::Warn,
            detail: detail.into(),
            hint,
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            state: CheckState::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Every check, in order; `ok` is false when any failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl CheckReport {
    fn new(checks: Vec<Check>) -> CheckReport {
        CheckReport {
            ok: checks.iter().all(|c| c.state != CheckState::Fail),
            checks,
        }
    }

    /// The report when the config cannot be loaded: nothing else can be checked.
    pub fn config_error(message: &str) -> CheckReport {
        CheckReport::new(vec![Check::fail(
            "config",
            message,
            "fix the config file (config.example.toml documents every key), then run `walhook check` again",
        )])
    }
}

/// Run every check for `cfg` (loaded from `origin`, for the message).
pub async fn run(cfg: &Config, origin: &str) -> CheckReport {
    let mut checks = vec![Check::ok(
        "config",
        format!(
            "{origin} is valid: {} object(s), {} endpoint(s)",
            cfg.objects.len(),
            cfg.endpoints.len()
        ),
    )];
    for w in cfg.warnings() {
        checks.push(Check::warn("config", w, None));
    }
    let source = reach(
        cfg,
        &cfg.source.url,
        "database",
        "check that PostgreSQL is running and that source.url / source.url_env is right (host, port, user, password, database)",
        &mut checks,
    )
    .await;
    // `None` inside: the ledger has a database of its own that did not answer.
    let ledger_db = if setup::separate_ledger(cfg) {
        Some(
            reach(
                cfg,
                cfg.ledger_url(),
                "ledger database",
                "check that the ledger's PostgreSQL is running and that ledger.url / ledger.url_env is right (host, port, user, password, database)",
                &mut checks,
            )
            .await,
        )
    } else {
        None
    };
    match (&source, &ledger_db) {
        (Some(src), None) => database_checks(src, Some(src), cfg, &mut checks).await,
        (Some(src), Some(ledger)) => {
            database_checks(src, ledger.as_ref(), cfg, &mut checks).await;
            checks.push(source_holds_no_ledger(src, cfg).await);
        }
        (None, Some(Some(ledger))) => {
            ledger_schema(ledger, cfg, &mut checks).await;
        }
        (None, _) => {}
    }
    for ep in &cfg.endpoints {
        checks.push(endpoint_check(&ep.id, &ep.url).await);
    }
    CheckReport::new(checks)
}

/// Connects to `url` and says so in a check named `name`; `None` (and a
/// failed check with `hint`) when it cannot be reached.
async fn reach(
    cfg: &Config,
    url: &crate::config::Secret,
    name: &str,
    hint: &str,
    checks: &mut Vec<Check>,
) -> Option<Client> {
    let target = crate::pg::describe_target(url);
    match crate::pg::connect_within(url, "walhook check", cfg.source.connect_timeout).await {
        Err(e) => {
            let e = e.to_string();
            let hint = match replication::pooler_suspect(url, Some(&e)) {
                Some(why) => replication::pooler_hint(&why),
                None => hint.to_string(),
            };
            checks.push(Check::fail(
                name,
                format!("cannot reach {target}: {e}"),
                hint,
            ));
            None
        }
        Ok(client) => {
            let version = client
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|_| "?".into());
            checks.push(Check::ok(
                name,
                format!("reachable: {target} (PostgreSQL {version})"),
            ));
            Some(client)
        }
    }
}

fn db_fail(name: &str, e: impl std::fmt::Display) -> Check {
    Check::fail(
        name,
        format!("cannot read it: {e}"),
        "make sure the role can read the pg_catalog views (any login role can), then try again",
    )
}

/// The checks of the source database; the ledger's against `ledger_db`
/// (the source itself when the ledger lives there, `None` when its own
/// database did not answer).
async fn database_checks(
    client: &Client,
    ledger_db: Option<&Client>,
    cfg: &Config,
    checks: &mut Vec<Check>,
) {
    match setup::check_wal_level(client).await {
        Ok(()) => checks.push(Check::ok("wal_level", "logical")),
        Err(SetupError::WalLevel(level)) => checks.push(Check::fail(
            "wal_level",
            format!("is '{level}', walhook needs 'logical'"),
            "run `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL",
        )),
        Err(e) => checks.push(db_fail("wal_level", e)),
    }
    let ledger_rights = privileges(client, ledger_db, cfg, checks).await;
    // Without the ledger, tables resolve by name only.
    let mapping = tables(client, ledger_db.unwrap_or(client), cfg, checks).await;
    checks.push(publication(client, cfg, mapping.as_ref()).await);
    replica_identity(client, cfg, checks).await;
    let ledger_ok = match ledger_db {
        Some(l) => ledger_schema(l, cfg, checks).await && ledger_rights,
        None => false,
    };
    checks.push(slot(client, ledger_db.unwrap_or(client), cfg, ledger_ok).await);
    checks.extend(replication::failover(client, cfg).await);
    checks.push(replication::connection(cfg).await);
}

/// What the publication lacks and what it has too many of.
pub fn publication_diff(
    want: &[(String, String)],
    have: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let name = |(s, t): &(String, String)| format!("{s}.{t}");
    let missing = want
        .iter()
        .filter(|t| !have.contains(t))
        .map(name)
        .collect();
    let extra = have
        .iter()
        .filter(|t| !want.contains(t))
        .map(name)
        .collect();
    (missing, extra)
}

/// The mapped tables, resolved as `run` resolves them: renamed tables and
/// excluded columns, a dropped primary key (warnings), and what `run` would
/// refuse (failures).
async fn tables(
    client: &Client,
    ledger_db: &Client,
    cfg: &Config,
    checks: &mut Vec<Check>,
) -> Option<Mapping> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    match objects::resolve_all(client, ledger_db, &ledger, cfg).await {
        Ok(mapping) => {
            checks.push(Check::ok(
                "tables",
                format!(
                    "{} mapped table(s) exist, with their keys and excluded columns",
                    cfg.objects.len()
                ),
            ));
            for notice in &mapping.notices {
                checks.push(Check::warn("tables", notice.to_string(), None));
            }
            Some(mapping)
        }
        Err(ResolveError::Object(e)) => {
            checks.push(Check::fail(
                "tables",
                e.to_string(),
                "fix the table or the [[objects]] entry",
            ));
            None
        }
        Err(e) => {
            checks.push(db_fail("tables", e));
            None
        }
    }
}

async fn publication(client: &Client, cfg: &Config, mapping: Option<&Mapping>) -> Check {
    let pubname = &cfg.source.publication;
    let have = match setup::publication_tables(client, pubname).await {
        Err(e) => return db_fail("publication", e),
        Ok(None) => {
            return Check::fail(
                "publication",
                format!("{pubname} does not exist"),
                "run `walhook setup` (or the CREATE PUBLICATION of `walhook setup --print-sql`)",
            );
        }
        Ok(Some(have)) => have,
    };
    // Mapped tables by their current names (they may have been renamed).
    let want: Vec<(String, String)> = match mapping {
        Some(m) => m
            .rows
            .iter()
            .filter_map(|r| r.table_name.split_once('.'))
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect(),
        None => setup::mapped_tables(cfg),
    };
    let mut problems = match mapping {
        Some(m) => match setup::publication_problems(client, pubname, &m.relids()).await {
            Ok(p) => p,
            Err(e) => return db_fail("publication", e),
        },
        None => Vec::new(),
    };
    let (missing, extra) = publication_diff(&want, &have);
    if mapping.is_none() && !missing.is_empty() {
        problems.push(format!("{pubname} lacks {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{pubname} also covers unmapped {} (their changes are streamed and dropped)",
            extra.join(", ")
        ));
    }
    if problems.is_empty() {
        Check::ok(
            "publication",
            format!(
                "{pubname} covers exactly the {} mapped table(s)",
                want.len()
            ),
        )
    } else {
        let hint = publication_owner(client, pubname).await.unwrap_or_else(|| {
            "run `walhook setup`, which sets the publication to exactly the mapped tables, every operation, no filters".into()
        });
        Check::fail("publication", problems.join("; "), hint)
    }
}

async fn replica_identity(client: &Client, cfg: &Config, checks: &mut Vec<Check>) {
    for o in &cfg.objects {
        let name = format!("replica identity {}.{}", o.schema, o.table);
        let row = client
            .query_opt(
                "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&o.schema, &o.table],
            )
            .await;
        let fix_full = (cfg.source.replica_identity == ReplicaIdentity::Full).then(|| {
            format!(
                "run `walhook setup` or `ALTER TABLE {} REPLICA IDENTITY FULL;` for complete before rows",
                o.qualified_sql()
            )
        });
        let check = match row {
            Err(e) => db_fail(&name, e),
            Ok(None) => continue, // the tables check already says it is missing
            Ok(Some(r)) => match r.get::<_, String>(0).as_str() {
                "f" => Check::ok(&name, "FULL"),
                "d" => Check::warn(
                    &name,
                    "DEFAULT: `before` of update and delete events holds only the primary key columns",
                    fix_full,
                ),
                "i" => Check::warn(
                    &name,
                    "USING INDEX: `before` of update and delete events holds only the index columns",
                    fix_full,
                ),
                _ => Check::fail(
                    &name,
                    "NOTHING: PostgreSQL refuses UPDATE and DELETE on a published table without a replica identity",
                    format!(
                        "run `ALTER TABLE {} REPLICA IDENTITY FULL;`",
                        o.qualified_sql()
                    ),
                ),
            },
        };
        checks.push(check);
    }
}

async fn slot(client: &Client, ledger_db: &Client, cfg: &Config, ledger_ok: bool) -> Check {
    let name = format!("slot {}", cfg.source.slot);
    if !ledger_ok {
        // Reading the lag needs the ledger's progress table; report what Postgres knows.
        return match setup::slot_plugin(client, &cfg.source.slot).await {
            Err(e) => db_fail(&name, e),
            Ok(None) => Check::fail(
                &name,
                "does not exist",
                "run `walhook setup` (or sql/05-slot.sql)",
            ),
            Ok(Some(p)) => slot_plugin_check(&name, &cfg.source.slot, &p)
                .unwrap_or_else(|| Check::ok(&name, "exists (pgoutput)")),
        };
    }
    let s = match Reports::new(cfg).slot(client, ledger_db).await {
        Ok(s) => s,
        Err(e) => return db_fail(&name, e),
    };
    if !s.exists {
        return Check::fail(
            &name,
            "does not exist",
            "run `walhook setup` (or sql/05-slot.sql)",
        );
    }
    if let Some(c) = slot_plugin_check(&name, &s.name, s.plugin.as_deref().unwrap_or_default()) {
        return c;
    }
    if s.wal_status.as_deref() == Some("lost") {
        return Check::fail(
            &name,
            "has been invalidated (wal_status = lost): PostgreSQL removed WAL it still needed",
            "changes were lost; drop and recreate it with `walhook teardown --yes` then `walhook setup`, and raise max_slot_wal_keep_size",
        );
    }
    let lag = human_lag(s.lag_bytes, s.lag_seconds);
    Check::ok(
        &name,
        format!(
            "exists (pgoutput, {}), {lag}",
            if s.active {
                "being read"
            } else {
                "not being read now"
            }
        ),
    )
}

fn slot_plugin_check(name: &str, slot: &str, plugin: &str) -> Option<Check> {
    (plugin != "pgoutput").then(|| {
        Check::fail(
            name,
            format!("uses the output plugin '{plugin}', not pgoutput"),
            format!(
                "drop it (SELECT pg_drop_replication_slot('{slot}')) and run `walhook setup`, or choose another source.slot"
            ),
        )
    })
}

async fn endpoint_check(id: &str, url: &url::Url) -> Check {
    let name = format!("endpoint {id}");
    let port = url.port_or_known_default().unwrap_or(443);
    match url.host() {
        None => Check::fail(&name, "the URL has no host", "fix the endpoint's url"),
        Some(url::Host::Ipv4(_)) | Some(url::Host::Ipv6(_)) => Check::ok(
            &name,
            format!("{} is an IP address (not contacted)", url_origin(url)),
        ),
        Some(url::Host::Domain(host)) => {
            match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(addrs)) => {
                    let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                    if addrs.is_empty() {
                        Check::fail(
                            &name,
                            format!("{host} resolves to no address"),
                            "check the host name in the endpoint's url and the DNS of this machine",
                        )
                    } else {
                        Check::ok(
                            &name,
                            format!("{host} resolves to {} (not contacted)", addrs.join(", ")),
                        )
                    }
                }
                Ok(Err(e)) => Check::fail(
                    &name,
                    format!("{host} does not resolve: {e}"),
                    "check the host name in the endpoint's url and the DNS of this machine",
                ),
                Err(_) => Check::fail(
                    &name,
                    format!("resolving {host} took more than {}s", DNS_TIMEOUT.as_secs()),
                    "check the DNS resolver of this machine (/etc/resolv.conf)",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> (String, String) {
        (s.into(), n.into())
    }

    #[test]
    fn publication_differences() {
        let want = [t("public", "leads"), t("crm", "students")];
        let have = [t("public", "leads"), t("public", "audit")];
        let (missing, extra) = publication_diff(&want, &have);
        assert_eq!(missing, ["crm.students"]);
        assert_eq!(extra, ["public.audit"]);
        let (m, e) = publication_diff(&want, &want);
        assert!(m.is_empty() && e.is_empty());
    }

    #[test]
    fn report_fails_only_on_fail() {
        let r = CheckReport::new(vec![Check::ok("a", "x"), Check::warn("b", "y", None)]);
        assert!(r.ok);
        let r = CheckReport::config_error("bad key");
        assert!(!r.ok);
        assert_eq!(r.checks[0].state, CheckState::Fail);
        assert!(r.checks[0].hint.is_some());
    }

    #[tokio::test]
    async fn endpoint_ip_is_not_resolved_and_bad_names_fail() {
        let ok = endpoint_check("a", &"http://127.0.0.1:9/x".parse().unwrap()).await;
        assert_eq!(ok.state, CheckState::Ok, "{ok:?}");
        let local = endpoint_check("b", &"http://localhost:9/x".parse().unwrap()).await;
        assert_eq!(local.state, CheckState::Ok, "{local:?}");
        let bad = endpoint_check("c", &"https://walhook-test.invalid/x".parse().unwrap()).await;
        assert_eq!(bad.state, CheckState::Fail, "{bad:?}");
        assert!(bad.hint.is_some());
    }
}
