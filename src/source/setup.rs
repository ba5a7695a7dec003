//! `walhook setup` and the checks it shares with `run` and `check`: the
//! database must have `wal_level = logical`, every mapped table must exist and
//! have a primary key; then the ledger schema, the publication over exactly the
//! mapped tables, `REPLICA IDENTITY FULL` and the logical slot are created.
//! Every step looks before it acts, so a second run changes nothing. The
//! ledger may live in a database of its own (`[ledger] url`): its schema goes
//! there, and the source database then holds no walhook table.
//!
//! Run by a role with `LOGIN REPLICATION` only, setup does what that role
//! may and skips the rest, each skipped step with the SQL a DBA runs instead
//! ([`plan`] prints all of it: `walhook setup --print-sql`).

pub mod grants;
mod plan;
mod slot;
mod step;

pub use plan::{FALLBACK_ROLE, ledger_sql, plan_sql, url_user};
pub use slot::{FAILOVER_SINCE, check_failover_support, server_version, slot_failover};
pub use step::{DbaWork, Step, incomplete};

use tokio_postgres::Client;

use super::objects::{self, ResolveError};
use crate::config::{Config, ReplicaIdentity};
use crate::ledger;
use crate::pg::{DbError, quote_ident};

/// Why setup (or a pre-flight check) cannot go on; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "wal_level is '{0}', walhook needs 'logical'. Run `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL."
    )]
    WalLevel(String),
    #[error(
        "replication slot {slot} exists but uses the output plugin '{plugin}', not pgoutput. Drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another `source.slot`."
    )]
    SlotPlugin { slot: String, plugin: String },
    #[error(
        "replication slot {slot} belongs to database '{database}', not this one (slot names are shared by the whole cluster). Choose another `source.slot` for this database, or drop the other slot if it is unused."
    )]
    SlotElsewhere { slot: String, database: String },
    #[error(
        "permission denied while trying to {action}: {detail}. `walhook check` names each missing privilege with the GRANT that fixes it; `walhook setup --print-sql` prints everything a DBA runs for this role (or see sql/00-role.sql to sql/05-slot.sql)."
    )]
    Privilege { action: String, detail: String },
    #[error(
        "the role lacks privileges walhook needs:\n{0}\n`walhook check` lists every missing privilege; `walhook setup --print-sql` prints everything a DBA runs for this role (README \"Least privilege\")."
    )]
    MissingPrivileges(String),
    #[error("while trying to {action} on a replication connection: {detail}")]
    Replication { action: String, detail: String },
    #[error(
        "source.failover = true needs PostgreSQL 17 or later (failover slots); the server is {version}. Set failover = false, or upgrade."
    )]
    FailoverUnsupported { version: String },
    #[error("while trying to {action}: {source}")]
    Db {
        action: String,
        #[source]
        source: DbError,
    },
    #[error(
        "the replication slot {slot} is in use by a running walhook; stop it first (`walhook status` shows the slot)"
    )]
    SlotInUse { slot: String },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Objects(#[from] ResolveError),
}

pub(crate) fn db_err(action: &str) -> impl FnOnce(tokio_postgres::Error) -> SetupError + '_ {
    move |source| {
        if source.code().map(|c| c.code()) == Some("42501") {
            let detail = source
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| source.to_string());
            SetupError::Privilege {
                action: action.to_string(),
                detail,
            }
        } else {
            SetupError::Db {
                action: action.to_string(),
                source: DbError(source),
            }
        }
    }
}

/// The ledger lives in a database of its own: `[ledger] url` names another
/// database than the source's.
pub fn separate_ledger(cfg: &Config) -> bool {
    cfg.ledger
        .url
        .as_ref()
        .is_some_and(|u| u.expose() != cfg.source.url.expose())
}

