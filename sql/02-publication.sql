-- The publication over exactly the mapped tables (default name "walhook").
CREATE PUBLICATION walhook FOR TABLE public.leads, public.users, public.opportunities, crm.students;
-- To change the set later:  ALTER PUBLICATION walhook SET TABLE ...;
