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
        b'U' => {
            let relation_id = r.u32()?;
            let old = match r.peek()? {
                b'K' | b'O' => Some(r.old_tuple()?),
                _ => None,
            };
            r.expect(b'N')?;
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => Message::Delete {
            relation_id: r.u32()?,
            old: r.old_tuple()?,
        },
        b'T' => {
            let count = r.u32()?;
            let options = r.u8()?;
            // Each id takes 4 bytes: a count the input cannot hold is truncation,
            // and checking first keeps a bogus count from reserving huge memory.
            if (count as usize).saturating_mul(4) > r.remaining() {
                return Err(r.truncated_at(data.len()));
            }
            let relation_ids = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate {
                relation_ids,
                options,
            }
        }
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
mod tests {
    use super::*;

    /// Builds messages the way the server writes them.
    #[derive(Default)]
    struct B(Vec<u8>);

    impl B {
        fn new(tag: u8) -> Self {
            B(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &[u8]) -> Self {
            let mut b = self.u8(b't').i32(v.len() as i32);
            b.0.extend_from_slice(v);
            b
        }
        fn bin(self, v: &[u8]) -> Self {
            let mut b = self.u8(b'b').i32(v.len() as i32);
            b.0.extend_from_slice(v);
            b
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(v: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn relation_msg() -> Bytes {
        B::new(b'R')
            .u32(16384)
            .s("public")
            .s("leads")
            .u8(b'f')
            .u16(3)
            .u8(1)
            .s("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .s("name")
            .u32(1043)
            .i32(104)
            .u8(0)
            .s("tags")
            .u32(1009)
            .i32(-1)
            .bytes()
    }

    fn insert_msg() -> Bytes {
        B::new(b'I')
            .u32(16384)
            .u8(b'N')
            .u16(4)
            .text(b"42")
            .u8(b'n')
            .text("héllo 🎉".as_bytes())
            .bin(&[0, 1])
            .bytes()
    }

    fn update_full_msg() -> Bytes {
        B::new(b'U')
            .u32(16384)
            .u8(b'O')
            .u16(2)
            .text(b"1")
            .text(b"old")
            .u8(b'N')
            .u16(2)
            .text(b"1")
            .u8(b'u')
            .bytes()
    }

    fn update_key_msg() -> Bytes {
        B::new(b'U')
            .u32(7)
            .u8(b'K')
            .u16(2)
            .text(b"1")
            .u8(b'n')
            .u8(b'N')
            .u16(2)
            .text(b"2")
            .text(b"x")
            .bytes()
    }

    fn update_plain_msg() -> Bytes {
        B::new(b'U').u32(7).u8(b'N').u16(1).text(b"").bytes()
    }

    fn delete_msg() -> Bytes {
        B::new(b'D')
            .u32(7)
            .u8(b'K')
            .u16(2)
            .text(b"9")
            .u8(b'n')
            .bytes()
    }

    fn type_msg() -> Bytes {
        B::new(b'Y').u32(90001).s("public").s("_mood").bytes()
    }

    fn truncate_msg() -> Bytes {
        B::new(b'T').u32(2).u8(3).u32(10).u32(11).bytes()
    }

    fn origin_msg() -> Bytes {
        B::new(b'O').u64(0x0000_0001_0000_00A0).s("node1").bytes()
    }

    fn all_valid() -> Vec<Bytes> {
        vec![
            relation_msg(),
            type_msg(),
            insert_msg(),
            update_full_msg(),
            update_key_msg(),
            update_plain_msg(),
            delete_msg(),
            truncate_msg(),
            origin_msg(),
        ]
    }

    #[test]
    fn relation() {
        let m = decode(&relation_msg()).unwrap();
        assert_eq!(
            m,
            Message::Relation(Relation {
                id: 16384,
                namespace: "public".into(),
                name: "leads".into(),
                replica_identity: b'f',
                columns: vec![
                    Column {
                        flags: 1,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1
                    },
                    Column {
                        flags: 0,
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 104
                    },
                    Column {
                        flags: 0,
                        name: "tags".into(),
                        type_oid: 1009,
                        type_modifier: -1
                    },
                ],
            })
        );
    }

    #[test]
    fn type_message() {
        assert_eq!(
            decode(&type_msg()).unwrap(),
            Message::Type(TypeInfo {
                id: 90001,
                namespace: "public".into(),
                name: "_mood".into()
            })
        );
    }

    #[test]
    fn insert_with_every_datum_kind() {
        assert_eq!(
            decode(&insert_msg()).unwrap(),
            Message::Insert {
                relation_id: 16384,
                new: vec![
                    text("42"),
                    Datum::Null,
                    text("héllo 🎉"),
                    Datum::Binary(Bytes::from_static(&[0, 1])),
                ],
            }
        );
    }

    #[test]
    fn values_share_the_input_buffer() {
        let data = insert_msg();
        let Message::Insert { new, .. } = decode(&data).unwrap() else {
            panic!("not an insert");
        };
        let Datum::Text(v) = &new[0] else {
            panic!("not text")
        };
        let range = data.as_ptr_range();
        assert!(range.contains(&v.as_ptr()), "value was copied");
    }

    #[test]
    fn update_with_full_old_tuple_and_unchanged_toast() {
        assert_eq!(
            decode(&update_full_msg()).unwrap(),
            Message::Update {
                relation_id: 16384,
                old: Some((OldKind::Full, vec![text("1"), text("old")])),
                new: vec![text("1"), Datum::UnchangedToast],
            }
        );
    }

    #[test]
    fn update_with_key_old_tuple() {
        assert_eq!(
            decode(&update_key_msg()).unwrap(),
            Message::Update {
                relation_id: 7,
                old: Some((OldKind::Key, vec![text("1"), Datum::Null])),
                new: vec![text("2"), text("x")],
            }
        );
    }

    #[test]
    fn update_without_old_tuple_and_empty_text() {
        assert_eq!(
            decode(&update_plain_msg()).unwrap(),
            Message::Update {
                relation_id: 7,
                old: None,
                new: vec![text("")],
            }
        );
    }

    #[test]
    fn delete() {
        assert_eq!(
            decode(&delete_msg()).unwrap(),
            Message::Delete {
                relation_id: 7,
                old: (OldKind::Key, vec![text("9"), Datum::Null]),
            }
        );
        let full = B::new(b'D').u32(7).u8(b'O').u16(1).text(b"9").bytes();
        assert_eq!(
            decode(&full).unwrap(),
            Message::Delete {
                relation_id: 7,
                old: (OldKind::Full, vec![text("9")]),
            }
        );
    }

    #[test]
    fn truncate() {
        assert_eq!(
            decode(&truncate_msg()).unwrap(),
            Message::Truncate {
                relation_ids: vec![10, 11],
                options: 3
            }
        );
    }

    #[test]
    fn origin() {
        assert_eq!(
            decode(&origin_msg()).unwrap(),
            Message::Origin {
                commit_lsn: 0x0000_0001_0000_00A0,
                name: "node1".into()
            }
        );
    }

    #[test]
    fn other_tags_are_passed_through() {
        let begin = B::new(b'B').u64(1).u64(2).u32(3).bytes();
        assert_eq!(decode(&begin).unwrap(), Message::Other(b'B'));
        assert_eq!(decode(&B::new(b'C').bytes()).unwrap(), Message::Other(b'C'));
    }

    #[test]
    fn empty_is_an_error() {
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn every_proper_prefix_is_truncated_never_a_panic() {
        for msg in all_valid() {
            assert!(decode(&msg).is_ok(), "{msg:?}");
            for len in 1..msg.len() {
                let prefix = msg.slice(..len);
                match decode(&prefix) {
                    Err(DecodeError::Truncated { tag, at }) => {
                        assert_eq!(tag, msg[0] as char);
                        assert!(at <= len, "at {at} beyond {len}");
                    }
                    other => panic!("prefix {len} of {msg:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Flip every byte of every message to a few values: any result is fine
        // as long as nothing panics.
        for msg in all_valid() {
            for i in 0..msg.len() {
                for v in [0u8, 0x7f, 0xff, b'n', b't', b'u'] {
                    let mut bytes = msg.to_vec();
                    bytes[i] = v;
                    let _ = decode(&Bytes::from(bytes));
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = insert_msg().to_vec();
        bytes.push(b'!');
        let at = bytes.len() - 1;
        assert_eq!(
            decode(&Bytes::from(bytes)),
            Err(DecodeError::Unexpected {
                tag: 'I',
                byte: b'!',
                at
            })
        );
    }

    #[test]
    fn bad_kind_bytes_are_unexpected() {
        let bad_datum = B::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
        assert_eq!(
            decode(&bad_datum),
            Err(DecodeError::Unexpected {
                tag: 'I',
                byte: b'x',
                at: 8
            })
        );
        let bad_old = B::new(b'D').u32(1).u8(b'N').u16(0).bytes();
        assert!(matches!(
            decode(&bad_old),
            Err(DecodeError::Unexpected { byte: b'N', .. })
        ));
        let insert_without_n = B::new(b'I').u32(1).u8(b'K').u16(0).bytes();
        assert!(matches!(
            decode(&insert_without_n),
            Err(DecodeError::Unexpected { byte: b'K', .. })
        ));
        let negative_len = B::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).bytes();
        assert!(matches!(
            decode(&negative_len),
            Err(DecodeError::Unexpected { at: 9, .. })
        ));
    }

    #[test]
    fn huge_counts_are_truncation_not_allocation() {
        let t = B::new(b'T').u32(u32::MAX).u8(0).u32(1).bytes();
        assert!(matches!(decode(&t), Err(DecodeError::Truncated { .. })));
        let tuple = B::new(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes();
        assert!(matches!(decode(&tuple), Err(DecodeError::Truncated { .. })));
        let len = B::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(i32::MAX)
            .bytes();
        assert!(matches!(decode(&len), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn invalid_utf8_in_names() {
        let mut bytes = B::new(b'Y').u32(1).bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, 0]);
        bytes.extend_from_slice(b"t\0");
        assert_eq!(
            decode(&Bytes::from(bytes)),
            Err(DecodeError::Utf8 { tag: 'Y' })
        );
    }
}
