//! What the role walhook logs in as lacks, each with the statements that
//! grant it: `walhook check` lists every one, and `walhook run` refuses to
//! start without the ones it needs, in the same words. Everything is read
//! from the catalog with `has_*_privilege`, which also answers for
//! superusers and owners, so nothing is tried and nothing fails half-way.

use tokio_postgres::Client;

use super::{SetupError, db_err};
use crate::config::Config;
use crate::ledger;
use crate::pg::quote_ident;

/// One privilege (or a few of the same kind) the role lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What it lacks, e.g. `SELECT on public.leads`.
    pub what: String,
    /// Why walhook needs it.
    pub why: &'static str,
    /// The statements that grant it, `;`-terminated (or `--` comments), run
    /// by a superuser or the object's owner.
    pub fix: Vec<String>,
}

impl Missing {
    /// `role R lacks X (why)`, the sentence `check` and `run` print.
    pub fn sentence(&self, role: &str) -> String {
        format!("role {role} lacks {} ({})", self.what, self.why)
    }

    /// `as a superuser or the owner run: ...`.
    pub fn hint(&self) -> String {
        format!("as a superuser or the owner run: {}", self.fix.join(" "))
    }
}

/// The role `client` is logged in as.
pub async fn current_role(client: &Client) -> Result<String, SetupError> {
    Ok(client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(db_err("read the current role"))?
        .get(0))
}

/// The REPLICATION attribute (a superuser has it; on Amazon RDS and Aurora
/// membership of `rds_replication` stands for it).
pub async fn replication(client: &Client) -> Result<Option<Missing>, SetupError> {
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper OR r.rolreplication OR EXISTS (
                    SELECT 1 FROM pg_roles g
                    WHERE g.rolname = 'rds_replication' AND pg_has_role(current_user, g.oid, 'MEMBER'))
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(db_err("read the role's attributes"))?;
    let (role, has): (String, bool) = (row.get(0), row.get(1));
    Ok((!has).then(|| {
        let r = quote_ident(&role);
        Missing {
            what: "the REPLICATION attribute".into(),
            why: "the replication connection and the slot need it",
            fix: vec![
                format!("ALTER ROLE {r} REPLICATION;"),
                format!("-- on Amazon RDS / Aurora: GRANT rds_replication TO {r};"),
            ],
        }
    }))
}

/// USAGE on the ledger schema, SELECT, INSERT, UPDATE and DELETE on its
/// tables and USAGE on its sequences. Nothing when the schema does not
/// exist (the ledger check says so).
pub async fn ledger(client: &Client, schema: &str) -> Result<Vec<Missing>, SetupError> {
    let role = quote_ident(&current_role(client).await?);
    let s = quote_ident(schema);
    let read = db_err("read the privileges on the ledger");
    let Some(row) = client
        .query_opt(
            "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .map_err(read)?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if !row.get::<_, bool>(0) {
        out.push(Missing {
            what: format!("USAGE on schema {schema}"),
            why: "the ledger lives there",
            fix: vec![format!("GRANT USAGE ON SCHEMA {s} TO {role};")],
        });
    }
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind = 'S',
                    array_remove(ARRAY[
                      CASE WHEN c.relkind <> 'S' AND NOT has_table_privilege(c.oid, 'SELECT') THEN 'SELECT' END,
                      CASE WHEN c.relkind <> 'S' AND NOT has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                      CASE WHEN c.relkind <> 'S' AND NOT has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
                      CASE WHEN c.relkind <> 'S' AND NOT has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
                      CASE WHEN c.relkind = 'S' AND NOT has_sequence_privilege(c.oid, 'USAGE') THEN 'USAGE' END
                    ], NULL)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND (c.relkind = 'S' OR (c.relkind IN ('r', 'p') AND c.relname = ANY($2)))
             ORDER BY 2, 1",
            &[&schema, &ledger::schema::TABLES.as_slice()],
        )
        .await
        .map_err(db_err("read the privileges on the ledger"))?;
    let lacking: Vec<(String, bool, Vec<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .filter(|(_, _, privs): &(String, bool, Vec<String>)| !privs.is_empty())
        .collect();
    let (seqs, tables): (Vec<_>, Vec<_>) = lacking.into_iter().partition(|(_, seq, _)| *seq);
    if !tables.is_empty() {
        out.push(object_rights(&s, &role, "TABLES", "", &tables));
    }
    if !seqs.is_empty() {
        out.push(object_rights(&s, &role, "SEQUENCES", "SEQUENCE ", &seqs));
    }
    Ok(out)
}

