//! `walhook setup --print-sql`: everything a DBA runs so that walhook can
//! work as a role with `LOGIN REPLICATION` only (not a superuser, not the
//! tables' owner). The role owns the ledger schema and its tables (so it
//! reads and writes them, and a later `walhook setup` run by the role can
//! upgrade them), may read the mapped tables (backfills do), and needs
//! nothing else: the DBA makes the publication and sets the replica identity
//! as the tables' owner, and makes the slot (or lets the role make it).

use crate::config::{Config, ReplicaIdentity};
use crate::ledger;
use crate::pg::{describe_target, parse_url, quote_ident, quote_literal};
use crate::secret::Secret;

/// The role the SQL is for when neither `--role` nor the URL names one.
pub const FALLBACK_ROLE: &str = "walhook";

/// The user a URL logs in as, if it names one.
pub fn url_user(url: &Secret) -> Option<String> {
    parse_url(url).ok()?.get_user().map(str::to_owned)
}

/// The SQL a DBA runs for `cfg` (what `--print-sql` prints), for `role`:
/// given, or else the user in each database's URL. With a separate ledger
/// database, a comment line before each part says where to run it.
pub fn plan_sql(cfg: &Config, role: Option<&str>) -> Vec<String> {
    let source_role = role
        .map(str::to_owned)
        .or_else(|| url_user(&cfg.source.url))
        .unwrap_or_else(|| FALLBACK_ROLE.into());
    let ledger_role = role
        .map(str::to_owned)
        .or_else(|| url_user(cfg.ledger_url()))
        .unwrap_or_else(|| source_role.clone());
    let mut out = header(&source_role, role.is_some());
    let separate = super::separate_ledger(cfg);
    if separate {
        out.push(String::new());
        out.push(format!(
            "-- In the ledger database ({}):",
            describe_target(cfg.ledger_url())
        ));
        out.extend(connect_sql(cfg.ledger_url(), &ledger_role));
        out.extend(ledger_sql(&cfg.ledger.schema, &ledger_role));
        out.push(String::new());
        out.push(format!(
            "-- In the source database ({}):",
            describe_target(&cfg.source.url)
        ));
        out.extend(connect_sql(&cfg.source.url, &source_role));
    } else {
        out.push(String::new());
        out.extend(connect_sql(&cfg.source.url, &source_role));
        out.extend(ledger_sql(&cfg.ledger.schema, &ledger_role));
    }
    out.push(String::new());
    out.extend(read_sql(cfg, &source_role));
    out.push(String::new());
    out.push("-- As the tables' owner: the publication over exactly the mapped tables".into());
    out.push(format!(
        "-- (to change it later: ALTER PUBLICATION {} SET TABLE ...).",
        quote_ident(&cfg.source.publication)
    ));
    out.push(create_publication_sql(cfg));
    if cfg.source.replica_identity == ReplicaIdentity::Full {
        out.extend(replica_identity_sql(cfg));
    }
    out.push(String::new());
    out.push(
        "-- The slot (or leave it to `walhook setup` run by the role: REPLICATION may create it)."
            .into(),
    );
    out.push(create_slot_sql(cfg));
    out
}

/// Who the SQL is for, who runs it, and what the server needs first.
fn header(source_role: &str, given: bool) -> Vec<String> {
    vec![
        format!(
            "-- walhook setup --print-sql, for role {} ({}).",
            quote_ident(source_role),
            if given {
                "--role"
            } else {
                "the user in source.url; `--role NAME` names another"
            }
        ),
        "-- Run it as a superuser (or the mapped tables' owner with CREATE on the database),"
            .into(),
        "-- e.g. psql -v ON_ERROR_STOP=1 -f walhook.sql. The role must exist; see README \"Least privilege\":".into(),
        format!(
            "--   CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD '...';",
            quote_ident(source_role)
        ),
        "-- walhook needs wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart)"
            .into(),
    ]
}

/// `GRANT CONNECT` on the database `url` names.
fn connect_sql(url: &Secret, role: &str) -> Vec<String> {
    let db = parse_url(url)
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_owned));
    match db {
        Some(db) => vec![format!(
            "GRANT CONNECT ON DATABASE {} TO {};",
            quote_ident(&db),
            quote_ident(role)
        )],
        None => Vec::new(),
    }
}

/// The ledger schema owned by `role`, its tables created as `role` (so it
/// owns them too), and grants for whatever another role made in it before
/// or makes later. A DBA who is not a superuser must be able to act as the
/// role for `AUTHORIZATION` and `SET ROLE`: `GRANT role TO CURRENT_USER`.
pub fn ledger_sql(schema: &str, role: &str) -> Vec<String> {
    let (s, r) = (quote_ident(schema), quote_ident(role));
    let mut out = vec![
        format!("-- The ledger: schema {s}, owned by the role, its tables created as the role."),
        format!("-- A DBA who is not a superuser first runs: GRANT {r} TO CURRENT_USER;"),
        format!("CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r};"),
        format!("ALTER SCHEMA {s} OWNER TO {r};"),
        format!("SET ROLE {r};"),
    ];
    // The role may not create schemas (no CREATE on the database), and
    // CREATE SCHEMA IF NOT EXISTS checks that before it looks.
    out.extend(
        ledger::schema::ddl(schema)
            .into_iter()
            .filter(|stmt| !stmt.starts_with("CREATE SCHEMA"))
            .map(|stmt| format!("{stmt};")),
    );
    out.push("RESET ROLE;".into());
    out.push(format!(
        "-- Tables another role made in {s} before, or makes later: the privileges walhook uses."
    ));
    out.push(format!("GRANT USAGE, CREATE ON SCHEMA {s} TO {r};"));
    out.push(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r};"
    ));
    out.push(format!(
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r};"
    ));
    out.push(format!(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r};"
    ));
    out.push(format!(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r};"
    ));
    out
}

