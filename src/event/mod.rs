//! Pure mapping from a decoded row change to a walhook event: the name
//! (`slug.verb`), the record key, the JSON body (`before`, `after`, `diff`)
//! and the deterministic event id. Nothing here touches the network.
//!
//! INTERFACE (fixed; the capture loop relies on it):
//! - `TableMap::new(relation, slug, exclude_columns, key_columns, type_names)`:
//!   what is needed to map one table's changes, rebuilt on every Relation message.
//! - `map_change(&TableMap, RowChange, &ChangeContext) -> Result<Option<Event>, EventError>`
//!   (`None`: an update that changed no included column).

pub mod filter;
pub mod id;
pub mod system;
pub mod value;

use serde_json::{Map, Value};

use crate::pg::Lsn;
use crate::pgoutput::{Datum, OldKind, Relation, RowChange, Tuple};

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

impl TableMap {
    /// Builds the map for one table from its latest Relation message.
    ///
    /// - `slug`: the configured object slug (`lead`).
    /// - `exclude_columns`: configured column names kept out of every body;
    ///   names the relation does not have are ignored (config checks report them).
    /// - `key_columns`: indices into `relation.columns` of the primary key, in
    ///   key order (from the catalog). Empty for a table without a key: its
    ///   events then get an empty record key.
    /// - `type_names`: the name a Type message gave a non-builtin type oid, if
    ///   any (user array types are named `_element`).
    pub fn new(
        relation: Relation,
        slug: String,
        exclude_columns: &[String],
        key_columns: Vec<usize>,
        type_names: &dyn Fn(u32) -> Option<String>,
    ) -> TableMap {
        let excluded = relation
            .columns
            .iter()
            .map(|c| exclude_columns.contains(&c.name))
            .collect();
        let kinds = relation
            .columns
            .iter()
            .map(|c| value::kind_for_type(c.type_oid, type_names(c.type_oid).as_deref()))
            .collect();
        TableMap {
            relation,
            slug,
            excluded,
            key_columns,
            kinds,
        }
    }

    /// `namespace.name`, for errors and logs.
    pub fn table_name(&self) -> String {
        format!("{}.{}", self.relation.namespace, self.relation.name)
    }

    /// Whether column `i` belongs to the replica identity (pgoutput flag bit 1).
    fn is_identity(&self, i: usize) -> bool {
        self.relation
            .columns
            .get(i)
            .is_some_and(|c| c.flags & 1 != 0)
    }

    /// Checks a tuple's shape before any value is read.
    fn check(&self, tuple: &Tuple) -> Result<(), EventError> {
        let expected = self.relation.columns.len();
        if tuple.len() != expected {
            return Err(EventError::ColumnCount {
                table: self.table_name(),
                got: tuple.len(),
                expected,
            });
        }
        if tuple.iter().any(|d| matches!(d, Datum::Binary(_))) {
            return Err(EventError::Binary {
                table: self.table_name(),
            });
        }
        Ok(())
    }

    /// One body object: the included columns whose datum is known, in table order.
    fn object<'t>(&self, datum: impl Fn(usize) -> Option<&'t Datum>) -> Map<String, Value> {
        let mut out = Map::new();
        for (i, column) in self.relation.columns.iter().enumerate() {
            // excluded and kinds are built from the relation; `get` only
            // guards against a hand-built TableMap.
            if self.excluded.get(i).copied().unwrap_or(false) {
                continue;
            }
            let kind = self.kinds.get(i).unwrap_or(&value::ValueKind::String);
            let value = match datum(i) {
                Some(Datum::Null) => Value::Null,
                Some(Datum::Text(bytes)) => {
                    // pgoutput sends text in the database encoding; walhook
                    // expects UTF-8 databases, anything else is replaced, not dropped.
                    value::to_json(kind, &String::from_utf8_lossy(bytes))
                }
                Some(Datum::UnchangedToast | Datum::Binary(_)) | None => continue,
            };
            out.insert(column.name.clone(), value);
        }
        out
    }

    /// The record key from the key columns' datums (SPEC §5).
    fn record_key<'t>(
        &self,
        datum: impl Fn(usize) -> Option<&'t Datum>,
    ) -> Result<String, EventError> {
        let mut parts = Vec::with_capacity(self.key_columns.len());
        for &i in &self.key_columns {
            match datum(i) {
                Some(Datum::Text(bytes)) => {
                    parts.push(id::escape_key(&String::from_utf8_lossy(bytes)))
                }
                _ => {
                    return Err(EventError::MissingKey {
                        table: self.table_name(),
                        column: self
                            .relation
                            .columns
                            .get(i)
                            .map_or_else(|| format!("#{i}"), |c| c.name.clone()),
                    });
                }
            }
        }
        Ok(parts.join(","))
    }
}

/// A datum the server actually sent (not the `u` placeholder). Takes the
/// result of `tuple.get(i)`: indices come from the catalog and are not trusted.
fn sent(d: Option<&Datum>) -> Option<&Datum> {
    d.filter(|d| !matches!(d, Datum::UnchangedToast))
}

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
    #[error("table {table}: binary tuple data is not supported")]
    Binary { table: String },
}

