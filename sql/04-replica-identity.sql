-- Complete "before" rows and unchanged TOAST values need REPLICA IDENTITY FULL.
-- (Skip this with replica_identity = "default"; see README "Limits".)
ALTER TABLE public.leads REPLICA IDENTITY FULL;
ALTER TABLE public.users REPLICA IDENTITY FULL;
ALTER TABLE public.opportunities REPLICA IDENTITY FULL;
ALTER TABLE crm.students REPLICA IDENTITY FULL;
