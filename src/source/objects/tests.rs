use super::*;

fn object(exclude: &[&str]) -> ObjectConfig {
    ObjectConfig {
        schema: "public".into(),
        table: "items".into(),
        slug: "item".into(),
        exclude_columns: exclude.iter().map(|s| s.to_string()).collect(),
        when_changed: Vec::new(),
    }
}

fn table(name: &str, cols: &[&str], pk: &[i16]) -> TableInfo {
    TableInfo {
        relid: 16400,
        schema: "public".into(),
        name: name.into(),
        attrs: cols
            .iter()
            .enumerate()
            .map(|(i, c)| Attribute {
                attnum: i as i16 + 1,
                name: c.to_string(),
                dropped: c.starts_with("...."),
            })
            .collect(),
        primary_key: pk.to_vec(),
    }
}

#[test]
fn a_table_as_configured_resolves_by_name() {
    let t = table("items", &["id", "name", "note"], &[1]);
    let (r, notices) = resolve(&object(&["note"]), Some(&t), None, None).unwrap();
    assert_eq!(r.relid, 16400);
    assert_eq!(r.key_attnums, vec![1]);
    assert_eq!(r.excluded_attnums, vec![3]);
    assert!(notices.is_empty());
    assert_eq!(r.row(&t).excluded, vec![(3, "note".to_string())]);
}

#[test]
fn a_renamed_table_is_followed_by_its_oid() {
    let t = table("items_renamed", &["id", "note"], &[1]);
    let (r, notices) = resolve(&object(&[]), None, Some(&t), None).unwrap();
    assert_eq!(r.relid, 16400);
    assert!(
        matches!(&notices[..], [Notice::TableRenamed { now, .. }] if now == "public.items_renamed")
    );
    assert!(
        notices[0]
            .to_string()
            .contains("table = \"public.items_renamed\"")
    );
}

#[test]
fn a_missing_table_is_an_error() {
    assert_eq!(
        resolve(&object(&[]), None, None, None).unwrap_err(),
        ObjectError::NoTable("public.items".into())
    );
}

#[test]
fn an_excluded_column_renamed_since_stays_excluded() {
    let t = table("items", &["id", "note_secret"], &[1]);
    let remembered = remembered(&t, &[(2, "note")]);
    let (r, notices) = resolve(&object(&["note"]), Some(&t), None, Some(&remembered)).unwrap();
    assert_eq!(r.excluded_attnums, vec![2]);
    assert!(r.excluded_names.contains("note") && r.excluded_names.contains("note_secret"));
    assert!(matches!(&notices[..], [Notice::ColumnRenamed { now, .. }] if now == "note_secret"));
}

#[test]
fn an_excluded_column_renamed_twice_stays_excluded() {
    // Remembered under the config's name, so a second rename (after a
    // restart saved the first) still finds it.
    let t = table("items", &["id", "note_secret"], &[1]);
    let (first, _) = resolve(
        &object(&["note"]),
        Some(&t),
        None,
        Some(&remembered(&t, &[(2, "note")])),
    )
    .unwrap();
    let saved = first.row(&t);
    assert_eq!(saved.excluded, vec![(2, "note".to_string())]);
    let t = table("items", &["id", "note_hidden"], &[1]);
    let (r, notices) = resolve(&object(&["note"]), Some(&t), None, Some(&saved)).unwrap();
    assert_eq!(r.excluded_attnums, vec![2]);
    assert!(r.excluded_names.contains("note_hidden"));
    assert!(matches!(&notices[..], [Notice::ColumnRenamed { now, .. }] if now == "note_hidden"));
}

#[test]
fn a_name_taken_over_by_another_column_excludes_both() {
    // note (3) and name (2) swapped names: the column that was excluded
    // stays excluded, and so does the one now called note (fail closed).
    let t = table("items", &["id", "note", "name"], &[1]);
    let remembered = remembered(&t, &[(3, "note")]);
    let (r, notices) = resolve(&object(&["note"]), Some(&t), None, Some(&remembered)).unwrap();
    assert_eq!(r.excluded_attnums, vec![2, 3]);
    assert!(r.excluded_names.contains("note") && r.excluded_names.contains("name"));
    assert!(matches!(&notices[..], [Notice::ColumnRenamed { now, .. }] if now == "name"));
}

