-- The ledger; `walhook setup` runs the same statements (src/ledger/schema.rs).
-- `walhook setup --print-sql` prints them for your config's schema.

CREATE SCHEMA IF NOT EXISTS "walhook";

CREATE TABLE IF NOT EXISTS "walhook".events (
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
);

CREATE INDEX IF NOT EXISTS events_name ON "walhook".events (name);

CREATE TABLE IF NOT EXISTS "walhook".progress (
    slot       text PRIMARY KEY,
    lsn        pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS "walhook".counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS "walhook".endpoints (
    id              text PRIMARY KEY,
    enabled         boolean NOT NULL DEFAULT true,
    disabled_at     timestamptz,
    disabled_reason text,
    failing_since   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS "walhook".deliveries (
    id               bigserial PRIMARY KEY,
    event_seq        bigint NOT NULL REFERENCES "walhook".events (seq) ON DELETE CASCADE,
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
) WITH (fillfactor = 50);

ALTER TABLE "walhook".deliveries
    ADD COLUMN IF NOT EXISTS commit_lsn pg_lsn NOT NULL DEFAULT '0/0',
    ADD COLUMN IF NOT EXISTS change_index integer NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS deliveries_due ON "walhook".deliveries (endpoint_id, next_attempt_at, id)
    WHERE status IN ('pending', 'retrying');

CREATE INDEX IF NOT EXISTS deliveries_record_order ON "walhook".deliveries
    (endpoint_id, record, commit_lsn, change_index, id)
    WHERE status IN ('pending', 'retrying');

DROP INDEX IF EXISTS "walhook".deliveries_record;

CREATE INDEX IF NOT EXISTS deliveries_status ON "walhook".deliveries (status, endpoint_id);

CREATE TABLE IF NOT EXISTS "walhook".attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES "walhook".deliveries (id) ON DELETE CASCADE,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      integer,
    error_kind       text,
    error            text,
    response_excerpt text,
    request_headers  jsonb NOT NULL
);

CREATE INDEX IF NOT EXISTS attempts_delivery ON "walhook".attempts (delivery_id);

CREATE TABLE IF NOT EXISTS "walhook".delivered (
    delivery_id      bigint PRIMARY KEY DEFAULT nextval('"walhook".deliveries_id_seq'),
    event_id         text NOT NULL,
    event_name       text NOT NULL,
    endpoint_id      text NOT NULL,
    record           text NOT NULL,
    commit_time      timestamptz NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      smallint NOT NULL,
    response_excerpt text
);

CREATE INDEX IF NOT EXISTS delivered_event ON "walhook".delivered (event_id);

CREATE INDEX IF NOT EXISTS delivered_started ON "walhook".delivered USING brin (started_at);

CREATE TABLE IF NOT EXISTS "walhook".objects (
    slug             text PRIMARY KEY,
    relid            oid NOT NULL,
    table_name       text NOT NULL,
    key_attnums      int2[] NOT NULL,
    excluded_attnums int2[] NOT NULL,
    excluded_names   text[] NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS "walhook".backfills (
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
);

CREATE TABLE IF NOT EXISTS "walhook".notices (
    kind       text NOT NULL,
    subject    text NOT NULL,
    level      text NOT NULL CHECK (level IN ('warning', 'error')),
    message    text NOT NULL,
    at_lsn     pg_lsn,
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, subject)
);
