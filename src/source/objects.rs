//! Which tables are mapped, by identity rather than by name.
//!
//! The config names tables and excluded columns as they were when it was
//! written. At start-up each `[[objects]]` entry is resolved against the
//! catalog and what the ledger remembers ([`ObjectRow`]): the relation oid,
//! the key columns and the excluded columns as attribute numbers. From then
//! on a renamed table keeps its slug and a renamed excluded column stays
//! excluded; what changed is reported as a [`Notice`].

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::align::Attribute;
use crate::config::{Config, ObjectConfig};
use crate::ledger::notices::{Level, NewNotice};
use crate::ledger::objects::ObjectRow;
use crate::ledger::{Ledger, LedgerError};
use crate::pg::DbError;

/// A table as the catalog describes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub relid: u32,
    pub schema: String,
    pub name: String,
    /// Every attribute (dropped ones too), in attnum order, generated
    /// columns left out (pgoutput does not send them).
    pub attrs: Vec<Attribute>,
    /// Primary key attribute numbers in key order; empty without one.
    pub primary_key: Vec<i16>,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn live(&self, attnum: i16) -> Option<&Attribute> {
        self.attrs.iter().find(|a| a.attnum == attnum && !a.dropped)
    }

    fn live_named(&self, name: &str) -> Option<&Attribute> {
        self.attrs.iter().find(|a| a.name == name && !a.dropped)
    }
}

/// A mapped table resolved to its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub slug: String,
    pub relid: u32,
    /// `schema.table` as the config names it.
    pub configured: String,
    pub key_attnums: Vec<i16>,
    pub excluded_attnums: Vec<i16>,
    /// Every name an excluded column is known to have had: a column of a
    /// Relation message with one of these names is excluded too.
    pub excluded_names: BTreeSet<String>,
    /// (attribute number, the config's name for it) of each excluded column.
    pub excluded: Vec<(i16, String)>,
    /// `when_changed` columns; empty: every update is sent.
    pub watched_attnums: Vec<i16>,
}

impl Resolved {
    /// What the ledger should remember of it: each excluded column's
    /// attribute number under the name the config gives it, so that the
    /// config's name finds the column however often it is renamed.
    pub fn row(&self, table: &TableInfo) -> ObjectRow {
        ObjectRow {
            slug: self.slug.clone(),
            relid: self.relid,
            table_name: table.qualified(),
            key_attnums: self.key_attnums.clone(),
            // Dropped columns too: attribute numbers are never reused.
            excluded: self.excluded.clone(),
        }
    }
}

/// A change walhook follows and tells the operator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    TableRenamed {
        slug: String,
        configured: String,
        now: String,
    },
    ColumnRenamed {
        slug: String,
        configured: String,
        now: String,
    },
    /// The table has no primary key any more; its former key columns stay
    /// the record key.
    KeyDropped { slug: String, table: String },
    /// An excluded column was dropped: nothing of it can be sent any more.
    ColumnDropped { slug: String, configured: String },
}

impl Notice {
    /// What kind of drift this is and what it is about: one notice per
    /// pair in the ledger (see [`crate::ledger::notices`]).
    pub fn key(&self) -> (&'static str, String) {
        match self {
            Notice::TableRenamed { slug, .. } => ("table_renamed", slug.clone()),
            Notice::ColumnRenamed {
                slug, configured, ..
            } => ("column_renamed", format!("{slug}.{configured}")),
            Notice::KeyDropped { slug, .. } => ("key_dropped", slug.clone()),
            Notice::ColumnDropped { slug, configured } => {
                ("column_dropped", format!("{slug}.{configured}"))
            }
        }
    }

    /// The notice as the ledger keeps it (a warning: walhook goes on).
    pub fn to_ledger(&self) -> NewNotice {
        let (kind, subject) = self.key();
        NewNotice {
            kind: kind.into(),
            subject,
            level: Level::Warning,
            message: self.to_string(),
            at: None,
        }
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::TableRenamed {
                slug,
                configured,
                now,
            } => write!(
                f,
                "mapped table {configured} (object {slug}) was renamed to {now}; walhook follows it. Set `table = \"{now}\"` in its [[objects]] entry"
            ),
            Notice::ColumnRenamed {
                slug,
                configured,
                now,
            } => write!(
                f,
                "excluded column {configured} of object {slug} was renamed to {now}; it stays excluded. Write \"{now}\" in its exclude_columns"
            ),
            Notice::ColumnDropped { slug, configured } => write!(
                f,
                "excluded column {configured} of object {slug} was dropped; nothing of it can be sent any more. Remove \"{configured}\" from its exclude_columns"
            ),
            Notice::KeyDropped { slug, table } => write!(
                f,
                "{table} (object {slug}) has no primary key any more; walhook keeps using its former key columns as the record key. Restore it: ALTER TABLE {table} ADD PRIMARY KEY (...)"
            ),
        }
    }
}

