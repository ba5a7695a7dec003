//! The mapped table as the catalog describes it now, in the shape of the
//! replication stream's Relation and Type messages, so a backfill maps its
//! rows exactly as capture maps the stream's.

use tokio_postgres::Client;

use super::BackfillError;
use crate::pgoutput::{Column, Relation};

/// The relation as a Relation message would describe it now, and the types
/// a Type message would name (user-defined ones).
pub(super) async fn catalog_relation(
    db: &Client,
    relid: u32,
) -> Result<(Relation, Vec<crate::pgoutput::TypeInfo>), BackfillError> {
    let t = db
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&relid],
        )
        .await?
        .ok_or_else(|| BackfillError::Invalid(format!("relation {relid} is gone")))?;
    let rows = db
        .query(
            "SELECT a.attname::text, a.atttypid, tn.nspname::text, ty.typname::text
             FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
             JOIN pg_namespace tn ON tn.oid = ty.typnamespace
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&relid],
        )
        .await?;
    let columns = rows
        .iter()
        .map(|r| Column {
            flags: 1,
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: -1,
        })
        .collect();
    let types = rows
        .iter()
        .filter(|r| r.get::<_, u32>(1) >= 16384)
        .map(|r| crate::pgoutput::TypeInfo {
            id: r.get(1),
            namespace: r.get(2),
            name: r.get(3),
        })
        .collect();
    Ok((
        Relation {
            id: relid,
            namespace: t.get(0),
            name: t.get(1),
            replica_identity: b'f',
            columns,
        },
        types,
    ))
}

/// Each column's type as SQL (`format_type`), for casting key values.
pub(super) async fn relation_type_names(
    db: &Client,
    relation: &Relation,
) -> Result<Vec<String>, BackfillError> {
    let rows = db
        .query(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&relation.id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
