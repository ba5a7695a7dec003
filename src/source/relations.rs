//! The relation cache of one replication session: for every relation id the
//! stream has described, whether it is mapped and, if so, how its changes
//! become events. Rebuilt from each Relation message (first use, or after
//! DDL), so schema changes apply to the changes that follow them.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{Config, ObjectConfig};
use crate::event::TableMap;
use crate::pgoutput::{Relation, TypeInfo};

/// What the session knows of one relation.
pub enum RelState {
    Mapped(Box<TableMap>),
    Unmapped,
}

/// Relation id -> state, plus the type names and domain bases needed to map
/// column values.
#[derive(Default)]
pub struct Relations {
    relations: HashMap<u32, RelState>,
    type_names: HashMap<u32, String>,
    /// Domain oid -> base type oid (0: not a domain).
    domain_base: HashMap<u32, u32>,
}

impl Relations {
    /// The state of `id`, if a Relation message described it.
    pub fn get(&self, id: u32) -> Option<&RelState> {
        self.relations.get(&id)
    }

    /// The slug of `id` when it is a mapped table.
    pub fn slug(&self, id: u32) -> Option<&str> {
        match self.relations.get(&id) {
            Some(RelState::Mapped(m)) => Some(&m.slug),
            _ => None,
        }
    }

    /// A Type message: remember the name of a non-builtin type.
    pub fn on_type(&mut self, t: TypeInfo) {
        self.type_names.insert(t.id, t.name);
    }

    /// A Relation message: (re)build the map of this relation.
    pub async fn on_relation(
        &mut self,
        db: &Client,
        cfg: &Config,
        rel: Relation,
    ) -> Result<(), tokio_postgres::Error> {
        let id = rel.id;
        let Some(object) = object_for(cfg, &rel) else {
            // Changes of tables we do not map still count for change
            // indexes, but we keep no state for them.
            self.relations.insert(id, RelState::Unmapped);
            return Ok(());
        };
        let key_columns = primary_key_columns(db, &rel).await?;
        let mut rel = rel;
        self.resolve_domains(db, &mut rel).await?;
        let type_names = &self.type_names;
        let map = TableMap::new(
            rel,
            object.slug.clone(),
            &object.exclude_columns,
            key_columns,
            &|oid| type_names.get(&oid).cloned(),
        );
        self.relations.insert(id, RelState::Mapped(Box::new(map)));
        Ok(())
    }

    /// pgoutput sends a domain column with the domain's oid: map it as its
    /// base type (an integer domain stays a number). Only user-defined oids
    /// (>= 16384) can be domains; the answer is cached for the session.
    async fn resolve_domains(
        &mut self,
        db: &Client,
        rel: &mut Relation,
    ) -> Result<(), tokio_postgres::Error> {
        const FIRST_NORMAL_OID: u32 = 16384;
        for col in rel.columns.iter_mut() {
            let mut oid = col.type_oid;
            // Domains over domains: follow a few levels.
            for _ in 0..8 {
                if oid < FIRST_NORMAL_OID {
                    break;
                }
                let base = match self.domain_base.get(&oid) {
                    Some(b) => *b,
                    None => {
                        let base = domain_base(db, oid).await?;
                        self.domain_base.insert(oid, base);
                        base
                    }
                };
                if base == 0 {
                    break;
                }
                oid = base;
            }
            col.type_oid = oid;
        }
        Ok(())
    }
}

/// The base type of a domain, 0 when `oid` is not a domain.
async fn domain_base(db: &Client, oid: u32) -> Result<u32, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT CASE WHEN typtype = 'd' THEN typbasetype ELSE 0::oid END FROM pg_type WHERE oid = $1",
            &[&oid],
        )
        .await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

fn object_for<'c>(cfg: &'c Config, rel: &Relation) -> Option<&'c ObjectConfig> {
    cfg.objects
        .iter()
        .find(|o| o.schema == rel.namespace && o.table == rel.name)
}

/// Primary-key columns as indexes into the relation's columns. With
/// REPLICA IDENTITY FULL pgoutput flags every column as key, so the
/// catalog is asked instead; the flags are the fallback.
async fn primary_key_columns(
    db: &Client,
    rel: &Relation,
) -> Result<Vec<usize>, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisprimary",
            &[&rel.id],
        )
        .await?;
    let names: Vec<String> = row.get(0);
    let by_name: Vec<usize> = names
        .iter()
        .filter_map(|n| rel.columns.iter().position(|c| &c.name == n))
        .collect();
    if !by_name.is_empty() && by_name.len() == names.len() {
        return Ok(by_name);
    }
    tracing::warn!(
        table = %format!("{}.{}", rel.namespace, rel.name),
        "no primary key found; using the replica identity columns as the record key"
    );
    Ok(rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.flags & 1 == 1)
        .map(|(i, _)| i)
        .collect())
}
