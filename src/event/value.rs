//! Postgres text output -> JSON values (SPEC §4 value table).

/// How one column's text is turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    String,
}
