//! One table's mapping: [`TableMap`], built from the table's latest Relation
//! message, and [`map_change`], which turns one row change into its event.

use super::{ChangeContext, Event, EventError, Verb, id, value};
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
    /// Why the record key cannot be formed, when it cannot.
    pub key_problem: Option<String>,
    /// Per column: how its text is turned into JSON (from type oid and Type messages).
    pub kinds: Vec<value::ValueKind>,
    /// Per column: whether it is a `when_changed` column. An update is sent
    /// only when one of them changed; `None`: every update that changes an
    /// included column.
    pub when_changed: Option<Vec<bool>>,
}

impl TableMap {
    /// Builds the map for one table from its latest Relation message.
    ///
    /// - `slug`: the configured object slug (`lead`).
    /// - `excluded`: per column of `relation`, whether it is kept out of
    ///   every body (the capture loop knows excluded columns by identity).
    /// - `key`: indices into `relation.columns` of the record key, in key
    ///   order; or why they are not known, which makes every change of the
    ///   table an [`EventError::NoKey`] (never an event without its key).
    /// - `type_names`: the name a Type message gave a non-builtin type oid, if
    ///   any (user array types are named `_element`).
    pub fn new(
        relation: Relation,
        slug: String,
        excluded: Vec<bool>,
        key: Result<Vec<usize>, String>,
        type_names: &dyn Fn(u32) -> Option<String>,
    ) -> TableMap {
        let kinds = relation
            .columns
            .iter()
            .map(|c| value::kind_for_type(c.type_oid, type_names(c.type_oid).as_deref()))
            .collect();
        let (key_columns, key_problem) = match key {
            Ok(columns) => (columns, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        TableMap {
            relation,
            slug,
            excluded,
            key_columns,
            key_problem,
            kinds,
            when_changed: None,
        }
    }

    /// The same map, sending updates only when a column flagged in `mask`
    /// (one flag per column of the relation) changed; `None`: every update.
    pub fn with_when_changed(mut self, mask: Option<Vec<bool>>) -> TableMap {
        self.when_changed = mask;
        self
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

    /// One body object's columns: the included ones whose datum is known, in
    /// table order.
    fn select<'t>(&self, datum: impl Fn(usize) -> Option<&'t Datum>) -> Selection<'t> {
        (0..self.relation.columns.len())
            // excluded is built from the relation; `get` only guards
            // against a hand-built TableMap.
            .filter(|&i| !self.excluded.get(i).copied().unwrap_or(false))
            .filter_map(|i| match datum(i) {
                Some(d @ (Datum::Null | Datum::Text(_))) => Some((i, d)),
                _ => None,
            })
            .collect()
    }

    /// `{"before":{..},"after":{..},"diff":{..}}`, written straight into one
    /// buffer sized up front: a large value is copied once, not once per
    /// intermediate JSON tree.
    fn body(&self, before: &Selection, after: &Selection, diff: &Selection) -> String {
        let estimate: usize = [before, after, diff]
            .iter()
            .flat_map(|sel| sel.iter())
            .map(|(i, d)| self.relation.columns[*i].name.len() + datum_len(d) + 8)
            .sum();
        let mut out = Vec::with_capacity(estimate + estimate / 8 + 32);
        out.extend_from_slice(br#"{"before":"#);
        self.write_object(&mut out, before);
        out.extend_from_slice(br#","after":"#);
        self.write_object(&mut out, after);
        out.extend_from_slice(br#","diff":"#);
        self.write_object(&mut out, diff);
        out.push(b'}');
        // Only &str and serde_json output went in: always UTF-8.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    fn write_object(&self, out: &mut Vec<u8>, selection: &Selection) {
        out.push(b'{');
        for (n, (i, datum)) in selection.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            value::write_str(out, &self.relation.columns[*i].name);
            out.push(b':');
            match datum {
                Datum::Text(bytes) => {
                    let kind = self.kinds.get(*i).unwrap_or(&value::ValueKind::String);
                    // pgoutput sends text in the database encoding; walhook
                    // expects UTF-8 databases, anything else is replaced, not dropped.
                    value::write_json(out, kind, &String::from_utf8_lossy(bytes));
                }
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }

    /// The record key from the key columns' datums (SPEC §5).
    fn record_key<'t>(
        &self,
        datum: impl Fn(usize) -> Option<&'t Datum>,
    ) -> Result<String, EventError> {
        if let Some(reason) = &self.key_problem {
            return Err(EventError::NoKey {
                table: self.table_name(),
                reason: reason.clone(),
            });
        }
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

/// Columns of one body object with their datums (NULL or text).
type Selection<'t> = Vec<(usize, &'t Datum)>;

fn datum_len(d: &Datum) -> usize {
    match d {
        Datum::Text(b) | Datum::Binary(b) => b.len(),
        _ => 4,
    }
}

/// A datum the server actually sent (not the `u` placeholder). Takes the
/// result of `tuple.get(i)`: indices come from the catalog and are not trusted.
fn sent(d: Option<&Datum>) -> Option<&Datum> {
    d.filter(|d| !matches!(d, Datum::UnchangedToast))
}

/// Maps one row change of `map`'s table to its event (SPEC §4).
///
/// - create: `before` `{}`, `after` the new row, `diff` every column of it.
/// - update: `before` the old row, `after` the new row, `diff` the columns
///   whose text changed, with their new values; `Ok(None)` when no included
///   column changed, or, with `when_changed`, none of those columns did (a
///   column whose old value is unknown counts as changed). An unchanged
///   TOASTed value (`u`) in the new row is taken from the old row.
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
    let mapped = match change {
        RowChange::Insert { new } => Some(map_insert(map, &new)?),
        RowChange::Update { old, new } => map_update(map, old.as_ref(), &new)?,
        RowChange::Delete { old: (kind, old) } => Some(map_delete(map, kind, &old)?),
    };
    Ok(mapped.map(|m| m.into_event(map, ctx)))
}

/// A row change mapped to its parts, before the id and body are made.
struct Mapped {
    verb: Verb,
    record_key: String,
    body: String,
}

impl Mapped {
    fn into_event(self, map: &TableMap, ctx: &ChangeContext) -> Event {
        let name = format!("{}.{}", map.slug, self.verb.as_str());
        let id = id::event_id(
            ctx.source_name,
            &map.slug,
            ctx.commit_time_unix_micros,
            &self.record_key,
            &name,
            ctx.commit_lsn.as_u64(),
            ctx.change_index,
        );
        Event {
            id,
            name,
            slug: map.slug.clone(),
            verb: self.verb,
            record_key: self.record_key,
            body: self.body,
        }
    }
}

fn map_insert(map: &TableMap, new: &Tuple) -> Result<Mapped, EventError> {
    map.check(new)?;
    let after = map.select(|i| sent(new.get(i)));
    Ok(Mapped {
        verb: Verb::Create,
        record_key: map.record_key(|i| sent(new.get(i)))?,
        body: map.body(&Vec::new(), &after, &after),
    })
}

fn map_update(
    map: &TableMap,
    old: Option<&(OldKind, Tuple)>,
    new: &Tuple,
) -> Result<Option<Mapped>, EventError> {
    map.check(new)?;
    if let Some((_, old)) = old {
        map.check(old)?;
    }
    // The old value of column i, when it is known.
    let old_value = |i: usize| -> Option<&Datum> {
        match old {
            Some((OldKind::Full, old)) => sent(old.get(i)),
            Some((OldKind::Key, old)) => map.is_identity(i).then(|| sent(old.get(i)))?,
            None if matches!(map.relation.replica_identity, b'd' | b'i') && map.is_identity(i) => {
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
    let diff = map.select(changed);
    if diff.is_empty() {
        return Ok(None);
    }
    if let Some(mask) = &map.when_changed
        && !mask
            .iter()
            .enumerate()
            .any(|(i, w)| *w && changed(i).is_some())
    {
        return Ok(None);
    }
    Ok(Some(Mapped {
        verb: Verb::Update,
        record_key: map.record_key(new_value)?,
        body: map.body(&map.select(old_value), &map.select(new_value), &diff),
    }))
}

fn map_delete(map: &TableMap, kind: OldKind, old: &Tuple) -> Result<Mapped, EventError> {
    map.check(old)?;
    let old_value = |i: usize| match kind {
        OldKind::Full => sent(old.get(i)),
        OldKind::Key => map.is_identity(i).then(|| sent(old.get(i)))?,
    };
    Ok(Mapped {
        verb: Verb::Delete,
        record_key: map.record_key(old_value)?,
        body: map.body(&map.select(old_value), &Vec::new(), &Vec::new()),
    })
}

#[cfg(test)]
mod tests;