/// Why an `[[objects]]` entry cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error(
        "mapped table {0} does not exist. Create it, or fix `table` in the [[objects]] entry of the config."
    )]
    NoTable(String),
    #[error(
        "mapped table {0} has no primary key; walhook needs one for record keys, event ids and per-record order. Add one: ALTER TABLE {0} ADD PRIMARY KEY (...);"
    )]
    NoPrimaryKey(String),
    #[error(
        "a record key column of {table} (object {slug}) was dropped: walhook cannot key that table's changes, so capture stops before the first of them (nothing is lost). Either give {table} a primary key on columns it still has (ALTER TABLE {table} ADD PRIMARY KEY (...)): its changes are then keyed by it; or remove object {slug} from the config and restart: its changes are skipped while it is not mapped"
    )]
    KeyColumnDropped { slug: String, table: String },
    #[error(
        "exclude_columns of object {slug} names `{column}`, which is not a column of {table}. Fix the name (a typo would send the column you meant to hide)."
    )]
    UnknownColumn {
        slug: String,
        table: String,
        column: String,
    },
    #[error(
        "exclude_columns of object {slug} names `{column}`, a primary key column of {table}: the record key (in every event id) is the primary key, so it cannot be excluded"
    )]
    ExcludesKey {
        slug: String,
        table: String,
        column: String,
    },
    #[error(
        "when_changed of object {slug} names `{column}`, which is not a column of {table}. Fix the name (after a rename, write the column's new name)."
    )]
    UnknownWatched {
        slug: String,
        table: String,
        column: String,
    },
    #[error(
        "when_changed of object {slug} names `{column}`, which is excluded (exclude_columns, perhaps under an earlier name): an excluded column cannot decide which updates are sent"
    )]
    WatchesExcluded { slug: String, column: String },
}

/// Resolves one object: `by_name` is the table the config names (if it
/// exists), `by_oid` the table the ledger remembers (if it still exists),
/// `remembered` the ledger's row. Pure: the catalog was read by the caller.
pub fn resolve(
    object: &ObjectConfig,
    by_name: Option<&TableInfo>,
    by_oid: Option<&TableInfo>,
    remembered: Option<&ObjectRow>,
) -> Result<(Resolved, Vec<Notice>), ObjectError> {
    let configured = format!("{}.{}", object.schema, object.table);
    let mut notices = Vec::new();
    let table = match (by_name, by_oid) {
        (Some(t), _) => t,
        (None, Some(t)) => {
            notices.push(Notice::TableRenamed {
                slug: object.slug.clone(),
                configured: configured.clone(),
                now: t.qualified(),
            });
            t
        }
        (None, None) => return Err(ObjectError::NoTable(configured)),
    };
    let same_table = remembered.filter(|r| r.relid == table.relid);
    let excluded = excluded(object, table, same_table, &mut notices)?;
    let mut excluded_attnums: Vec<i16> = excluded.iter().map(|(a, _)| *a).collect();
    excluded_attnums.dedup();
    let mut excluded_names: BTreeSet<String> = object.exclude_columns.iter().cloned().collect();
    excluded_names.extend(
        excluded_attnums
            .iter()
            .filter_map(|a| table.live(*a).map(|attr| attr.name.clone())),
    );
    let key_attnums = if !table.primary_key.is_empty() {
        table.primary_key.clone()
    } else {
        match same_table {
            Some(r)
                if !r.key_attnums.is_empty()
                    && r.key_attnums.iter().all(|a| table.live(*a).is_some()) =>
            {
                notices.push(Notice::KeyDropped {
                    slug: object.slug.clone(),
                    table: table.qualified(),
                });
                r.key_attnums.clone()
            }
            Some(r) if !r.key_attnums.is_empty() => {
                return Err(ObjectError::KeyColumnDropped {
                    slug: object.slug.clone(),
                    table: table.qualified(),
                });
            }
            _ => return Err(ObjectError::NoPrimaryKey(table.qualified())),
        }
    };
    if let Some(a) = key_attnums.iter().find(|a| excluded_attnums.contains(a)) {
        return Err(ObjectError::ExcludesKey {
            slug: object.slug.clone(),
            table: table.qualified(),
            column: table.live(*a).map(|a| a.name.clone()).unwrap_or_default(),
        });
    }
    let watched_attnums = watched(object, table, &excluded_attnums)?;
    Ok((
        Resolved {
            slug: object.slug.clone(),
            relid: table.relid,
            configured,
            key_attnums,
            excluded_attnums,
            excluded_names,
            excluded,
            watched_attnums,
        },
        notices,
    ))
}

/// The `when_changed` columns of `object` as attribute numbers: each names
/// a column of the table today, and none is excluded.
fn watched(
    object: &ObjectConfig,
    table: &TableInfo,
    excluded: &[i16],
) -> Result<Vec<i16>, ObjectError> {
    object
        .when_changed
        .iter()
        .map(|column| {
            let attr = table
                .live_named(column)
                .ok_or_else(|| ObjectError::UnknownWatched {
                    slug: object.slug.clone(),
                    table: table.qualified(),
                    column: column.clone(),
                })?;
            if excluded.contains(&attr.attnum) {
                return Err(ObjectError::WatchesExcluded {
                    slug: object.slug.clone(),
                    column: column.clone(),
                });
            }
            Ok(attr.attnum)
        })
        .collect()
}

