-- What `walhook teardown --yes` does: Postgres stops retaining WAL for walhook.
SELECT pg_drop_replication_slot('walhook');
DROP PUBLICATION IF EXISTS walhook;
-- And with --drop-ledger (in the ledger database when [ledger] url is set):
-- DROP SCHEMA IF EXISTS walhook CASCADE;
