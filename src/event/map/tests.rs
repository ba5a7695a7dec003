use super::*;
use crate::pg::Lsn;
use crate::pgoutput::Column;
use bytes::Bytes;
use serde_json::Value;

fn col(name: &str, type_oid: u32, flags: u8) -> Column {
    Column {
        flags,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    }
}

/// public.leads (id bigint PK, name text, score numeric, meta jsonb,
/// password_hash text (excluded), notes text (TOASTable), tags text[]).
fn leads(identity: u8) -> TableMap {
    let key_flag = 1;
    let all = u8::from(identity == b'f');
    let relation = Relation {
        id: 16384,
        namespace: "public".into(),
        name: "leads".into(),
        replica_identity: identity,
        columns: vec![
            col("id", 20, key_flag),
            col("name", 25, all),
            col("score", 1700, all),
            col("meta", 3802, all),
            col("password_hash", 25, all),
            col("notes", 25, all),
            col("tags", 1009, all),
        ],
    };
    let excluded = by_name(&relation, &["password_hash", "no_such_column"]);
    TableMap::new(relation, "lead".into(), excluded, Ok(vec![0]), &|_| None)
}

/// Excludes the columns of `relation` named in `names`.
fn by_name(relation: &Relation, names: &[&str]) -> Vec<bool> {
    relation
        .columns
        .iter()
        .map(|c| names.contains(&c.name.as_str()))
        .collect()
}

fn t(v: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(v.as_bytes()))
}

const N: Datum = Datum::Null;
const U: Datum = Datum::UnchangedToast;

fn ctx() -> ChangeContext<'static> {
    ChangeContext {
        source_name: "app",
        commit_lsn: Lsn(0x16B_3740_0028),
        commit_time_unix_micros: 1_741_686_315_971_842,
        change_index: 2,
    }
}

