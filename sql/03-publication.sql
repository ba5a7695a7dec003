-- The publication over exactly the mapped tables (default name "walhook"), made by
-- the tables' owner (CREATE PUBLICATION ... FOR TABLE needs ownership of each table).
CREATE PUBLICATION walhook FOR TABLE public.leads, public.users, public.opportunities, crm.students;
-- To change the set later:  ALTER PUBLICATION walhook SET TABLE ...;
