//! Pure mapping from a decoded row change to a walhook event: the name
//! (`slug.verb`), the record key, the JSON body (`before`, `after`, `diff`)
//! and the deterministic event id. Nothing here touches the network.
//!
//! INTERFACE (fixed; the capture loop relies on it):
//! - `TableMap::new(relation, object, key_columns, types)`: what is needed to map
//!   one table's changes, rebuilt on every Relation message.
//! - `map_change(&TableMap, RowChange, &ChangeContext) -> Result<Option<Event>, EventError>`
//!   (`None`: an update that changed no included column).

pub mod id;
pub mod value;

use crate::source::pgoutput::{OldKind, Relation, Tuple};

/// Everything needed to map the changes of one mapped table.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub relation: Relation,
    pub slug: String,
    /// Per column of `relation`: excluded from bodies.
    pub excluded: Vec<bool>,
    /// Indices (into `relation.columns`) of the primary key columns, in key order.
    /// Found in the catalog by the capture loop (with REPLICA IDENTITY FULL, pgoutput
    /// flags every column as key, so the flags cannot tell).
    pub key_columns: Vec<usize>,
    /// Per column: how its text is turned into JSON (from type oid and Type messages).
    pub kinds: Vec<value::ValueKind>,
}

/// A row change as it came from pgoutput.
#[derive(Debug, Clone)]
pub enum RowChange {
    Insert {
        new: Tuple,
    },
    Update {
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        old: (OldKind, Tuple),
    },
}

/// Where the change sits in the WAL: makes ids deterministic across replays.
#[derive(Debug, Clone)]
pub struct ChangeContext<'a> {
    /// `source.name`.
    pub source_name: &'a str,
    /// The transaction's commit LSN (Begin.final_lsn == Commit.lsn).
    pub commit_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_unix_micros: i64,
    /// 0-based index of this row change among the transaction's row changes.
    pub change_index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

/// A mapped event, ready for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `{source}:{slug}:{commit_ms}:{record_key}:{name}:{suffix}`
    pub id: String,
    /// `slug.verb`
    pub name: String,
    pub slug: String,
    pub verb: Verb,
    /// Primary key as Postgres prints it, composite joined with `,`, `%` `:` `,` escaped.
    pub record_key: String,
    /// The exact body bytes: `{"before":{..},"after":{..},"diff":{..}}`.
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("table {table}: change has {got} columns, relation has {expected}")]
    ColumnCount {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("table {table}: primary key column {column} is NULL or missing")]
    MissingKey { table: String, column: String },
    #[error("table {table}: binary tuple data is not supported")]
    Binary { table: String },
}
