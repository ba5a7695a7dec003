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

impl Message {
    /// The row change this message carries, with its relation id; any other
    /// message is given back.
    pub fn into_row_change(self) -> Result<(u32, RowChange), Message> {
        match self {
            Message::Insert { relation_id, new } => Ok((relation_id, RowChange::Insert { new })),
            Message::Update {
                relation_id,
                old,
                new,
            } => Ok((relation_id, RowChange::Update { old, new })),
            Message::Delete { relation_id, old } => Ok((relation_id, RowChange::Delete { old })),
            other => Err(other),
        }
    }
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
///
/// Promises: never panics, whatever the input; a message cut short anywhere
/// is `Truncated`, bytes left over after a complete message are `Unexpected`
/// (protocol version 1 has no optional trailing fields, so leftovers mean a
/// framing bug). Tags this decoder does not handle (Begin, Commit, logical
/// Message, the streaming messages of protocol 2+) come back as
/// `Message::Other(tag)` for the caller to log and skip.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader {
        data,
        pos: 1,
        tag: tag as char,
    };
    let message = match tag {
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type(TypeInfo {
            id: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        }),
        b'I' => {
            let relation_id = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => r.update()?,
        b'D' => Message::Delete {
            relation_id: r.u32()?,
            old: r.old_tuple()?,
        },
        b'T' => r.truncate()?,
        b'O' => Message::Origin {
            commit_lsn: r.u64()?,
            name: r.string()?,
        },
        other => return Ok(Message::Other(other)),
    };
    r.finish()?;
    Ok(message)
}

/// A bounds-checked cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    tag: char,
}

impl Reader<'_> {
    fn update(&mut self) -> Result<Message, DecodeError> {
        let relation_id = self.u32()?;
        let old = match self.peek()? {
            b'K' | b'O' => Some(self.old_tuple()?),
            _ => None,
        };
        self.expect(b'N')?;
        Ok(Message::Update {
            relation_id,
            old,
            new: self.tuple()?,
        })
    }

    fn truncate(&mut self) -> Result<Message, DecodeError> {
        let count = self.u32()?;
        let options = self.u8()?;
        // Each id takes 4 bytes: a count the input cannot hold is truncation,
        // and checking first keeps a bogus count from reserving huge memory.
        if (count as usize).saturating_mul(4) > self.remaining() {
            return Err(self.truncated_at(self.data.len()));
        }
        let relation_ids = (0..count).map(|_| self.u32()).collect::<Result<_, _>>()?;
        Ok(Message::Truncate {
            relation_ids,
            options,
        })
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncated_at(&self, at: usize) -> DecodeError {
        DecodeError::Truncated { tag: self.tag, at }
    }

    fn unexpected(&self, at: usize) -> DecodeError {
        DecodeError::Unexpected {
            tag: self.tag,
            byte: self.data.get(at).copied().unwrap_or(0),
            at,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated_at(self.data.len()));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..self.pos])
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated_at(self.pos))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take_array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    fn expect(&mut self, want: u8) -> Result<(), DecodeError> {
        let at = self.pos;
        if self.u8()? != want {
            return Err(self.unexpected(at));
        }
        Ok(())
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.truncated_at(self.data.len()));
        };
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::Utf8 { tag: self.tag })?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32()?;
        let namespace = self.string()?;
        let name = self.string()?;
        let replica_identity = self.u8()?;
        let count = self.u16()?;
        // No `with_capacity(count)`: the count is untrusted until the columns are read.
        let mut columns = Vec::new();
        for _ in 0..count {
            columns.push(Column {
                flags: self.u8()?,
                name: self.string()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn old_tuple(&mut self) -> Result<(OldKind, Tuple), DecodeError> {
        let at = self.pos;
        let kind = match self.u8()? {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            _ => return Err(self.unexpected(at)),
        };
        Ok((kind, self.tuple()?))
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for
    /// `t` and `b`, an Int32 length and that many bytes (sliced, not copied).
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.u16()?;
        let mut tuple = Vec::new();
        for _ in 0..count {
            let at = self.pos;
            let datum = match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len_at = self.pos;
                    let len = usize::try_from(self.i32()?).map_err(|_| self.unexpected(len_at))?;
                    if len > self.remaining() {
                        return Err(self.truncated_at(self.data.len()));
                    }
                    let value = self.data.slice(self.pos..self.pos + len);
                    self.pos += len;
                    if kind == b't' {
                        Datum::Text(value)
                    } else {
                        Datum::Binary(value)
                    }
                }
                _ => return Err(self.unexpected(at)),
            };
            tuple.push(datum);
        }
        Ok(tuple)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.data.len() {
            Ok(())
        } else {
            Err(self.unexpected(self.pos))
        }
    }
}

#[cfg(test)]
mod tests;