fn row(id: &str, name: &str, notes: Datum) -> Tuple {
    vec![
        t(id),
        t(name),
        t("12.500000"),
        t(r#"{"b": 1.50, "a": [1, null]}"#),
        t("secret"),
        notes,
        t(r#"{x,"y z",NULL}"#),
    ]
}

fn map(m: &TableMap, change: RowChange) -> Option<Event> {
    map_change(m, change, &ctx()).unwrap()
}

#[test]
fn create_body_and_metadata() {
    let e = map(
        &leads(b'f'),
        RowChange::Insert {
            new: row("987654321", "Zoë 🎉", N),
        },
    )
    .unwrap();
    let after = r#"{"id":987654321,"name":"Zoë 🎉","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"notes":null,"tags":["x","y z",null]}"#;
    assert_eq!(
        e.body,
        format!(r#"{{"before":{{}},"after":{after},"diff":{after}}}"#)
    );
    assert_eq!(e.name, "lead.create");
    assert_eq!(e.slug, "lead");
    assert_eq!(e.verb, Verb::Create);
    assert_eq!(e.record_key, "987654321");
    assert_eq!(
        e.id,
        id::event_id(
            "app",
            "lead",
            1_741_686_315_971_842,
            "987654321",
            "lead.create",
            0x16B_3740_0028,
            2
        )
    );
    assert!(e.id.starts_with("app:lead:1741686315971:987654321:lead.create:"));
    assert!(!e.body.contains("secret") && !e.body.contains("password_hash"));
}

#[test]
fn update_full_diff_has_only_changed_columns() {
    let mut new = row("1", "new name", t("n"));
    new[2] = N; // score -> NULL
    let e = map(
        &leads(b'f'),
        RowChange::Update {
            old: Some((OldKind::Full, row("1", "old name", t("n")))),
            new,
        },
    )
    .unwrap();
    assert_eq!(
        e.body,
        concat!(
            r#"{"before":{"id":1,"name":"old name","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"notes":"n","tags":["x","y z",null]},"#,
            r#""after":{"id":1,"name":"new name","score":null,"meta":{"b":1.50,"a":[1,null]},"notes":"n","tags":["x","y z",null]},"#,
            r#""diff":{"name":"new name","score":null}}"#
        )
    );
    assert_eq!(e.name, "lead.update");
    assert_eq!(e.verb, Verb::Update);
}

#[test]
fn update_compares_text_not_meaning() {
    // 1.50 -> 1.5 in jsonb text is a change, even though the numbers are equal.
    let mut new = row("1", "a", N);
    new[3] = t(r#"{"b": 1.5, "a": [1, null]}"#);
    let e = map(
        &leads(b'f'),
        RowChange::Update {
            old: Some((OldKind::Full, row("1", "a", N))),
            new,
        },
    )
    .unwrap();
    assert!(
        e.body
            .ends_with(r#""diff":{"meta":{"b":1.5,"a":[1,null]}}}"#),
        "{}",
        e.body
    );
}

#[test]
fn no_op_update_emits_nothing() {
    let m = leads(b'f');
    let same = RowChange::Update {
        old: Some((OldKind::Full, row("1", "a", t("n")))),
        new: row("1", "a", t("n")),
    };
    assert_eq!(map(&m, same), None);
    // Only an excluded column changed.
    let mut new = row("1", "a", t("n"));
    new[4] = t("new secret");
    let excluded_only = RowChange::Update {
        old: Some((OldKind::Full, row("1", "a", t("n")))),
        new,
    };
    assert_eq!(map(&m, excluded_only), None);
    // Only a TOASTed column left alone.
    let toast_only = RowChange::Update {
        old: Some((OldKind::Full, row("1", "a", t("long text")))),
        new: row("1", "a", U),
    };
    assert_eq!(map(&m, toast_only), None);
}

#[test]
fn unchanged_toast_is_taken_from_the_old_row() {
    let e = map(
        &leads(b'f'),
        RowChange::Update {
            old: Some((OldKind::Full, row("1", "a", t("very long text")))),
            new: row("1", "b", U),
        },
    )
    .unwrap();
    let v: Value = serde_json::from_str(&e.body).unwrap();
    assert_eq!(v["before"]["notes"], "very long text");
    assert_eq!(v["after"]["notes"], "very long text");
    assert_eq!(
        serde_json::to_string(&v["diff"]).unwrap(),
        r#"{"name":"b"}"#
    );
}

#[test]
fn default_identity_without_old_tuple() {
    // Key unchanged, so no old tuple; notes is TOASTed and unchanged.
    let e = map(
        &leads(b'd'),
        RowChange::Update {
            old: None,
            new: row("7", "b", U),
        },
    )
    .unwrap();
    assert_eq!(
        e.body,
        concat!(
            r#"{"before":{"id":7},"#,
            r#""after":{"id":7,"name":"b","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"tags":["x","y z",null]},"#,
            r#""diff":{"name":"b","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"tags":["x","y z",null]}}"#
        )
    );
    assert_eq!(e.record_key, "7");
}

#[test]
fn default_identity_key_change() {
    let e = map(
        &leads(b'd'),
        RowChange::Update {
            old: Some((OldKind::Key, vec![t("7"), N, N, N, N, N, N])),
            new: row("8", "b", N),
        },
    )
    .unwrap();
    assert_eq!(
        e.body,
        concat!(
            r#"{"before":{"id":7},"#,
            r#""after":{"id":8,"name":"b","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"notes":null,"tags":["x","y z",null]},"#,
            r#""diff":{"id":8,"name":"b","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"notes":null,"tags":["x","y z",null]}}"#
        )
    );
    // The new key names the record.
    assert_eq!(e.record_key, "8");
    assert!(e.id.contains(":8:lead.update:"));
}

#[test]
fn default_identity_only_key_columns_no_change() {
    let relation = Relation {
        id: 1,
        namespace: "public".into(),
        name: "tags".into(),
        replica_identity: b'd',
        columns: vec![col("id", 23, 1)],
    };
    let m = TableMap::new(
        relation.clone(),
        "tag".into(),
        vec![false; relation.columns.len()],
        Ok(vec![0]),
        &|_| None,
    );
    let change = RowChange::Update {
        old: None,
        new: vec![t("1")],
    };
    assert_eq!(map(&m, change), None);
}

#[test]
fn delete_full_and_key() {
    let e = map(
        &leads(b'f'),
        RowChange::Delete {
            old: (OldKind::Full, row("5", "gone", N)),
        },
    )
    .unwrap();
    assert_eq!(
        e.body,
        r#"{"before":{"id":5,"name":"gone","score":12.500000,"meta":{"b":1.50,"a":[1,null]},"notes":null,"tags":["x","y z",null]},"after":{},"diff":{}}"#
    );
    assert_eq!(e.name, "lead.delete");
    assert_eq!(e.record_key, "5");

    let e = map(
        &leads(b'd'),
        RowChange::Delete {
            old: (OldKind::Key, vec![t("5"), N, N, N, N, N, N]),
        },
    )
    .unwrap();
    assert_eq!(e.body, r#"{"before":{"id":5},"after":{},"diff":{}}"#);
    assert_eq!(e.record_key, "5");
}

#[test]
fn composite_key_is_escaped() {
    let relation = Relation {
        id: 2,
        namespace: "crm".into(),
        name: "students".into(),
        replica_identity: b'f',
        columns: vec![col("note", 25, 1), col("school", 25, 1), col("code", 25, 1)],
    };
    // Key order (school, code) differs from column order.
    let m = TableMap::new(
        relation.clone(),
        "student".into(),
        vec![false; relation.columns.len()],
        Ok(vec![1, 2]),
        &|_| None,
    );
    let e = map(
        &m,
        RowChange::Insert {
            new: vec![t("x"), t("a:b,c"), t("50%")],
        },
    )
    .unwrap();
    assert_eq!(e.record_key, "a%3Ab%2Cc,50%25");
    assert!(e.id.starts_with("app:student:1741686315971:a%3Ab%2Cc,50%25:student.create:"));
    assert_eq!(e.id.split(':').count(), 6);
}

#[test]
fn user_array_types_via_type_names() {
    let relation = Relation {
        id: 3,
        namespace: "public".into(),
        name: "moods".into(),
        replica_identity: b'f',
        columns: vec![col("id", 23, 1), col("moods", 90001, 0), col("m", 90000, 0)],
    };
    let names = |oid: u32| match oid {
        90001 => Some("_mood".to_owned()),
        90000 => Some("mood".to_owned()),
        _ => None,
    };
    let m = TableMap::new(
        relation.clone(),
        "m".into(),
        vec![false; relation.columns.len()],
        Ok(vec![0]),
        &names,
    );
    let e = map(
        &m,
        RowChange::Insert {
            new: vec![t("1"), t("{happy,sad}"), t("ok")],
        },
    )
    .unwrap();
    assert!(
        e.body
            .contains(r#""after":{"id":1,"moods":["happy","sad"],"m":"ok"}"#),
        "{}",
        e.body
    );
}

#[test]
fn table_without_key_has_empty_record_key() {
    let relation = Relation {
        id: 4,
        namespace: "public".into(),
        name: "log".into(),
        replica_identity: b'f',
        columns: vec![col("msg", 25, 1)],
    };
    let m = TableMap::new(
        relation.clone(),
        "log".into(),
        vec![false; relation.columns.len()],
        Ok(vec![]),
        &|_| None,
    );
    let e = map(&m, RowChange::Insert { new: vec![t("hi")] }).unwrap();
    assert_eq!(e.record_key, "");
    assert!(e.id.contains(":1741686315971::log.create:"));
}

#[test]
fn malformed_changes_are_errors() {
    let m = leads(b'f');
    let short = RowChange::Insert { new: vec![t("1")] };
    assert!(matches!(
        map_change(&m, short, &ctx()),
        Err(EventError::ColumnCount {
            got: 1,
            expected: 7,
            ..
        })
    ));
    let mut new = row("1", "a", N);
    new[1] = Datum::Binary(Bytes::from_static(b"x"));
    assert!(matches!(
        map_change(&m, RowChange::Insert { new }, &ctx()),
        Err(EventError::Binary { .. })
    ));
    let mut new = row("1", "a", N);
    new[0] = N;
    let err = map_change(&m, RowChange::Insert { new }, &ctx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "table public.leads: primary key column id is NULL or missing"
    );
    let bad_old = RowChange::Update {
        old: Some((OldKind::Full, vec![t("1")])),
        new: row("1", "a", N),
    };
    assert!(matches!(
        map_change(&m, bad_old, &ctx()),
        Err(EventError::ColumnCount { got: 1, .. })
    ));
    let mut m = leads(b'f');
    m.key_columns = vec![99];
    let err = map_change(
        &m,
        RowChange::Insert {
            new: row("1", "a", N),
        },
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(err, EventError::MissingKey { column, .. } if column == "#99"));
}

/// Messages captured from PostgreSQL 15 (`pg_logical_slot_peek_binary_changes`,
/// proto_version 1) for:
/// ```sql
/// create table leads (id bigint primary key, name text, score numeric,
///   notes text, tags text[], secret text);          -- REPLICA IDENTITY FULL
/// create table kv (k text, n int, v text, primary key (k, n));  -- DEFAULT,
///   -- v with STORAGE EXTERNAL and a 2.5 kB value (insert not kept here)
/// insert into leads values (9007199254740993, 'Zoë 🎉', 12.500000, 'short',
///   '{a,"b c",NULL}', 's3cret');
/// update leads set name = 'new', score = null;  update leads set name = 'new';
/// delete from leads;
/// update kv set n = 2;  update kv set k = 'x%';  delete from kv;
/// ```
const PG15_STREAM: &[&str] = &[
    "520000401c7075626c6963006c65616473006600060169640000000014ffffffff016e616d650000000019ffffffff0173636f726500000006a4ffffffff016e6f7465730000000019ffffffff017461677300000003f1ffffffff017365637265740000000019ffffffff",
    "490000401c4e000674000000103930303731393932353437343039393374000000095a6fc3ab20f09f8e89740000000931322e353030303030740000000573686f7274740000000e7b612c22622063222c4e554c4c7d7400000006733363726574",
    "550000401c4f000674000000103930303731393932353437343039393374000000095a6fc3ab20f09f8e89740000000931322e353030303030740000000573686f7274740000000e7b612c22622063222c4e554c4c7d74000000067333637265744e000674000000103930303731393932353437343039393374000000036e65776e740000000573686f7274740000000e7b612c22622063222c4e554c4c7d7400000006733363726574",
    "550000401c4f000674000000103930303731393932353437343039393374000000036e65776e740000000573686f7274740000000e7b612c22622063222c4e554c4c7d74000000067333637265744e000674000000103930303731393932353437343039393374000000036e65776e740000000573686f7274740000000e7b612c22622063222c4e554c4c7d7400000006733363726574",
    "440000401c4f000674000000103930303731393932353437343039393374000000036e65776e740000000573686f7274740000000e7b612c22622063222c4e554c4c7d7400000006733363726574",
    "52000040237075626c6963006b7600640003016b0000000019ffffffff016e0000000017ffffffff00760000000019ffffffff",
    "55000040234b00037400000005613a622c637400000001316e4e00037400000005613a622c6374000000013275",
    "55000040234b00037400000005613a622c637400000001326e4e00037400000002782574000000013275",
    "44000040234b0003740000000278257400000001326e",
];

#[test]
fn real_pg15_stream_end_to_end() {
    use crate::pgoutput::{Message, decode};
    let mut maps: std::collections::HashMap<u32, TableMap> = Default::default();
    let mut out = Vec::new();
    for (index, hex_text) in PG15_STREAM.iter().enumerate() {
        let data = Bytes::from(hex::decode(hex_text).unwrap());
        let change = match decode(&data).unwrap().into_row_change() {
            Ok(change) => change,
            Err(Message::Relation(r)) => {
                let (slug, keys) = if r.name == "leads" {
                    ("lead", vec![0])
                } else {
                    ("kv", vec![0, 1])
                };
                let excluded = by_name(&r, &["secret"]);
                maps.insert(
                    r.id,
                    TableMap::new(r, slug.into(), excluded, Ok(keys), &|_| None),
                );
                continue;
            }
            Err(other) => panic!("unexpected {other:?}"),
        };
        let ctx = ChangeContext {
            change_index: index as u32,
            ..ctx()
        };
        let event = map_change(&maps[&change.0], change.1, &ctx).unwrap();
        out.push(event.map(|e| format!("{} {} {}", e.name, e.record_key, e.body)));
    }
    let lead = r#""id":9007199254740993,"name":"Zoë 🎉","score":12.500000,"notes":"short","tags":["a","b c",null]"#;
    let lead_new = r#""id":9007199254740993,"name":"new","score":null,"notes":"short","tags":["a","b c",null]"#;
    let expected = [
        Some(format!(
            r#"lead.create 9007199254740993 {{"before":{{}},"after":{{{lead}}},"diff":{{{lead}}}}}"#
        )),
        Some(format!(
            r#"lead.update 9007199254740993 {{"before":{{{lead}}},"after":{{{lead_new}}},"diff":{{"name":"new","score":null}}}}"#
        )),
        None,
        Some(format!(
            r#"lead.delete 9007199254740993 {{"before":{{{lead_new}}},"after":{{}},"diff":{{}}}}"#
        )),
        // v is TOASTed and unchanged (`u`) and DEFAULT identity has no old
        // value for it: left out of after and diff.
        Some(r#"kv.update a%3Ab%2Cc,2 {"before":{"k":"a:b,c","n":1},"after":{"k":"a:b,c","n":2},"diff":{"n":2}}"#.into()),
        Some(r#"kv.update x%25,2 {"before":{"k":"a:b,c","n":2},"after":{"k":"x%","n":2},"diff":{"k":"x%"}}"#.into()),
        Some(r#"kv.delete x%25,2 {"before":{"k":"x%","n":2},"after":{},"diff":{}}"#.into()),
    ];
    assert_eq!(out, expected);
}

/// [`leads`] sending updates only when `name` or `score` changed.
fn leads_when_changed(identity: u8) -> TableMap {
    let m = leads(identity);
    let mask = by_name(&m.relation, &["name", "score"]);
    m.with_when_changed(Some(mask))
}

fn update(m: &TableMap, old: Option<(OldKind, Tuple)>, new: Tuple) -> Option<Event> {
    map(m, RowChange::Update { old, new })
}

#[test]
fn when_changed_sends_updates_of_those_columns_only() {
    let m = leads_when_changed(b'f');
    let old = row("1", "a", t("n"));
    // Only `notes` changed: no event, though `notes` is an included column.
    let notes_only = update(
        &m,
        Some((OldKind::Full, old.clone())),
        row("1", "a", t("m")),
    );
    assert_eq!(notes_only, None);
    assert!(
        update(
            &leads(b'f'),
            Some((OldKind::Full, old.clone())),
            row("1", "a", t("m"))
        )
        .is_some()
    );
    // `name` changed (with `notes`): the event has the whole diff.
    let e = update(
        &m,
        Some((OldKind::Full, old.clone())),
        row("1", "b", t("m")),
    )
    .unwrap();
    let body: Value = serde_json::from_str(&e.body).unwrap();
    assert_eq!(body["diff"], serde_json::json!({"name": "b", "notes": "m"}));
    // `score` changed.
    let mut new = old.clone();
    new[2] = t("13");
    assert!(update(&m, Some((OldKind::Full, old.clone())), new).is_some());
    // Creates and deletes are not affected.
    assert!(map(&m, RowChange::Insert { new: old.clone() }).is_some());
    let delete = RowChange::Delete {
        old: (OldKind::Full, old),
    };
    assert!(map(&m, delete).is_some());
}

#[test]
fn when_changed_with_unknown_old_values_sends_the_update() {
    // REPLICA IDENTITY DEFAULT, key unchanged: old values of non-key
    // columns are unknown, so `name` may have changed.
    let m = leads_when_changed(b'd');
    assert!(update(&m, None, row("1", "a", t("n"))).is_some());
    // Only the key column is watched and it provably did not change.
    let key_only =
        leads(b'd').with_when_changed(Some(vec![true, false, false, false, false, false, false]));
    assert_eq!(update(&key_only, None, row("1", "a", t("n"))), None);
    // A watched column whose new value is an unchanged TOAST: not changed.
    let notes = leads(b'f').with_when_changed(Some(by_name(&leads(b'f').relation, &["notes"])));
    let old = row("1", "a", t("long"));
    assert_eq!(
        update(&notes, Some((OldKind::Full, old)), row("1", "b", U)),
        None
    );
}