/// The excluded columns of `object`: (attribute number, the config's name)
/// for each. A configured name stands for the live column of that name and
/// for the column the ledger remembers under it (renamed since, perhaps
/// more than once); when they differ, both are excluded (fail closed).
fn excluded(
    object: &ObjectConfig,
    table: &TableInfo,
    remembered: Option<&ObjectRow>,
    notices: &mut Vec<Notice>,
) -> Result<Vec<(i16, String)>, ObjectError> {
    let mut out: Vec<(i16, String)> = Vec::new();
    for column in &object.exclude_columns {
        let by_name = table.live_named(column);
        // Dropped ones too: a Relation message from before the drop may
        // still carry the column, and attribute numbers are never reused.
        let by_identity = remembered
            .into_iter()
            .flat_map(|r| r.excluded.iter())
            .filter(|(_, name)| name == column)
            .filter_map(|(a, _)| table.attrs.iter().find(|attr| attr.attnum == *a));
        let mut found = false;
        let mut live = false;
        for attr in by_name.into_iter().chain(by_identity) {
            found = true;
            live |= !attr.dropped;
            if out.iter().any(|(a, c)| *a == attr.attnum && c == column) {
                continue;
            }
            if attr.name != *column && !attr.dropped {
                notices.push(Notice::ColumnRenamed {
                    slug: object.slug.clone(),
                    configured: column.clone(),
                    now: attr.name.clone(),
                });
            }
            out.push((attr.attnum, column.clone()));
        }
        if !found {
            return Err(ObjectError::UnknownColumn {
                slug: object.slug.clone(),
                table: table.qualified(),
                column: column.clone(),
            });
        }
        if !live {
            notices.push(Notice::ColumnDropped {
                slug: object.slug.clone(),
                configured: column.clone(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Every `[[objects]]` entry resolved, with what changed since the config
/// was written.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub objects: Vec<Resolved>,
    pub notices: Vec<Notice>,
    /// What the ledger should remember of each object.
    pub rows: Vec<ObjectRow>,
}

impl Mapping {
    /// The mapped tables' relation oids.
    pub fn relids(&self) -> Vec<u32> {
        self.objects.iter().map(|o| o.relid).collect()
    }

    /// Make the ledger remember the objects' identities.
    pub async fn save(&self, ledger: &Ledger, ledger_db: &Client) -> Result<(), LedgerError> {
        for row in &self.rows {
            ledger.save_object(ledger_db, row).await?;
        }
        Ok(())
    }
}

/// Why the mapped tables cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("while reading the catalog: {0}")]
    Catalog(#[from] DbError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<tokio_postgres::Error> for ResolveError {
    fn from(e: tokio_postgres::Error) -> ResolveError {
        ResolveError::Catalog(DbError(e))
    }
}

/// Resolves every object of `cfg` against the source's catalog (`source`)
/// and what the ledger remembers (`ledger_db`; nothing before `setup`).
pub async fn resolve_all(
    source: &Client,
    ledger_db: &Client,
    ledger: &Ledger,
    cfg: &Config,
) -> Result<Mapping, ResolveError> {
    let remembered = ledger.objects(ledger_db).await?;
    let mut mapping = Mapping::default();
    for object in &cfg.objects {
        let by_name = table_by_name(source, &object.schema, &object.table).await?;
        let row = remembered.iter().find(|r| r.slug == object.slug);
        let by_oid = match (&by_name, row) {
            (None, Some(r)) => table_by_oid(source, r.relid).await?,
            _ => None,
        };
        let (resolved, notices) = resolve(object, by_name.as_ref(), by_oid.as_ref(), row)?;
        if let Some(table) = by_name.as_ref().or(by_oid.as_ref()) {
            mapping.rows.push(resolved.row(table));
        }
        mapping.objects.push(resolved);
        mapping.notices.extend(notices);
    }
    Ok(mapping)
}

/// The catalog's description of the table named `schema.table`, if any.
pub async fn table_by_name(
    db: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await?;
    match row {
        Some(r) => table_by_oid(db, r.get(0)).await,
        None => Ok(None),
    }
}

/// The catalog's description of relation `relid`, if it still exists.
pub async fn table_by_oid(
    db: &Client,
    relid: u32,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let Some(row) = db
        .query_opt(
            "SELECT n.nspname::text, c.relname::text,
                    coalesce((SELECT i.indkey::int2[] FROM pg_index i
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
            &[&relid],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(TableInfo {
        relid,
        schema: row.get(0),
        name: row.get(1),
        primary_key: row.get(2),
        attrs: attributes(db, relid).await?,
    }))
}

/// Every attribute of `relid` that pgoutput may send, dropped ones included.
pub async fn attributes(db: &Client, relid: u32) -> Result<Vec<Attribute>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT attnum, attname::text, attisdropped FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND attgenerated = ''
             ORDER BY attnum",
            &[&relid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Attribute {
            attnum: r.get(0),
            name: r.get(1),
            dropped: r.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests;
