//! `walhook setup` and the checks it shares with `run` and `check`: the
//! database must have `wal_level = logical`, every mapped table must exist and
//! have a primary key; then the ledger schema, the publication over exactly the
//! mapped tables, `REPLICA IDENTITY FULL` and the logical slot are created.
//! Every step looks before it acts, so a second run changes nothing.

use tokio_postgres::Client;

use crate::config::{Config, ReplicaIdentity};
use crate::ledger;
use crate::pg::quote_ident;

/// Why setup (or a pre-flight check) cannot go on; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "wal_level is '{0}', walhook needs 'logical'. Run `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL."
    )]
    WalLevel(String),
    #[error(
        "mapped table {0} does not exist. Create it, or fix `table` in the [[objects]] entry of the config."
    )]
    NoTable(String),
    #[error(
        "mapped table {0} has no primary key; walhook needs one for record keys, event ids and per-record order. Add one: ALTER TABLE {0} ADD PRIMARY KEY (...);"
    )]
    NoPrimaryKey(String),
    #[error(
        "replication slot {slot} exists but uses the output plugin '{plugin}', not pgoutput. Drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another `source.slot`."
    )]
    SlotPlugin { slot: String, plugin: String },
    #[error(
        "replication slot {slot} belongs to database '{database}', not this one (slot names are shared by the whole cluster). Choose another `source.slot` for this database, or drop the other slot if it is unused."
    )]
    SlotElsewhere { slot: String, database: String },
    #[error(
        "permission denied while trying to {action}: {detail}. The role needs REPLICATION, CREATE on the database, and ownership of the mapped tables (see sql/00-role.sql), or a DBA can run the statements of `walhook setup --print-sql`."
    )]
    Privilege { action: String, detail: String },
    #[error("while trying to {action}: {source}")]
    Db {
        action: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
}

fn db_err(action: &str) -> impl FnOnce(tokio_postgres::Error) -> SetupError + '_ {
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
                source,
            }
        }
    }
}

/// One line of what setup did or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub changed: bool,
}

/// The SQL a DBA can run by hand for this config (what `--print-sql` prints).
pub fn plan_sql(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    out.push(
        "-- walhook needs wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart)"
            .into(),
    );
    for stmt in ledger::schema::ddl(&cfg.ledger.schema) {
        out.push(format!("{stmt};"));
    }
    out.push(format!(
        "CREATE PUBLICATION {} FOR TABLE {};",
        quote_ident(&cfg.source.publication),
        tables_sql(cfg)
    ));
    if cfg.source.replica_identity == ReplicaIdentity::Full {
        for o in &cfg.objects {
            out.push(format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL;",
                o.qualified_sql()
            ));
        }
    }
    out.push(format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        cfg.source.slot
    ));
    out
}

fn tables_sql(cfg: &Config) -> String {
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

/// Every mapped table exists and has a primary key.
pub async fn check_tables(client: &Client, cfg: &Config) -> Result<(), SetupError> {
    for o in &cfg.objects {
        let row = client
            .query_opt(
                "SELECT c.oid, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&o.schema, &o.table],
            )
            .await
            .map_err(db_err("look up the mapped tables"))?;
        match row {
            None => return Err(SetupError::NoTable(o.qualified_sql())),
            Some(r) if !r.get::<_, bool>(1) => {
                return Err(SetupError::NoPrimaryKey(o.qualified_sql()));
            }
            Some(_) => {}
        }
    }
    Ok(())
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

/// Run setup; returns what was done, step by step.
pub async fn run(client: &Client, cfg: &Config) -> Result<Vec<Step>, SetupError> {
    let mut steps = Vec::new();
    check_wal_level(client).await?;
    steps.push(Step {
        what: "wal_level is logical".into(),
        changed: false,
    });
    check_tables(client, cfg).await?;
    steps.push(Step {
        what: format!(
            "{} mapped table(s) exist and have primary keys",
            cfg.objects.len()
        ),
        changed: false,
    });

    let schema = &cfg.ledger.schema;
    let existed = client
        .query_one(
            "SELECT to_regclass(format('%I.attempts', $1::text)) IS NOT NULL",
            &[schema],
        )
        .await
        .map_err(db_err("look up the ledger schema"))?
        .get::<_, bool>(0);
    for stmt in ledger::schema::ddl(schema) {
        client
            .batch_execute(&stmt)
            .await
            .map_err(db_err("create the ledger schema"))?;
    }
    steps.push(Step {
        what: format!("ledger schema {schema}"),
        changed: !existed,
    });

    let publication = &cfg.source.publication;
    let want = mapped_tables(cfg);
    match publication_tables(client, publication).await? {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(publication),
                    tables_sql(cfg)
                ))
                .await
                .map_err(db_err("create the publication"))?;
            steps.push(Step {
                what: format!("publication {publication} created"),
                changed: true,
            });
        }
        Some(have) if have == want => steps.push(Step {
            what: format!("publication {publication} covers exactly the mapped tables"),
            changed: false,
        }),
        Some(_) => {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} SET TABLE {}",
                    quote_ident(publication),
                    tables_sql(cfg)
                ))
                .await
                .map_err(db_err("change the publication's tables"))?;
            steps.push(Step {
                what: format!("publication {publication} set to the mapped tables"),
                changed: true,
            });
        }
    }

    if cfg.source.replica_identity == ReplicaIdentity::Full {
        for o in &cfg.objects {
            let ident: i8 = client
                .query_one(
                    "SELECT c.relreplident::\"char\" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2",
                    &[&o.schema, &o.table],
                )
                .await
                .map_err(db_err("read replica identity"))?
                .get(0);
            let full = ident as u8 == b'f';
            if !full {
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL",
                        o.qualified_sql()
                    ))
                    .await
                    .map_err(db_err("set REPLICA IDENTITY FULL"))?;
            }
            steps.push(Step {
                what: format!("{} has REPLICA IDENTITY FULL", o.qualified_sql()),
                changed: !full,
            });
        }
    }

    let slot = &cfg.source.slot;
    match slot_plugin(client, slot).await? {
        Some(p) if p == "pgoutput" => steps.push(Step {
            what: format!("replication slot {slot} (pgoutput)"),
            changed: false,
        }),
        Some(plugin) => {
            return Err(SetupError::SlotPlugin {
                slot: slot.clone(),
                plugin,
            });
        }
        None => {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .map_err(db_err("create the replication slot"))?;
            steps.push(Step {
                what: format!("replication slot {slot} created (pgoutput)"),
                changed: true,
            });
        }
    }
    Ok(steps)
}
