-- The role walhook logs in as: LOGIN REPLICATION, nothing more (run as a
-- superuser). "walhook" is a placeholder: use the user of your source.url
-- everywhere it appears in 00-role.sql and 02-role.sql, and your database name.
-- On managed services the attribute comes another way (README "Managed
-- services"), e.g. on Amazon RDS / Aurora: GRANT rds_replication TO walhook;
CREATE ROLE walhook WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT CONNECT ON DATABASE app TO walhook;
-- With the ledger in a database of its own ([ledger] url), also:
-- GRANT CONNECT ON DATABASE walhook_ledger TO walhook;
-- Then, as a superuser (or the tables' owner): 01-ledger.sql, 02-role.sql,
-- 03-publication.sql, 04-replica-identity.sql, 05-slot.sql. Or everything at
-- once for your config: walhook setup --print-sql [--role NAME].
