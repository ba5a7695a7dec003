//! A decoder for the pgoutput logical replication protocol, version 1.
//!
//! pgwire-replication hands us Begin and Commit already decoded; every other
//! message (Relation, Type, Insert, Update, Delete, Truncate, Origin) arrives as
//! the raw bytes of an `XLogData` payload, which `decode` turns into a `Message`.
//! Reference: PostgreSQL docs, "Logical Replication Message Formats".

use bytes::Bytes;

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: part of the replica identity (with REPLICA IDENTITY FULL: every column).
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A Relation message: the shape of a table as of the changes that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// A Type message (sent for non-builtin column types before first use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// One column value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// `n`
    Null,
    /// `u`: an unchanged TOASTed value that the server did not send.
    UnchangedToast,
    /// `t`: the value in Postgres' text output format (UTF-8).
    Text(Bytes),
    /// `b`: binary format (only if requested; walhook never requests it).
    Binary(Bytes),
}

/// A tuple: one `Datum` per column of the relation, in order.
pub type Tuple = Vec<Datum>;

/// Which old tuple an Update or Delete carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity key columns are set (others Null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// A decoded pgoutput message (those pgwire-replication leaves to us).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Relation(Relation),
    Type(TypeInfo),
    Insert {
        relation_id: u32,
        new: Tuple,
    },
    Update {
        relation_id: u32,
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        relation_id: u32,
        old: (OldKind, Tuple),
    },
    Truncate {
        relation_ids: Vec<u32>,
        /// bit 1 CASCADE, bit 2 RESTART IDENTITY
        options: u8,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    /// Begin/Commit/Message if they ever reach us raw; kept so nothing panics.
    Other(u8),
}

/// A malformed or truncated message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("pgoutput message '{tag}' truncated at byte {at}")]
    Truncated { tag: char, at: usize },
    #[error("pgoutput message '{tag}': unexpected byte {byte:#04x} at {at}")]
    Unexpected { tag: char, byte: u8, at: usize },
    #[error("pgoutput message '{tag}': string is not valid UTF-8")]
    Utf8 { tag: char },
}

/// Decode one pgoutput message. `data` is a cheap-to-slice `Bytes` so that
/// column values share its buffer instead of being copied.
pub fn decode(_data: &Bytes) -> Result<Message, DecodeError> {
    todo!("event helper")
}
