//! The ledger's DDL. Every statement is idempotent (`IF NOT EXISTS`), so
//! `walhook setup` can run it on every start-up of a new version; the same
//! text, for the default schema, is in `sql/01-ledger.sql` for a DBA.

use tokio_postgres::Client;

use super::{Ledger, LedgerError};
use crate::pg::quote_ident;

/// The tables [`ddl`] creates, in order.
pub const TABLES: [&str; 10] = [
    "events",
    "progress",
    "counters",
    "endpoints",
    "deliveries",
    "attempts",
    "delivered",
    "objects",
    "backfills",
    "notices",
];

/// The table `walhook setup` creates last: when it exists, the schema is
/// up to date with this version.
pub const NEWEST_TABLE: &str = TABLES[TABLES.len() - 1];

impl Ledger {
    /// The ledger's tables that do not exist (all of them before `walhook setup`).
    pub async fn missing_tables(&self, client: &Client) -> Result<Vec<String>, LedgerError> {
        let row = client
            .query_one(
                "SELECT array_agg(t) FILTER (WHERE to_regclass(format('%I.%I', $1::text, t)) IS NULL)
                 FROM unnest($2::text[]) AS t",
                &[&self.schema(), &TABLES.as_slice()],
            )
            .await?;
        Ok(row.get::<_, Option<Vec<String>>>(0).unwrap_or_default())
    }
}

/// The ledger's statements, `{schema}` standing for the quoted schema.
const DDL: &[&str] = &[
    r#"CREATE SCHEMA IF NOT EXISTS {schema}"#,
    // One row per captured change; `event_id` is deterministic, so a replay
    // after a crash conflicts instead of inserting twice.
    r#"CREATE TABLE IF NOT EXISTS {schema}.events (
    seq          bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    name         text NOT NULL,
    slug         text NOT NULL,
    record_key   text NOT NULL,
    commit_lsn   pg_lsn NOT NULL,
    change_index integer NOT NULL,
    commit_time  timestamptz NOT NULL,
    body         text NOT NULL,
    captured_at  timestamptz NOT NULL DEFAULT now()
)"#,
    r#"CREATE INDEX IF NOT EXISTS events_name ON {schema}.events (name)"#,
    // Replication position whose events are all in the ledger.
    r#"CREATE TABLE IF NOT EXISTS {schema}.progress (
    slot       text PRIMARY KEY,
    lsn        pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)"#,
    r#"CREATE TABLE IF NOT EXISTS {schema}.counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
)"#,
    // Endpoint state that outlives a process (manual or automatic disable).
    r#"CREATE TABLE IF NOT EXISTS {schema}.endpoints (
    id              text PRIMARY KEY,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_at     timestamptz,
    disabled_reason text,
    failing_since   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
)"#,
    // The queue: one row per (event, endpoint). Half of each page is
    // left free so that leasing a delivery (which changes no indexed
    // column) is a HOT update: no new entries in the five indexes. The
    // dispatch benchmark delivers about 30% more per second with it.
    r#"CREATE TABLE IF NOT EXISTS {schema}.deliveries (
    id               bigserial PRIMARY KEY,
    event_seq        bigint NOT NULL REFERENCES {schema}.events (seq) ON DELETE CASCADE,
    endpoint_id      text NOT NULL,
    record           text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'retrying', 'succeeded', 'disabled')),
    attempts         integer NOT NULL DEFAULT 0,
    cycle_attempts   integer NOT NULL DEFAULT 0,
    cycle_started_at timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_until      timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    commit_lsn       pg_lsn NOT NULL DEFAULT '0/0',
    change_index     integer NOT NULL DEFAULT 0,
    UNIQUE (event_seq, endpoint_id)
) WITH (fillfactor = 50)"#,
    // Ledgers made before deliveries knew their WAL position.
    r#"ALTER TABLE {schema}.deliveries
    ADD COLUMN IF NOT EXISTS commit_lsn pg_lsn NOT NULL DEFAULT '0/0',
    ADD COLUMN IF NOT EXISTS change_index integer NOT NULL DEFAULT 0"#,
    r#"CREATE INDEX IF NOT EXISTS deliveries_due ON {schema}.deliveries (endpoint_id, next_attempt_at, id)
    WHERE status IN ('pending', 'retrying')"#,
    // Per-record order is WAL order: a record's open deliveries for an
    // endpoint, earliest first (id breaks ties of rows from older ledgers).
    r#"CREATE INDEX IF NOT EXISTS deliveries_record_order ON {schema}.deliveries
    (endpoint_id, record, commit_lsn, change_index, id)
    WHERE status IN ('pending', 'retrying')"#,
    r#"DROP INDEX IF EXISTS {schema}.deliveries_record"#,
    r#"CREATE INDEX IF NOT EXISTS deliveries_status ON {schema}.deliveries (status, endpoint_id)"#,
    r#"CREATE TABLE IF NOT EXISTS {schema}.attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES {schema}.deliveries (id) ON DELETE CASCADE,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      integer,
    error_kind       text,
    error            text,
    response_excerpt text,
    request_headers  jsonb NOT NULL
)"#,
    r#"CREATE INDEX IF NOT EXISTS attempts_delivery ON {schema}.attempts (delivery_id)"#,
    // One narrow row per first attempt that succeeded straight from the
    // stream (no deliveries row); its id comes from the deliveries' sequence,
    // so every delivery has one id space.
    r#"CREATE TABLE IF NOT EXISTS {schema}.delivered (
    delivery_id      bigint PRIMARY KEY DEFAULT nextval('{schema}.deliveries_id_seq'),
    event_id         text NOT NULL,
    event_name       text NOT NULL,
    endpoint_id      text NOT NULL,
    record           text NOT NULL,
    commit_time      timestamptz NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      smallint NOT NULL,
    response_excerpt text
)"#,
    r#"CREATE INDEX IF NOT EXISTS delivered_event ON {schema}.delivered (event_id)"#,
    // Retention prunes by time; a BRIN index costs almost nothing to keep.
    r#"CREATE INDEX IF NOT EXISTS delivered_started ON {schema}.delivered USING brin (started_at)"#,
    // The identity of each mapped table (relation oid, key and excluded
    // attribute numbers), so a rename never unmaps a table or un-excludes a
    // column, even across restarts.
    r#"CREATE TABLE IF NOT EXISTS {schema}.objects (
    slug             text PRIMARY KEY,
    relid            oid NOT NULL,
    table_name       text NOT NULL,
    key_attnums      int2[] NOT NULL,
    excluded_attnums int2[] NOT NULL,
    excluded_names   text[] NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
)"#,
    // Backfills asked for by `walhook backfill`, run by the capturing
    // process chunk by chunk; `last_key` is the key of the last row of the
    // last chunk whose events are resolved, so a restart resumes after it.
    r#"CREATE TABLE IF NOT EXISTS {schema}.backfills (
    id           bigserial PRIMARY KEY,
    slug         text NOT NULL,
    endpoint_id  text,
    where_sql    text,
    as_create    boolean NOT NULL DEFAULT false,
    rate         double precision,
    state        text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'done', 'cancelled', 'failed')),
    last_key     text[],
    rows_sent    bigint NOT NULL DEFAULT 0,
    error        text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
)"#,
    // What capture tells operators beyond its log (a blocked capture,
    // schema drift it follows), for `walhook status` in other processes.
    r#"CREATE TABLE IF NOT EXISTS {schema}.notices (
    kind       text NOT NULL,
    subject    text NOT NULL,
    level      text NOT NULL CHECK (level IN ('warning', 'error')),
    message    text NOT NULL,
    at_lsn     pg_lsn,
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, subject)
)"#,
];