/// One [`Missing`] for the ledger tables (or sequences) lacking rights: a
/// statement per object when there are few, else one for the whole schema.
fn object_rights(
    s: &str,
    role: &str,
    all: &str,
    kind: &str,
    lacking: &[(String, bool, Vec<String>)],
) -> Missing {
    let what = lacking
        .iter()
        .map(|(name, _, privs)| format!("{} on {s}.{name}", privs.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    let fix = if lacking.len() <= 3 {
        lacking
            .iter()
            .map(|(name, _, privs)| {
                format!(
                    "GRANT {} ON {kind}{s}.{} TO {role};",
                    privs.join(", "),
                    quote_ident(name)
                )
            })
            .collect()
    } else if kind.is_empty() {
        vec![format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL {all} IN SCHEMA {s} TO {role};"
        )]
    } else {
        vec![format!("GRANT USAGE ON ALL {all} IN SCHEMA {s} TO {role};")]
    };
    Missing {
        what,
        why: "walhook reads and writes the ledger",
        fix,
    }
}

/// USAGE on the mapped tables' schemas and SELECT on the tables (backfills
/// read them). Tables that do not exist are left to the tables check.
pub async fn mapped_tables(client: &Client, cfg: &Config) -> Result<Vec<Missing>, SetupError> {
    let role = quote_ident(&current_role(client).await?);
    let (schemas, tables): (Vec<&str>, Vec<&str>) = cfg
        .objects
        .iter()
        .map(|o| (o.schema.as_str(), o.table.as_str()))
        .unzip();
    // By name through the catalog: to_regclass would fail outright on a
    // schema the role may not use.
    let rows = client
        .query(
            "SELECT DISTINCT m.schema, m.tab, has_schema_privilege(n.oid, 'USAGE'),
                    has_table_privilege(c.oid, 'SELECT')
             FROM unnest($1::text[], $2::text[]) AS m(schema, tab)
             JOIN pg_namespace n ON n.nspname = m.schema
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = m.tab
             ORDER BY 1, 2",
            &[&schemas, &tables],
        )
        .await
        .map_err(db_err("read the privileges on the mapped tables"))?;
    let mut out: Vec<Missing> = Vec::new();
    for r in rows {
        let (schema, table, usage, select): (String, String, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let schema_what = format!("USAGE on schema {schema}");
        if !usage && !out.iter().any(|m| m.what == schema_what) {
            out.push(Missing {
                what: schema_what,
                why: "a mapped table is in it",
                fix: vec![format!(
                    "GRANT USAGE ON SCHEMA {} TO {role};",
                    quote_ident(&schema)
                )],
            });
        }
        if !select {
            out.push(Missing {
                what: format!("SELECT on {schema}.{table}"),
                why: "backfills read the mapped tables",
                fix: vec![format!(
                    "GRANT SELECT ON {}.{} TO {role};",
                    quote_ident(&schema),
                    quote_ident(&table)
                )],
            });
        }
    }
    Ok(out)
}

/// What `walhook run` cannot start without: REPLICATION on the source, the
/// ledger's rights in its database. An error naming each with its GRANT.
pub async fn require_for_run(
    source: &Client,
    ledger_db: &Client,
    cfg: &Config,
) -> Result<(), SetupError> {
    let mut lines = Vec::new();
    let source_role = current_role(source).await?;
    if let Some(m) = replication(source).await? {
        lines.push(format!("{}; {}", m.sentence(&source_role), m.hint()));
    }
    let ledger_role = current_role(ledger_db).await?;
    for m in ledger(ledger_db, &cfg.ledger.schema).await? {
        lines.push(format!("{}; {}", m.sentence(&ledger_role), m.hint()));
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(SetupError::MissingPrivileges(lines.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lacking(names: &[&str]) -> Vec<(String, bool, Vec<String>)> {
        names
            .iter()
            .map(|n| (n.to_string(), false, vec!["SELECT".into(), "INSERT".into()]))
            .collect()
    }

    #[test]
    fn a_few_tables_get_a_statement_each_many_one_for_the_schema() {
        let few = object_rights("\"wh\"", "\"w\"", "TABLES", "", &lacking(&["events"]));
        assert_eq!(few.what, "SELECT, INSERT on \"wh\".events");
        assert_eq!(
            few.fix,
            ["GRANT SELECT, INSERT ON \"wh\".\"events\" TO \"w\";"]
        );
        let many = object_rights(
            "\"wh\"",
            "\"w\"",
            "TABLES",
            "",
            &lacking(&["a", "b", "c", "d"]),
        );
        assert_eq!(
            many.fix,
            ["GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"wh\" TO \"w\";"]
        );
        let seq = object_rights(
            "\"wh\"",
            "\"w\"",
            "SEQUENCES",
            "SEQUENCE ",
            &lacking(&["s"]),
        );
        assert_eq!(
            seq.fix,
            ["GRANT SELECT, INSERT ON SEQUENCE \"wh\".\"s\" TO \"w\";"]
        );
    }

    #[test]
    fn the_sentence_names_the_role_and_the_hint_the_statements() {
        let m = Missing {
            what: "SELECT on public.leads".into(),
            why: "backfills read the mapped tables",
            fix: vec!["GRANT SELECT ON \"public\".\"leads\" TO \"w\";".into()],
        };
        assert_eq!(
            m.sentence("w"),
            "role w lacks SELECT on public.leads (backfills read the mapped tables)"
        );
        assert!(
            m.hint()
                .ends_with("GRANT SELECT ON \"public\".\"leads\" TO \"w\";")
        );
    }
}
