//! Which table column each column of a Relation message is.
//!
//! A Relation message names the columns of a table as they were at that
//! point of the WAL; the catalog says what they are now. Between the two,
//! columns may have been renamed, added or dropped. Excluded columns and key
//! columns are known by their identity (attribute number), so a column that
//! was renamed since is still recognised.
//!
//! What the stream shows at a WAL position is the table's live columns of
//! that moment, in attribute-number order. Attribute numbers only grow and
//! are never reused, so, against today's catalog (dropped columns included),
//! the message's columns are an increasing run of attributes that skips only
//! columns dropped since and stops before columns added since. When the names
//! match today's live columns exactly (the usual case: no DDL waiting in the
//! WAL) that run is the live columns themselves; otherwise every run that
//! fits is considered, and a column is treated as excluded when any fitting
//! run makes it an excluded one (fail closed).

/// One attribute of the table in today's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub attnum: i16,
    /// The name today (`........pg.dropped.N........` once dropped).
    pub name: String,
    pub dropped: bool,
}

/// For each column of a Relation message, the attribute numbers it can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alignment {
    pub candidates: Vec<Vec<i16>>,
}

impl Alignment {
    /// The column (index in the message) that is attribute `attnum`, when
    /// only one can be.
    pub fn position_of(&self, attnum: i16) -> Option<usize> {
        let mut hits = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(&attnum));
        match (hits.next(), hits.next()) {
            (Some((i, c)), None) if c.len() == 1 => Some(i),
            _ => None,
        }
    }

    /// Whether column `i` may be any of `attnums`.
    pub fn may_be_any(&self, i: usize, attnums: &[i16]) -> bool {
        self.candidates
            .get(i)
            .is_some_and(|c| c.iter().any(|a| attnums.contains(a)))
    }
}

/// Aligns the message's column names with today's attributes (in attnum
/// order, generated columns left out since pgoutput does not send them).
/// `None` when no run fits: the catalog does not describe this relation.
pub fn align(names: &[&str], attrs: &[Attribute]) -> Option<Alignment> {
    let live: Vec<&Attribute> = attrs.iter().filter(|a| !a.dropped).collect();
    if live.len() == names.len() && live.iter().zip(names).all(|(a, n)| a.name == *n) {
        return Some(Alignment {
            candidates: live.iter().map(|a| vec![a.attnum]).collect(),
        });
    }
    let (n, m) = (names.len(), attrs.len());
    if n == 0 {
        return Some(Alignment {
            candidates: Vec::new(),
        });
    }
    // forward[i][j]: columns 0..=i fit with column i at attribute j.
    let mut forward = vec![vec![false; m]; n];
    for j in 0..m {
        forward[0][j] = attrs[..j].iter().all(|a| a.dropped);
    }
    for i in 1..n {
        for j in 0..m {
            // Column i-1 at some k < j, with only dropped attributes between.
            for k in (0..j).rev() {
                if forward[i - 1][k] {
                    forward[i][j] = true;
                    break;
                }
                if !attrs[k].dropped {
                    break;
                }
            }
        }
    }
    // backward[i][j]: columns i.. fit with column i at attribute j (the last
    // column may be followed by anything: later attributes came after).
    let mut backward = vec![vec![false; m]; n];
    backward[n - 1].fill(true);
    for i in (0..n - 1).rev() {
        for j in 0..m {
            for k in j + 1..m {
                if backward[i + 1][k] {
                    backward[i][j] = true;
                    break;
                }
                if !attrs[k].dropped {
                    break;
                }
            }
        }
    }
    let candidates: Vec<Vec<i16>> = (0..n)
        .map(|i| {
            (0..m)
                .filter(|&j| forward[i][j] && backward[i][j])
                .map(|j| attrs[j].attnum)
                .collect()
        })
        .collect();
    candidates
        .iter()
        .all(|c| !c.is_empty())
        .then_some(Alignment { candidates })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(spec: &[(&str, bool)]) -> Vec<Attribute> {
        spec.iter()
            .enumerate()
            .map(|(i, (name, dropped))| Attribute {
                attnum: i as i16 + 1,
                name: name.to_string(),
                dropped: *dropped,
            })
            .collect()
    }

    #[test]
    fn names_as_today_map_one_to_one() {
        let a = attrs(&[("id", false), ("x", true), ("note", false)]);
        let al = align(&["id", "note"], &a).unwrap();
        assert_eq!(al.candidates, vec![vec![1], vec![3]]);
        assert_eq!(al.position_of(3), Some(1));
    }

    #[test]
    fn a_column_renamed_since_is_still_known_by_position() {
        // note (3) was renamed to note_secret after this Relation message.
        let a = attrs(&[("id", false), ("name", false), ("note_secret", false)]);
        let al = align(&["id", "name", "note"], &a).unwrap();
        assert_eq!(al.candidates, vec![vec![1], vec![2], vec![3]]);
        assert!(al.may_be_any(2, &[3]));
    }

    #[test]
    fn columns_added_since_are_not_in_the_message() {
        let a = attrs(&[("id", false), ("note", false), ("added", false)]);
        let al = align(&["id", "note"], &a).unwrap();
        assert_eq!(al.candidates, vec![vec![1], vec![2]]);
    }

    #[test]
    fn a_column_dropped_since_is_in_the_message() {
        let a = attrs(&[
            ("id", false),
            ("........pg.dropped.2........", true),
            ("note", false),
        ]);
        let al = align(&["id", "old", "note"], &a).unwrap();
        assert_eq!(al.candidates, vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn ambiguity_around_dropped_columns_is_reported_not_guessed() {
        // [id, X]: X is either the dropped 2 (before 3 was added) or 3.
        let a = attrs(&[
            ("id", false),
            ("........pg.dropped.2........", true),
            ("note", false),
        ]);
        let al = align(&["id", "renamed"], &a).unwrap();
        assert_eq!(al.candidates, vec![vec![1], vec![2, 3]]);
        assert!(al.may_be_any(1, &[3]));
        assert_eq!(al.position_of(3), None);
        assert_eq!(al.position_of(1), Some(0));
    }

    #[test]
    fn more_columns_than_the_catalog_ever_had_do_not_fit() {
        let a = attrs(&[("id", false)]);
        assert_eq!(align(&["id", "ghost"], &a), None);
    }
}
