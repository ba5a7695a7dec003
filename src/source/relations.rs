//! The relation cache of one replication session: for every relation id the
//! stream has described, whether it is mapped and, if so, how its changes
//! become events. Rebuilt from each Relation message (first use, or after
//! DDL), so schema changes apply to the changes that follow them.
//!
//! Tables are mapped by identity (relation oid, resolved at session start by
//! [`super::objects`]), so a renamed table keeps its slug; excluded and key
//! columns are found by attribute number through [`super::align`], so a
//! renamed excluded column stays excluded.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

use super::align::{self, Alignment};
use super::objects::{self, Notice, Resolved, TableInfo};
use crate::config::Config;
use crate::event::TableMap;
use crate::pgoutput::{Relation, TypeInfo};

/// What the session knows of one relation.
pub enum RelState {
    Mapped(Box<TableMap>),
    Unmapped,
}

/// Relation id -> state, plus the type names and domain bases needed to map
/// column values.
pub struct Relations {
    objects: Vec<Resolved>,
    relations: HashMap<u32, RelState>,
    type_names: HashMap<u32, String>,
    /// Domain oid -> base type oid (0: not a domain).
    domain_base: HashMap<u32, u32>,
    /// Relations already reported as renamed (reported once per session).
    renamed_reported: BTreeSet<u32>,
    /// Relations already reported as without a primary key (once per session).
    keyless_reported: BTreeSet<u32>,
    /// Drift seen since [`Relations::take_notices`] was last called.
    notices: Vec<Notice>,
}

impl Relations {
    /// A cache for the resolved `objects`.
    pub fn new(objects: Vec<Resolved>) -> Relations {
        Relations {
            objects,
            relations: HashMap::new(),
            type_names: HashMap::new(),
            domain_base: HashMap::new(),
            renamed_reported: BTreeSet::new(),
            keyless_reported: BTreeSet::new(),
            notices: Vec::new(),
        }
    }

    /// Drift seen in the stream since the last call (already logged), for
    /// the operator's notices.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

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
        let Some(index) = self.object_index(db, cfg, &rel).await? else {
            // Changes of tables we do not map still count for change
            // indexes, but we keep no state for them.
            self.relations.insert(id, RelState::Unmapped);
            return Ok(());
        };
        let table = objects::table_by_oid(db, id).await?;
        let object = &mut self.objects[index];
        let current = format!("{}.{}", rel.namespace, rel.name);
        if current != object.configured && self.renamed_reported.insert(id) {
            let notice = Notice::TableRenamed {
                slug: object.slug.clone(),
                configured: object.configured.clone(),
                now: current,
            };
            tracing::warn!(object = %object.slug, "{notice}");
            self.notices.push(notice);
        }
        if let Some(t) = table.as_ref().filter(|t| t.primary_key.is_empty())
            && self.keyless_reported.insert(id)
        {
            let notice = Notice::KeyDropped {
                slug: object.slug.clone(),
                table: t.qualified(),
            };
            tracing::warn!(object = %object.slug, "{notice}");
            self.notices.push(notice);
        }
        for notice in renamed_exclusions(object, table.as_ref()) {
            tracing::warn!(object = %object.slug, "{notice}");
            self.notices.push(notice);
        }
        let (excluded, key) = columns(object, &rel, table.as_ref());
        let when_changed = watched(object, &rel, table.as_ref());
        let mut rel = rel;
        self.resolve_domains(db, &mut rel).await?;
        let type_names = &self.type_names;
        let slug = self.objects[index].slug.clone();
        let map = TableMap::new(rel, slug, excluded, key, &|oid| {
            type_names.get(&oid).cloned()
        })
        .with_when_changed(when_changed);
        self.relations.insert(id, RelState::Mapped(Box::new(map)));
        Ok(())
    }

    /// The object a Relation message is: by relation oid, or, for a table
    /// created anew under the configured name, by name.
    async fn object_index(
        &mut self,
        db: &Client,
        cfg: &Config,
        rel: &Relation,
    ) -> Result<Option<usize>, tokio_postgres::Error> {
        if let Some(i) = self.objects.iter().position(|o| o.relid == rel.id) {
            return Ok(Some(i));
        }
        let Some(object) = cfg
            .objects
            .iter()
            .find(|o| o.schema == rel.namespace && o.table == rel.name)
        else {
            return Ok(None);
        };
        let Some(i) = self.objects.iter().position(|o| o.slug == object.slug) else {
            return Ok(None);
        };
        let table = objects::table_by_oid(db, rel.id).await?;
        match objects::resolve(object, table.as_ref(), None, None) {
            Ok((resolved, _)) => {
                tracing::warn!(object = %object.slug, relid = rel.id,
                    "the configured table is a new table (dropped and created again?); mapping it");
                self.objects[i] = resolved;
                Ok(Some(i))
            }
            Err(e) => {
                tracing::error!(object = %object.slug, error = %e,
                    "a table with the configured name appeared but cannot be mapped; its changes are not delivered");
                Ok(None)
            }
        }
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

/// Which columns of `rel` are excluded, and where its record key is. A
/// column is excluded when its name is one an excluded column has had, or
/// when it may be an excluded column by position (fail closed). The key is
/// today's primary key when there is one, else the remembered key columns.
fn columns(
    object: &mut Resolved,
    rel: &Relation,
    table: Option<&TableInfo>,
) -> (Vec<bool>, Result<Vec<usize>, String>) {
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    let alignment = table.and_then(|t| align::align(&names, &t.attrs));
    if let Some(t) = table.filter(|t| !t.primary_key.is_empty()) {
        object.key_attnums = t.primary_key.clone();
    }
    let excluded: Vec<bool> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            object.excluded_names.contains(*name)
                || alignment
                    .as_ref()
                    .is_some_and(|a| a.may_be_any(i, &object.excluded_attnums))
        })
        .collect();
    let key = key_positions(object, &names, alignment.as_ref(), table).and_then(|key| {
        match key.iter().find(|&&i| excluded[i]) {
            Some(&i) => Err(format!(
                "key column {} may be an excluded column (ambiguous after DDL)",
                names[i]
            )),
            None => Ok(key),
        }
    });
    (excluded, key)
}

