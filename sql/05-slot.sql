-- The logical replication slot (default name "walhook"), pgoutput plugin.
-- The role may create it itself (REPLICATION is enough): `walhook setup`.
SELECT pg_create_logical_replication_slot('walhook', 'pgoutput');
-- With [source] failover = true (PostgreSQL 17+; README "Failover"): a slot
-- that standbys with sync_replication_slots = on keep in step. Arguments:
-- name, plugin, temporary, two-phase, failover.
-- SELECT pg_create_logical_replication_slot('walhook', 'pgoutput', false, false, true);