pub(crate) fn tables_sql(cfg: &Config) -> String {
    cfg.objects
        .iter()
        .map(|o| o.qualified_sql())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SHOW wal_level` must say logical.
pub async fn check_wal_level(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(db_err("read wal_level"))?;
    let level: String = row.get(0);
    if level == "logical" {
        Ok(())
    } else {
        Err(SetupError::WalLevel(level))
    }
}

/// Tables the publication covers now, as (schema, table).
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<(String, String)>>, SetupError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(db_err("look up the publication"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(db_err("look up the publication's tables"))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// What is wrong with the publication for capturing the mapped tables
/// `relids`, each problem one sentence (empty: nothing). Tables that the
/// publication does not cover, a row filter or column list walhook did not
/// ask for, and operations it does not publish would all lose or change
/// events silently.
pub async fn publication_problems(
    client: &Client,
    publication: &str,
    relids: &[u32],
) -> Result<Vec<String>, SetupError> {
    let Some(row) = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(db_err("look up the publication"))?
    else {
        return Ok(vec![format!(
            "the publication {publication} does not exist: run `walhook setup`"
        )]);
    };
    let mut problems = Vec::new();
    for (i, op) in ["INSERT", "UPDATE", "DELETE"].iter().enumerate() {
        if !row.get::<_, bool>(i) {
            problems.push(format!(
                "the publication {publication} does not publish {op}s, so those changes never reach walhook: run `walhook setup` (or ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate'))",
                quote_ident(publication)
            ));
        }
    }
    // Row filters and column lists exist from PostgreSQL 15 on; to_jsonb
    // reads them where they exist without failing on older servers.
    let rows = client
        .query(
            "SELECT c.oid, n.nspname || '.' || c.relname,
                    t.relid IS NOT NULL,
                    coalesce(to_jsonb(pr) ->> 'prqual', '') <> '',
                    coalesce(to_jsonb(pr) ->> 'prattrs', '') <> ''
             FROM unnest($2::oid[]) AS m(relid)
             JOIN pg_class c ON c.oid = m.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN (SELECT (quote_ident(schemaname) || '.' || quote_ident(tablename))::regclass::oid AS relid
                        FROM pg_publication_tables WHERE pubname = $1) t ON t.relid = c.oid
             LEFT JOIN (pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid AND p.pubname = $1)
                    ON pr.prrelid = c.oid",
            &[&publication, &relids],
        )
        .await
        .map_err(db_err("look up the publication's tables"))?;
    for r in rows {
        let table: String = r.get(1);
        if !r.get::<_, bool>(2) {
            problems.push(format!(
                "mapped table {table} is not in the publication {publication}, so none of its changes would be captured: run `walhook setup`"
            ));
        }
        if r.get::<_, bool>(3) {
            problems.push(format!(
                "the publication {publication} has a row filter on {table} that walhook did not ask for (updates would turn into creates and deletes): run `walhook setup` to remove it"
            ));
        }
        if r.get::<_, bool>(4) {
            problems.push(format!(
                "the publication {publication} has a column list on {table} that walhook did not ask for (events would lack columns): run `walhook setup` to remove it"
            ));
        }
    }
    Ok(problems)
}

/// The mapped tables as (schema, table), sorted.
pub fn mapped_tables(cfg: &Config) -> Vec<(String, String)> {
    let mut v: Vec<_> = cfg
        .objects
        .iter()
        .map(|o| (o.schema.clone(), o.table.clone()))
        .collect();
    v.sort();
    v
}

/// The slot's output plugin, if the slot exists. Slot names are
/// cluster-wide: a slot of that name in another database is an error.
pub async fn slot_plugin(client: &Client, slot: &str) -> Result<Option<String>, SetupError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, database = current_database() FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(db_err("look up the replication slot"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.get::<_, Option<bool>>(2) != Some(true) {
        return Err(SetupError::SlotElsewhere {
            slot: slot.to_string(),
            database: row.get::<_, Option<String>>(1).unwrap_or_default(),
        });
    }
    Ok(Some(row.get::<_, Option<String>>(0).unwrap_or_default()))
}

/// The slot as the server sees it (`pg_replication_slots`, and
/// `pg_stat_replication` while a walsender streams it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotState {
    pub plugin: Option<String>,
    pub active: bool,
    /// `wal_status` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    /// WAL retained beyond `confirmed_flush_lsn` (unknown on a standby).
    pub lag_bytes: Option<i64>,
    /// The walsender's `flush_lag` in seconds; NULL once caught up.
    pub flush_lag: Option<f64>,
}

/// The slot's state, if it exists.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SetupError> {
    // to_jsonb(s) reads wal_status where it exists (13+) without failing on older servers.
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.active, s.confirmed_flush_lsn::text,
                    to_jsonb(s) ->> 'wal_status',
                    CASE WHEN pg_is_in_recovery() OR s.confirmed_flush_lsn IS NULL THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8 END,
                    extract(epoch FROM r.flush_lag)::float8
             FROM pg_replication_slots s
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(db_err("read the replication slot's state"))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        active: r.get(1),
        confirmed_flush_lsn: r.get(2),
        wal_status: r.get(3),
        lag_bytes: r.get(4),
        flush_lag: r.get(5),
    }))
}

/// Run setup; returns what was done, step by step (see [`incomplete`] for
/// steps the role may not do). The ledger's schema and what it remembers of
/// the mapped tables go to `ledger_db` (the source database itself unless
/// `[ledger] url` names another); the publication, replica identity and
/// slot to `source`.
pub async fn run(
    source: &Client,
    ledger_db: &Client,
    cfg: &Config,
) -> Result<Vec<Step>, SetupError> {
    check_wal_level(source).await?;
    check_failover_support(source, cfg).await?;
    let ledger = ledger::Ledger::new(&cfg.ledger.schema);
    let mapping = objects::resolve_all(source, ledger_db, &ledger, cfg)
        .await
        .map_err(|e| denied(e, "read the ledger"))?;
    let mut steps = vec![Step::found("wal_level is logical")];
    let mut schema = ledger_schema(ledger_db, &cfg.ledger.schema).await?;
    if separate_ledger(cfg) {
        schema.what = format!(
            "{} in {}",
            schema.what,
            crate::pg::describe_target(cfg.ledger_url())
        );
    }
    let ledger_ready = schema.needs_dba.is_none();
    steps.push(schema);
    if ledger_ready {
        let saved = mapping.save(&ledger, ledger_db).await;
        if let Err(e) = saved.map_err(|e| denied(e.into(), "remember the mapped tables")) {
            let sql = ledger_sql(&cfg.ledger.schema, &current_user(ledger_db).await?);
            steps.push(Step::skip_denied(
                e,
                "the mapped tables remembered in the ledger",
                sql,
            )?);
        }
    }
    steps.push(Step::found(format!(
        "{} mapped table(s) exist and have primary keys",
        cfg.objects.len()
    )));
    for notice in &mapping.notices {
        steps.push(Step::found(format!("note: {notice}")));
    }
    // By the names they have now: a renamed table is known by its identity.
    let tables = current_tables(source, &mapping.relids()).await?;
    steps.push(publication(source, cfg, &tables, &mapping.relids()).await?);
    if cfg.source.replica_identity == ReplicaIdentity::Full {
        for table in &tables {
            steps.push(replica_identity_full(source, table).await?);
        }
    }
    steps.push(slot::slot(source, cfg).await?);
    Ok(steps)
}

/// A permission error from resolving the mapped tables (the ledger's
/// objects table, usually) as [`SetupError::Privilege`].
fn denied(e: ResolveError, action: &str) -> SetupError {
    let sqlstate = match &e {
        ResolveError::Ledger(l) => l.sqlstate(),
        ResolveError::Catalog(c) => c.sqlstate(),
        _ => None,
    };
    if sqlstate == Some("42501") {
        SetupError::Privilege {
            action: action.into(),
            detail: e.to_string(),
        }
    } else {
        e.into()
    }
}

async fn current_user(client: &Client) -> Result<String, SetupError> {
    Ok(client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(db_err("read the current role"))?
        .get(0))
}

/// The ledger's DDL, run by the role. The role may own the schema without
/// being allowed to create schemas (`CREATE SCHEMA IF NOT EXISTS` checks
/// that before it looks), so an existing schema is not created again. A
/// ledger whose tables another role owns cannot be altered by this one: if
/// every table is there it is left as it is, else the step is skipped.
async fn ledger_schema(client: &Client, schema: &str) -> Result<Step, SetupError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind = 'r')",
            &[&schema, &ledger::schema::TABLES.as_slice()],
        )
        .await
        .map_err(db_err("look up the ledger schema"))?;
    let (schema_exists, tables): (bool, i64) = (row.get(0), row.get(1));
    let complete = tables == ledger::schema::TABLES.len() as i64;
    let what = format!("ledger schema {schema}");
    for stmt in ledger::schema::ddl(schema) {
        if schema_exists && stmt.starts_with("CREATE SCHEMA") {
            continue;
        }
        let Err(e) = client
            .batch_execute(&stmt)
            .await
            .map_err(db_err("create the ledger schema"))
        else {
            continue;
        };
        if complete && matches!(e, SetupError::Privilege { .. }) {
            return Ok(Step::found(format!(
                "{what} (its tables belong to another role: left as it is; if this walhook is newer, a DBA applies the ledger part of `walhook setup --print-sql`)"
            )));
        }
        let sql = ledger_sql(schema, &current_user(client).await?);
        return Step::skip_denied(e, what, sql);
    }
    Ok(if complete {
        Step::found(what)
    } else {
        Step::made(what)
    })
}

/// The tables `relids` as (schema, table) by their names now, in order.
async fn current_tables(
    client: &Client,
    relids: &[u32],
) -> Result<Vec<(String, String)>, SetupError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM unnest($1::oid[]) WITH ORDINALITY AS m(relid, i)
             JOIN pg_class c ON c.oid = m.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY m.i",
            &[&relids],
        )
        .await
        .map_err(db_err("look up the mapped tables"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn qualified_sql((schema, table): &(String, String)) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

async fn publication(
    client: &Client,
    cfg: &Config,
    current: &[(String, String)],
    relids: &[u32],
) -> Result<Step, SetupError> {
    let publication = &cfg.source.publication;
    let name = quote_ident(publication);
    let tables = current
        .iter()
        .map(qualified_sql)
        .collect::<Vec<_>>()
        .join(", ");
    let Some(have) = publication_tables(client, publication).await? else {
        let created = client
            .batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE {tables}"))
            .await
            .map_err(db_err("create the publication"));
        return match created {
            Ok(()) => Ok(Step::made(format!("publication {publication} created"))),
            Err(e) => Step::skip_denied(
                e,
                format!("publication {publication}"),
                vec![plan::create_publication_sql(cfg)],
            ),
        };
    };
    let problems = publication_problems(client, publication, relids).await?;
    let mut want = current.to_vec();
    want.sort();
    if have == want && problems.is_empty() {
        return Ok(Step::found(format!(
            "publication {publication} covers exactly the mapped tables"
        )));
    }
    // SET TABLE also drops row filters and column lists.
    let altered = client
        .batch_execute(&plan::alter_publication_sql(cfg, &tables).join("\n"))
        .await
        .map_err(db_err("change the publication's tables"));
    let what =
        format!("publication {publication} set to the mapped tables, every operation, no filters");
    match altered {
        Ok(()) => Ok(Step::made(what)),
        Err(e) => Step::skip_denied(e, what, plan::alter_publication_sql(cfg, &tables)),
    }
}

async fn replica_identity_full(
    client: &Client,
    table: &(String, String),
) -> Result<Step, SetupError> {
    let ident: i8 = client
        .query_one(
            "SELECT c.relreplident::\"char\" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.0, &table.1],
        )
        .await
        .map_err(db_err("read replica identity"))?
        .get(0);
    let qualified = qualified_sql(table);
    let what = format!("{qualified} has REPLICA IDENTITY FULL");
    if ident as u8 == b'f' {
        return Ok(Step::found(what));
    }
    let sql = format!("ALTER TABLE {qualified} REPLICA IDENTITY FULL;");
    match client
        .batch_execute(&sql)
        .await
        .map_err(db_err("set REPLICA IDENTITY FULL"))
    {
        Ok(()) => Ok(Step::made(what)),
        Err(e) => Step::skip_denied(e, what, vec![sql]),
    }
}