/// Today's names of the excluded columns become names they are known by; a
/// name not known before is a rename to report.
fn renamed_exclusions(object: &mut Resolved, table: Option<&TableInfo>) -> Vec<Notice> {
    let mut notices = Vec::new();
    let Some(t) = table else {
        return notices;
    };
    for (attnum, configured) in &object.excluded {
        let Some(attr) = t.attrs.iter().find(|a| a.attnum == *attnum && !a.dropped) else {
            continue;
        };
        if object.excluded_names.insert(attr.name.clone()) {
            notices.push(Notice::ColumnRenamed {
                slug: object.slug.clone(),
                configured: configured.clone(),
                now: attr.name.clone(),
            });
        }
    }
    notices
}

/// Which columns of `rel` are `when_changed` columns, by attribute number
/// (a renamed one stays one); `None`: every update is sent. After DDL that
/// leaves the alignment ambiguous, a column that may be one counts as one,
/// and without the catalog every update is sent: an extra update is safer
/// than a lost one.
fn watched(object: &Resolved, rel: &Relation, table: Option<&TableInfo>) -> Option<Vec<bool>> {
    if object.watched_attnums.is_empty() {
        return None;
    }
    let table = table?;
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    match align::align(&names, &table.attrs) {
        Some(a) => Some(
            (0..names.len())
                .map(|i| a.may_be_any(i, &object.watched_attnums))
                .collect(),
        ),
        None => {
            let today: Vec<&str> = table
                .attrs
                .iter()
                .filter(|a| !a.dropped && object.watched_attnums.contains(&a.attnum))
                .map(|a| a.name.as_str())
                .collect();
            Some(names.iter().map(|n| today.contains(n)).collect())
        }
    }
}

/// Positions of the key attributes in the message: by alignment, else by
/// today's name.
fn key_positions(
    object: &Resolved,
    names: &[&str],
    alignment: Option<&Alignment>,
    table: Option<&TableInfo>,
) -> Result<Vec<usize>, String> {
    object
        .key_attnums
        .iter()
        .map(|&attnum| {
            alignment
                .and_then(|a| a.position_of(attnum))
                .or_else(|| {
                    let name = table?
                        .attrs
                        .iter()
                        .find(|a| a.attnum == attnum && !a.dropped)?
                        .name
                        .as_str();
                    names.iter().position(|n| *n == name)
                })
                .ok_or_else(|| {
                    format!(
                        "a record key column (attribute {attnum}) of object {slug} is not in the table's changes (dropped?): capture stops before this change (nothing is lost). Either give the table a primary key on columns it still has (its changes are then keyed by it), or remove object {slug} from the config and restart (its changes are skipped while it is not mapped)",
                        slug = object.slug
                    )
                })
        })
        .collect()
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
