-- A least-privilege role for walhook (run as a superuser or the database owner).
-- Replace the password, the database name and the table list with yours.
CREATE ROLE walhook WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT CONNECT, CREATE ON DATABASE app TO walhook;      -- CREATE: the publication and the ledger schema
-- With the ledger in a database of its own ([ledger] url), the ledger schema
-- goes there instead (no REPLICATION needed for it):
-- GRANT CONNECT, CREATE ON DATABASE walhook_ledger TO walhook;
GRANT USAGE ON SCHEMA public TO walhook;
GRANT SELECT ON public.leads, public.users, public.opportunities TO walhook;
GRANT USAGE ON SCHEMA crm TO walhook;
GRANT SELECT ON crm.students TO walhook;
-- If a DBA runs 02-publication.sql and 03-replica-identity.sql (below) the role
-- needs no ownership of the tables. Otherwise `walhook setup` must run as the
-- tables' owner (CREATE PUBLICATION ... FOR TABLE and ALTER TABLE need it).
