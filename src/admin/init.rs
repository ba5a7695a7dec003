//! `walhook init`: a first config without reading the reference. It lists
//! the database's tables that have a primary key as commented `[[objects]]`
//! (slugs suggested from the table names), one endpoint whose secret is read
//! from the environment (a fresh one is generated for it), and every other
//! key at its default, commented.

use std::fmt::Write as _;

use tokio_postgres::Client;

/// The environment variable the starter endpoint's secret is read from.
pub const SECRET_ENV: &str = "WALHOOK_SECRET";

/// A table `init` offers to map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub schema: String,
    pub table: String,
}

/// The ordinary tables with a primary key, outside the system schemas and
/// walhook's own ledger schema, by schema and name.
pub async fn candidates(
    db: &Client,
    ledger_schema: &str,
) -> Result<Vec<Candidate>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1)
               AND n.nspname NOT LIKE 'pg\\_%'
               AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             ORDER BY 1, 2",
            &[&ledger_schema],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect())
}

/// A slug for a table name: lower case, `[a-z][a-z0-9_]*`, a plural `s`
/// dropped (`leads` -> `lead`, `crm_students` -> `crm_student`).
pub fn suggest_slug(table: &str) -> String {
    let mut slug: String = table
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '_' }
        })
        .collect();
    if slug.ends_with("ies") && slug.len() > 4 {
        slug.truncate(slug.len() - 3);
        slug.push('y');
    } else if slug.ends_with('s') && !slug.ends_with("ss") && slug.len() > 1 {
        slug.pop();
    }
    if !slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        slug.insert_str(0, "t_");
    }
    slug
}

/// The starter config text. With no candidate (no database given, or none
/// with a primary key), one example object is written, commented.
pub fn starter_config(url: Option<&str>, candidates: &[Candidate]) -> String {
    let mut out = String::from(
        "# walhook configuration, written by `walhook init`.\n\
         # config.example.toml in the repository documents every key.\n\n",
    );
    match url {
        Some(url) => {
            let _ = writeln!(out, "[source]\nurl = {:?}", url);
        }
        None => out.push_str("[source]\nurl_env = \"DATABASE_URL\"          # the database URL comes from this variable\n"),
    }
    out.push_str(
        "# name = \"app\"                   # first part of event ids\n\
         # slot = \"walhook\"\n\
         # publication = \"walhook\"\n\n",
    );
    out.push_str("# Uncomment the tables to map; each becomes events slug.create|update|delete.\n");
    if candidates.is_empty() {
        out.push_str("[[objects]]\ntable = \"public.leads\"\nslug = \"lead\"\n# exclude_columns = [\"password_hash\"]\n");
    }
    let mut slugs = std::collections::BTreeSet::new();
    for (i, c) in candidates.iter().enumerate() {
        let mut slug = suggest_slug(&c.table);
        while !slugs.insert(slug.clone()) {
            slug.push('_');
        }
        // The first one is left active so the file loads as it is.
        let mark = if i == 0 { "" } else { "# " };
        let _ = writeln!(
            out,
            "\n{mark}[[objects]]\n{mark}table = \"{}.{}\"\n{mark}slug = \"{slug}\"\n# exclude_columns = []",
            c.schema, c.table
        );
    }
    let _ = writeln!(
        out,
        "\n[[endpoints]]\nid = \"receiver\"\nurl = \"http://127.0.0.1:8787/\"      # `walhook listen` receives here; use https:// for a real receiver\nsecret_env = \"{SECRET_ENV}\"        # the signing secret comes from this variable\n# events = [\"*\"]\n# signing = [\"superleap\"]         # and/or \"standard-webhooks\" (needs a whsec_ secret)\n# timeout = \"10s\""
    );
    out.push_str(
        "\n# [delivery]\n# ordering = \"per-record\"\n# max_in_flight = 256\n# spill_after = \"1s\"\n\n\
         # [delivery.retry]                # the three-day rule\n# initial = \"30s\"\n# disable_after = \"72h\"\n\n\
         # [ledger]\n# schema = \"walhook\"\n# retention = \"7d\"\n\n\
         # [admin]\n# listen = \"127.0.0.1:9187\"\n",
    );
    out
}

/// A fresh signing secret: 32 random bytes, base64, as `whsec_...` so it
/// also serves Standard Webhooks.
pub fn new_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn slugs_from_table_names() {
        assert_eq!(suggest_slug("leads"), "lead");
        assert_eq!(suggest_slug("opportunities"), "opportunity");
        assert_eq!(suggest_slug("Address"), "address");
        assert_eq!(suggest_slug("class"), "class");
        assert_eq!(suggest_slug("user-events"), "user_event");
        assert_eq!(suggest_slug("2fa_codes"), "t_2fa_code");
    }

    #[test]
    fn the_starter_config_loads_as_written() {
        let tables = [
            Candidate {
                schema: "public".into(),
                table: "leads".into(),
            },
            Candidate {
                schema: "crm".into(),
                table: "students".into(),
            },
        ];
        let env = |name: &str| {
            (name == SECRET_ENV || name == "DATABASE_URL").then(|| match name {
                "DATABASE_URL" => "postgres://u:p@127.0.0.1/app".to_string(),
                _ => new_secret(),
            })
        };
        for (url, tables) in [(None, &tables[..]), (Some("postgres://u:p@h/db"), &[][..])] {
            let text = starter_config(url, tables);
            let cfg = Config::from_toml_str_with_env(&text, "walhook.toml", &env)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(cfg.endpoints[0].id, "receiver");
            assert_eq!(cfg.objects.len(), 1, "{text}");
        }
        let text = starter_config(None, &tables);
        assert!(text.contains("# table = \"crm.students\""), "{text}");
        assert!(text.contains("# slug = \"student\""), "{text}");
    }

    #[test]
    fn secrets_are_fresh_whsec_keys() {
        let a = new_secret();
        assert!(crate::config::decode_whsec(&a).is_ok());
        assert_ne!(a, new_secret());
    }
}
