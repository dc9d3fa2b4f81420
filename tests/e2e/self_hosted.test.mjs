// The gateway as self-hosted production runs it: `scripts/serve gateway` (workerd, not wrangler
// dev), Durable Objects on disk. (scripts/test also runs the broadcast, presence and Postgres
// Changes suites against this mode.) Here: restarting the gateway process. Its WebSockets end with
// it; supabase-js reconnects and rejoins by itself, and from the rejoin on every change arrives
// once; the replicator keeps what the gateway could not take meanwhile, and the hubs' state on
// disk (delivered positions, counts) survives.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { done, Inbox, supabase, until } from './clients.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-self-hosted', gateway: 'workerd' });
  await stack.pg.createRoles('anon');
  await stack.pg.sql(`create table public.served (id int primary key);
    grant select on public.served to anon;
    alter publication supabase_realtime add table public.served`);
});
after(() => stack?.stop());

async function joinsCounted() {
  const text = await (await fetch(`${stack.url}/metrics`, { headers: { authorization: `Bearer ${stack.metricsKey}` } })).text();
  return Number(text.match(/^sluice_joins_total\{tenant="127"\} (\d+)$/m)?.[1] ?? NaN);
}

test('the gateway process restarted: clients rejoin by themselves, every later change arrives once, state on disk survives', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const changes = new Inbox('served');
  const system = new Inbox('served system');
  const channel = client.channel('served');
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'served' }, changes.push);
  channel.on('system', {}, system.push);
  try {
    channel.subscribe();
    assert.equal((await until(system, (m) => m.extension === 'postgres_changes')).message, 'Subscribed to PostgreSQL');
    await stack.pg.sql('insert into public.served values (1)');
    assert.equal((await changes.next(15_000)).new.id, 1);
    const joinsBefore = await joinsCounted();
    assert.ok(joinsBefore >= 1);

    await stack.gateway.restart();
    // supabase-js notices the closed socket, reconnects and joins again; SUBSCRIBED again means
    // the changes committed from now on reach it.
    assert.equal((await until(system, (m) => m.extension === 'postgres_changes', 30_000)).message, 'Subscribed to PostgreSQL');
    await stack.pg.sql('insert into public.served select generate_series(2, 51)');
    const ids = [];
    for (let i = 0; i < 50; i++) ids.push((await changes.next(15_000)).new.id);
    assert.deepEqual(ids, Array.from({ length: 50 }, (_, i) => i + 2));
    await assert.rejects(changes.next(500), /nothing arrived/, 'no change arrives twice');
    assert.ok(await joinsCounted() > joinsBefore, 'the hub counts kept on disk survived the restart');
  } finally {
    await done(client);
  }
});