#[test]
fn a_dropped_excluded_column_is_a_warning_and_stays_remembered() {
    let t = table("items", &["id", "........pg.dropped.2........"], &[1]);
    let remembered = remembered(&t, &[(2, "note")]);
    let (r, notices) = resolve(&object(&["note"]), Some(&t), None, Some(&remembered)).unwrap();
    // Still excluded by position, for messages from before the drop.
    assert_eq!(r.excluded_attnums, vec![2]);
    assert!(
        matches!(&notices[..], [Notice::ColumnDropped { configured, .. }] if configured == "note")
    );
    assert_eq!(r.row(&t).excluded, vec![(2, "note".to_string())]);
}

#[test]
fn an_exclusion_that_names_no_column_is_an_error() {
    let t = table("items", &["id", "name"], &[1]);
    let err = resolve(&object(&["nmae"]), Some(&t), None, None).unwrap_err();
    assert!(matches!(err, ObjectError::UnknownColumn { ref column, .. } if column == "nmae"));
}

#[test]
fn excluding_a_key_column_is_an_error() {
    let t = table("items", &["id", "name"], &[1]);
    let err = resolve(&object(&["id"]), Some(&t), None, None).unwrap_err();
    assert!(matches!(err, ObjectError::ExcludesKey { .. }), "{err}");
}

#[test]
fn when_changed_columns_resolve_to_attribute_numbers() {
    let t = table("items", &["id", "....dropped", "stage", "score"], &[1]);
    let mut o = object(&[]);
    o.when_changed = vec!["score".into(), "stage".into()];
    let (r, _) = resolve(&o, Some(&t), None, None).unwrap();
    assert_eq!(r.watched_attnums, vec![4, 3]);
    assert!(
        resolve(&object(&[]), Some(&t), None, None)
            .unwrap()
            .0
            .watched_attnums
            .is_empty()
    );
    o.when_changed = vec!["stgae".into()];
    let err = resolve(&o, Some(&t), None, None).unwrap_err();
    assert!(matches!(err, ObjectError::UnknownWatched { ref column, .. } if column == "stgae"));
    assert!(
        err.to_string()
            .contains("when_changed of object item names `stgae`"),
        "{err}"
    );
}

#[test]
fn a_when_changed_column_that_is_excluded_under_another_name_is_an_error() {
    // `note` was renamed `stage`; the config still excludes it as `note`.
    let t = table("items", &["id", "stage"], &[1]);
    let remembered = remembered(&t, &[(2, "note")]);
    let mut o = object(&["note"]);
    o.when_changed = vec!["stage".into()];
    let err = resolve(&o, Some(&t), None, Some(&remembered)).unwrap_err();
    assert!(matches!(err, ObjectError::WatchesExcluded { .. }), "{err}");
}

#[test]
fn a_dropped_primary_key_keeps_the_former_key_columns() {
    let t = table("items", &["id", "name"], &[]);
    let remembered = remembered(&t, &[]);
    let (r, notices) = resolve(&object(&[]), Some(&t), None, Some(&remembered)).unwrap();
    assert_eq!(r.key_attnums, vec![1]);
    assert!(matches!(&notices[..], [Notice::KeyDropped { .. }]));
    // Without a remembered key there is nothing to fall back on.
    assert_eq!(
        resolve(&object(&[]), Some(&t), None, None).unwrap_err(),
        ObjectError::NoPrimaryKey("public.items".into())
    );
}

/// What the ledger would remember of `t` (key: its first column).
fn remembered(t: &TableInfo, excluded: &[(i16, &str)]) -> ObjectRow {
    ObjectRow {
        slug: "item".into(),
        relid: t.relid,
        table_name: "public.items".into(),
        key_attnums: vec![1],
        excluded: excluded.iter().map(|(a, n)| (*a, n.to_string())).collect(),
    }
}
