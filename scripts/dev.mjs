// The local stack for development (see scripts/dev): starts it, prints how to connect, and stops
// everything on Ctrl-C or SIGTERM.
import { startStack } from '../tests/stack/stack.mjs';

const log = (line) => console.error(`    ${line}`);
const port = Number(process.env.PORT ?? 8787);
console.error('==> starting the local stack');
const stack = await startStack({ name: 'dev', gateway: 'wrangler', gatewayPort: port, log });
// Supabase's roles (tokens carry them; Postgres Changes sees rows as them) and a table to try.
await stack.pg.sql(`
  do $$ begin
    create role anon nologin; create role authenticated nologin; create role service_role nologin bypassrls;
  exception when duplicate_object then null; end $$;
  create table if not exists public.messages (id bigserial primary key, body text, created_at timestamptz default now());
  grant select on public.messages to anon, authenticated, service_role;
  grant usage on schema realtime to anon, authenticated, service_role;
  grant select, insert, update on realtime.messages to anon, authenticated, service_role;
  alter publication supabase_realtime add table public.messages;`).catch((e) => log(`setting up the demo table: ${e.message}`));

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  console.error('\n==> stopping the local stack');
  await stack.stop();
  console.error('==> stopped');
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

console.log(`
sluice is running.

  Realtime URL      ${stack.url}   (WebSocket: ${stack.url.replace('http', 'ws')}/realtime/v1/websocket)
  anon key          ${stack.keys.anon}
  service-role key  ${stack.keys.serviceRole}
  JWT secret        ${stack.jwtSecret}
  Postgres          ${stack.pg.url}
  replicator        ${stack.replicator.url}/healthz
  metrics           curl -H 'Authorization: Bearer ${stack.metricsKey}' ${stack.url}/metrics

Connect with supabase-js:

  import { createClient } from '@supabase/supabase-js'
  const supabase = createClient('${stack.url}', '<anon key above>')
  const room = supabase.channel('room1', { config: { broadcast: { self: true } } })
  room.on('broadcast', { event: '*' }, (msg) => console.log('got', msg))
  room.subscribe((status) => status === 'SUBSCRIBED' && room.send({ type: 'broadcast', event: 'hello', payload: { at: Date.now() } }))

Postgres Changes (the table public.messages is in the publication):

  supabase.channel('db').on('postgres_changes', { event: '*', schema: 'public', table: 'messages' }, console.log).subscribe()
  psql '${stack.pg.url}' -c "insert into messages (body) values ('hi')"

Press Ctrl-C to stop.`);