/// Maps one row change of `map`'s table to its event (SPEC §4).
///
/// - create: `before` `{}`, `after` the new row, `diff` every column of it.
/// - update: `before` the old row, `after` the new row, `diff` the columns
///   whose text changed, with their new values; `Ok(None)` when no included
///   column changed. An unchanged TOASTed value (`u`) in the new row is taken
///   from the old row.
/// - delete: `before` the old row, `after` and `diff` `{}`.
///
/// Excluded columns never appear; keys follow the table's column order. The
/// record key is the new key for create and update, the old key for delete.
///
/// What an update body holds depends on the replica identity:
/// - FULL (`O` old tuple): everything is known; bodies are complete.
/// - DEFAULT / USING INDEX with the key changed (`K` old tuple): `before`
///   holds only the replica identity columns; `diff` holds every column of the
///   new row except identity columns whose text is provably unchanged.
/// - DEFAULT / USING INDEX with the key unchanged (no old tuple): Postgres
///   sends an old tuple whenever an identity column changes, so its absence
///   proves them unchanged: `before` holds the identity columns (same values
///   as in `after`), `diff` every other column of the new row.
/// - A `u` column with no old value to take it from (not FULL) is left out of
///   `after` and `diff`: its value is unknown, and it did not change.
/// - NOTHING: `before` is `{}` and `diff` is every column of the new row.
pub fn map_change(
    map: &TableMap,
    change: RowChange,
    ctx: &ChangeContext,
) -> Result<Option<Event>, EventError> {
    let empty = Map::new;
    let (verb, record_key, before, after, diff) = match change {
        RowChange::Insert { new } => {
            map.check(&new)?;
            let after = map.object(|i| sent(new.get(i)));
            let key = map.record_key(|i| sent(new.get(i)))?;
            (Verb::Create, key, empty(), after.clone(), after)
        }
        RowChange::Update { old, new } => {
            map.check(&new)?;
            if let Some((_, old)) = &old {
                map.check(old)?;
            }
            // The old value of column i, when it is known.
            let old_value = |i: usize| -> Option<&Datum> {
                match &old {
                    Some((OldKind::Full, old)) => sent(old.get(i)),
                    Some((OldKind::Key, old)) => map.is_identity(i).then(|| sent(old.get(i)))?,
                    None if matches!(map.relation.replica_identity, b'd' | b'i')
                        && map.is_identity(i) =>
                    {
                        sent(new.get(i))
                    }
                    None => None,
                }
            };
            let new_value = |i: usize| sent(new.get(i)).or_else(|| old_value(i));
            let changed = |i: usize| match (new_value(i), old_value(i)) {
                (Some(new), Some(old)) => (new != old).then_some(new),
                (new, None) => new,
                (None, Some(_)) => None,
            };
            let diff = map.object(changed);
            if diff.is_empty() {
                return Ok(None);
            }
            let key = map.record_key(new_value)?;
            (
                Verb::Update,
                key,
                map.object(old_value),
                map.object(new_value),
                diff,
            )
        }
        RowChange::Delete { old: (kind, old) } => {
            map.check(&old)?;
            let old_value = |i: usize| match kind {
                OldKind::Full => sent(old.get(i)),
                OldKind::Key => map.is_identity(i).then(|| sent(old.get(i)))?,
            };
            let key = map.record_key(old_value)?;
            (Verb::Delete, key, map.object(old_value), empty(), empty())
        }
    };
    let name = format!("{}.{}", map.slug, verb.as_str());
    let id = id::event_id(
        ctx.source_name,
        &map.slug,
        ctx.commit_time_unix_micros,
        &record_key,
        &name,
        ctx.commit_lsn.as_u64(),
        ctx.change_index,
    );
    // Value's Display is compact serde_json output; the key order is fixed here.
    let body = format!(
        r#"{{"before":{},"after":{},"diff":{}}}"#,
        Value::Object(before),
        Value::Object(after),
        Value::Object(diff)
    );
    Ok(Some(Event {
        id,
        name,
        slug: map.slug.clone(),
        verb,
        record_key,
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;
    use bytes::Bytes;

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
        TableMap::new(
            relation,
            "lead".into(),
            &["password_hash".to_owned(), "no_such_column".to_owned()],
            vec![0],
            &|_| None,
        )
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
        let m = TableMap::new(relation, "tag".into(), &[], vec![0], &|_| None);
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
        let m = TableMap::new(relation, "student".into(), &[], vec![1, 2], &|_| None);
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
        let m = TableMap::new(relation, "m".into(), &[], vec![0], &names);
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
        let m = TableMap::new(relation, "log".into(), &[], vec![], &|_| None);
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
                    let excluded = ["secret".to_owned()];
                    maps.insert(
                        r.id,
                        TableMap::new(r, slug.into(), &excluded, keys, &|_| None),
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
}
