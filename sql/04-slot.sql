-- The logical replication slot (default name "walhook"), pgoutput plugin.
SELECT pg_create_logical_replication_slot('walhook', 'pgoutput');