/// The DDL for a ledger in `schema`.
pub fn ddl(schema: &str) -> Vec<String> {
    let s = quote_ident(schema);
    DDL.iter().map(|t| t.replace("{schema}", &s)).collect()
}

/// The DDL as one script (the text of `sql/01-ledger.sql` for `walhook`).
pub fn ddl_script(schema: &str) -> String {
    let mut out = String::from(
        "-- The ledger; `walhook setup` runs the same statements (src/ledger/schema.rs).\n\
         -- `walhook setup --print-sql` prints them for your config's schema.\n",
    );
    for stmt in ddl(schema) {
        out.push('\n');
        out.push_str(&stmt);
        out.push_str(";\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_file_matches_the_code() {
        let file = include_str!("../../sql/01-ledger.sql");
        if file != ddl_script("walhook") {
            // Regenerate with: WALHOOK_WRITE_SQL=1 cargo test --lib sql_file_matches
            if std::env::var_os("WALHOOK_WRITE_SQL").is_some() {
                std::fs::write(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/sql/01-ledger.sql"),
                    ddl_script("walhook"),
                )
                .unwrap();
            } else {
                panic!("sql/01-ledger.sql is out of date with src/ledger/schema.rs");
            }
        }
    }

    #[test]
    fn tables_are_the_ones_the_ddl_creates() {
        let created: Vec<String> = ddl("wh")
            .iter()
            .filter_map(|s| s.strip_prefix("CREATE TABLE IF NOT EXISTS \"wh\"."))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        assert_eq!(created, TABLES);
    }

    #[test]
    fn ddl_is_idempotent_and_schema_qualified() {
        for stmt in ddl("wh") {
            assert!(
                stmt.contains("IF NOT EXISTS") || stmt.contains("IF EXISTS"),
                "{stmt}"
            );
            assert!(stmt.contains("\"wh\""), "{stmt}");
        }
    }
}
