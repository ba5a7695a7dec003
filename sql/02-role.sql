-- The role's rights (run as a superuser after 01-ledger.sql). "walhook" the
-- role is a placeholder, as in 00-role.sql; "walhook" the schema is
-- [ledger] schema. `walhook check` names anything still missing, with the
-- GRANT that gives it.
--
-- The ledger belongs to the role: it reads and writes it, and a later
-- walhook (`walhook setup` run by the role) can upgrade it. Changing a
-- table's owner carries its sequences and indexes along.
ALTER SCHEMA walhook OWNER TO walhook;
DO $$
DECLARE t record;
BEGIN
  FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'walhook' AND c.relkind IN ('r', 'p')
  LOOP
    EXECUTE format('ALTER TABLE walhook.%I OWNER TO walhook', t.relname);
  END LOOP;
  -- Sequences of no table's column (a table's own follow it).
  FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'walhook' AND c.relkind = 'S'
             AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                               AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('ALTER SEQUENCE walhook.%I OWNER TO walhook', t.relname);
  END LOOP;
END $$;
-- (Or, to keep the ledger the DBA's, grants instead of ownership; ledger
-- upgrades then need the DBA:
--   GRANT USAGE ON SCHEMA walhook TO walhook;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO walhook;
--   GRANT USAGE ON ALL SEQUENCES IN SCHEMA walhook TO walhook;)
--
-- Read access to the mapped tables: backfills read them (capture does not).
-- Replace the table list with yours.
GRANT USAGE ON SCHEMA public TO walhook;
GRANT SELECT ON public.leads, public.users, public.opportunities TO walhook;
GRANT USAGE ON SCHEMA crm TO walhook;
GRANT SELECT ON crm.students TO walhook;
-- Nothing else: the publication (03) and replica identity (04) are made by
-- the tables' owner, and the role may make its slot itself (REPLICATION is
-- enough for pg_create_logical_replication_slot): 05-slot.sql, or
-- `walhook setup` run as the role.
