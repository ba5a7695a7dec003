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
