-- Optional: stream hp_worker_status changes through Supabase Realtime, for
-- live dashboards. Realtime applies the table's RLS: only roles that may read
-- a row (service_role, authenticated) receive its changes.
-- Does nothing where the supabase_realtime publication does not exist.
do $$
begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
     and not exists (
       select 1 from pg_publication_tables
       where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'hp_worker_status'
     )
  then
    alter publication supabase_realtime add table public.hp_worker_status;
  end if;
end
$$;
