//! The privileges of the role walhook logs in as: each one it lacks is a
//! failed check of its own, with the statement that grants it (the same
//! words `walhook run` refuses to start with).

use tokio_postgres::Client;

use super::{Check, db_fail};
use crate::config::Config;
use crate::pg::quote_ident;
use crate::source::setup::grants::{self, Missing};
use crate::source::setup::{self, SetupError};

/// Pushes one check per missing privilege (or one that says all is there);
/// whether the role may read and write the ledger.
pub(super) async fn privileges(
    source: &Client,
    ledger_db: Option<&Client>,
    cfg: &Config,
    checks: &mut Vec<Check>,
) -> bool {
    match find(source, ledger_db, cfg).await {
        Err(e) => {
            checks.push(db_fail("privileges", e));
            false
        }
        Ok(found) => {
            let ledger_ok = found.ledger.is_empty();
            if found.missing.is_empty() && ledger_ok {
                checks.push(Check::ok("privileges", found.summary));
            }
            for (role, m) in found.missing.iter().chain(&found.ledger) {
                checks.push(Check::fail("privileges", m.sentence(role), m.hint()));
            }
            ledger_ok
        }
    }
}

struct Found {
    summary: String,
    /// On the source, by the role that lacks them.
    missing: Vec<(String, Missing)>,
    /// On the ledger, by the ledger's role.
    ledger: Vec<(String, Missing)>,
}

async fn find(
    source: &Client,
    ledger_db: Option<&Client>,
    cfg: &Config,
) -> Result<Found, SetupError> {
    let row = source
        .query_one(
            "SELECT current_user::text, r.rolsuper, has_database_privilege(current_database(), 'CREATE'),
                    current_database()::text
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(setup::db_err("read the role's attributes"))?;
    let (role, superuser, create, db): (String, bool, bool, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut missing = Vec::new();
    if let Some(m) = grants::replication(source).await? {
        missing.push(m);
    }
    missing.extend(grants::mapped_tables(source, cfg).await?);
    let mut ledger = Vec::new();
    if let Some(l) = ledger_db {
        let ledger_role = grants::current_role(l).await?;
        if !ledger_schema_exists(l, &cfg.ledger.schema).await? && !create_ok(l).await? {
            // Only then does `walhook setup` need to create a schema.
            let db = l
                .query_one("SELECT current_database()::text", &[])
                .await
                .map_err(setup::db_err("read the database name"))?
                .get::<_, String>(0);
            ledger.push((ledger_role.clone(), create_missing(&db, &ledger_role)));
        }
        for m in grants::ledger(l, &cfg.ledger.schema).await? {
            ledger.push((ledger_role.clone(), m));
        }
    }
    let summary = if superuser {
        format!("role {role} is a superuser")
    } else {
        let create = if create {
            format!(", CREATE on database {db}")
        } else {
            String::new()
        };
        format!(
            "role {role} has REPLICATION, the ledger's rights and SELECT on the mapped tables{create}"
        )
    };
    Ok(Found {
        summary,
        missing: missing.into_iter().map(|m| (role.clone(), m)).collect(),
        ledger,
    })
}

async fn ledger_schema_exists(client: &Client, schema: &str) -> Result<bool, SetupError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(setup::db_err("look up the ledger schema"))?
        .get(0))
}

async fn create_ok(client: &Client) -> Result<bool, SetupError> {
    Ok(client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(setup::db_err("read the role's privileges"))?
        .get(0))
}

fn create_missing(db: &str, role: &str) -> Missing {
    Missing {
        what: format!("CREATE on database {db}"),
        why: "`walhook setup` creates the ledger schema, unless a DBA applies `walhook setup --print-sql`",
        fix: vec![format!(
            "GRANT CREATE ON DATABASE {} TO {};",
            quote_ident(db),
            quote_ident(role)
        )],
    }
}

/// When the publication must change and the role may not change it (it is
/// not the owner): who may, for the publication check's hint.
pub(super) async fn publication_owner(client: &Client, publication: &str) -> Option<String> {
    let row = client
        .query_opt(
            "SELECT pg_get_userbyid(p.pubowner)::text, current_user::text
             FROM pg_publication p
             WHERE p.pubname = $1 AND NOT pg_has_role(current_user, p.pubowner, 'USAGE')",
            &[&publication],
        )
        .await
        .ok()??;
    let (owner, role): (String, String) = (row.get(0), row.get(1));
    Some(format!(
        "role {role} does not own the publication {publication} and may not change it: as its owner {owner} (who must own the mapped tables) or a superuser run ALTER PUBLICATION {} SET TABLE <the mapped tables>; ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate'); (`walhook setup --print-sql` has the table list)",
        quote_ident(publication),
        quote_ident(publication)
    ))
}