/// USAGE on the mapped tables' schemas and SELECT on the tables: backfills
/// read them.
fn read_sql(cfg: &Config, role: &str) -> Vec<String> {
    let r = quote_ident(role);
    let mut schemas: Vec<&str> = cfg.objects.iter().map(|o| o.schema.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    let mut out = vec!["-- Read access to the mapped tables (backfills read them).".into()];
    for schema in schemas {
        out.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {r};",
            quote_ident(schema)
        ));
    }
    out.push(format!(
        "GRANT SELECT ON {} TO {r};",
        super::tables_sql(cfg)
    ));
    out
}

pub fn create_publication_sql(cfg: &Config) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {};",
        quote_ident(&cfg.source.publication),
        super::tables_sql(cfg)
    )
}

/// What `walhook setup` does to a publication that is not as walhook needs:
/// `tables` are the mapped tables by the names they have now.
pub fn alter_publication_sql(cfg: &Config, tables: &str) -> Vec<String> {
    let name = quote_ident(&cfg.source.publication);
    vec![
        format!("ALTER PUBLICATION {name} SET TABLE {tables};"),
        format!("ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate');"),
    ]
}

pub fn replica_identity_sql(cfg: &Config) -> Vec<String> {
    cfg.objects
        .iter()
        .map(|o| format!("ALTER TABLE {} REPLICA IDENTITY FULL;", o.qualified_sql()))
        .collect()
}

/// `pg_create_logical_replication_slot`, as a failover slot when
/// `source.failover` says so (arguments: temporary, two-phase, failover),
/// and only if there is none yet: `walhook setup` run by the role may have
/// made it already (REPLICATION is enough), and the script must not stop there.
pub fn create_slot_sql(cfg: &Config) -> String {
    let slot = quote_literal(&cfg.source.slot);
    let args = if cfg.source.failover {
        ", false, false, true"
    } else {
        ""
    };
    format!(
        "SELECT pg_create_logical_replication_slot({slot}, 'pgoutput'{args}) WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = {slot});"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_belongs_to_the_role_and_its_tables_are_made_as_the_role() {
        let sql = ledger_sql("wh", "walhook");
        let pos = |needle: &str| {
            sql.iter()
                .position(|s| s.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in {sql:#?}"))
        };
        assert_eq!(
            sql[pos("CREATE SCHEMA")],
            "CREATE SCHEMA IF NOT EXISTS \"wh\" AUTHORIZATION \"walhook\";"
        );
        let (set, reset) = (pos("SET ROLE"), pos("RESET ROLE"));
        let first_table = pos("CREATE TABLE");
        assert!(set < first_table && first_table < reset, "{sql:#?}");
        // Only the DBA creates the schema: the role may not.
        assert_eq!(
            sql.iter()
                .filter(|s| s.starts_with("CREATE SCHEMA"))
                .count(),
            1
        );
        assert!(pos("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES") > reset);
        assert!(sql.iter().all(|s| s.starts_with("--") || s.ends_with(';')));
    }

    #[test]
    fn the_role_is_the_urls_user_unless_named() {
        let text = "[source]\nurl = \"postgres://app_user@h/db\"\n[[objects]]\ntable = \"crm.t\"\nslug = \"t\"\n";
        let cfg = Config::from_toml_str(text, "t.toml").unwrap();
        let sql = plan_sql(&cfg, None).join("\n");
        assert!(sql.contains("AUTHORIZATION \"app_user\";"), "{sql}");
        assert!(
            sql.contains("GRANT USAGE ON SCHEMA \"crm\" TO \"app_user\";"),
            "{sql}"
        );
        assert!(
            sql.contains("GRANT SELECT ON \"crm\".\"t\" TO \"app_user\";"),
            "{sql}"
        );
        assert!(
            sql.contains("GRANT CONNECT ON DATABASE \"db\" TO \"app_user\";"),
            "{sql}"
        );
        let named = plan_sql(&cfg, Some("wh")).join("\n");
        assert!(
            named.contains("AUTHORIZATION \"wh\";") && !named.contains("\"app_user\""),
            "{named}"
        );
    }

    #[test]
    fn failover_slots_are_asked_for_with_the_fifth_argument() {
        let text = "[source]\nurl = \"postgres://w@h/db\"\nfailover = true\n[[objects]]\ntable = \"t\"\nslug = \"t\"\n";
        let cfg = Config::from_toml_str(text, "t.toml").unwrap();
        assert_eq!(
            create_slot_sql(&cfg),
            "SELECT pg_create_logical_replication_slot('walhook', 'pgoutput', false, false, true) WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'walhook');"
        );
    }
}
