//! Pure mapping from a decoded row change to a walhook event: the name
//! (`slug.verb`), the record key, the JSON body (`before`, `after`, `diff`)
//! and the deterministic event id. Nothing here touches the network or the
//! configuration: the capture loop passes in what a table needs.
//!
//! - [`map`]: [`TableMap`] (one table's shape, rebuilt on every Relation
//!   message) and [`map_change`].
//! - [`value`]: Postgres text output to JSON values (SPEC §4).
//! - [`id`]: deterministic event ids (SPEC §5).
//! - [`filter`]: endpoint event filters (`*`, `slug.*`, `*.verb`, names).
//! - [`expr`]: endpoint content filters (CEL expressions over an event).
//! - [`system`]: the events walhook makes itself.

pub mod custom;
pub mod expr;
pub mod filter;
pub mod id;
pub mod map;
pub mod stream;
pub mod system;
pub mod value;

pub use map::{TableMap, map_change};

use crate::pg::Lsn;

/// Where the change sits in the WAL: makes ids deterministic across replays.
#[derive(Debug, Clone)]
pub struct ChangeContext<'a> {
    /// `source.name`.
    pub source_name: &'a str,
    /// The transaction's commit LSN (Begin.final_lsn == Commit.lsn).
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_unix_micros: i64,
    /// 0-based index of this row change among the transaction's row changes.
    pub change_index: u32,
}

/// The kind of row change: INSERT, UPDATE, DELETE. `as_str` is the second
/// half of the event name.
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

/// A change that cannot be mapped: its shape does not match the table's
/// latest Relation, or it lacks what the record key needs.
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
    #[error("table {table}: the record key cannot be formed: {reason}")]
    NoKey { table: String, reason: String },
    #[error("table {table}: binary tuple data is not supported")]
    Binary { table: String },
}
