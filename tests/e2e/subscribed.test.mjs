// SUBSCRIBED means delivered: a row inserted the moment supabase-js reports SUBSCRIBED reaches
// the channel, every time (upstream's server can lose it: realtime-js#525). Both protocol
// versions, with and without a filter, and under RLS.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { done, Inbox, subscribe, supabase, until, VSNS } from './clients.mjs';
import { tokenFor } from '../stack/keys.mjs';
import { startStack } from '../stack/stack.mjs';

const ROUNDS = 20;

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-subscribed' });
  await stack.pg.createRoles('anon', 'authenticated');
  await stack.pg.sql(`
    create table public.races (id bigint primary key, room text not null, owner text not null);
    create table public.owned (id bigint primary key, room text not null, owner text not null);
    alter table public.owned enable row level security;
    create policy own on public.owned for select
      using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
    grant select on public.races, public.owned to anon, authenticated;
    alter publication supabase_realtime add table public.races, public.owned;
  `);
});
after(() => stack?.stop());

let nextId = 1;
const cases = [
  { name: 'no filter', table: 'races', token: () => stack.keys.anon },
  { name: 'a filter', table: 'races', filter: (room) => `room=eq.${room}`, token: () => stack.keys.anon },
  { name: 'RLS', table: 'owned', token: () => tokenFor('authenticated', { sub: 'alice' }) },
];

for (const vsn of VSNS) {
  for (const { name, table, filter, token } of cases) {
    test(`vsn ${vsn}, ${name}: ${ROUNDS} inserts made at SUBSCRIBED are all delivered`, async () => {
      const client = supabase(stack.url, token(), vsn);
      try {
        for (let round = 0; round < ROUNDS; round++) {
          const room = `r-${vsn}-${name}-${round}`;
          const inbox = new Inbox(`${name} round ${round}`);
          const binding = { event: 'INSERT', schema: 'public', table, ...(filter && { filter: filter(room) }) };
          const channel = client.channel(`race-${room}`).on('postgres_changes', binding, inbox.push);
          await subscribe(channel);
          // The insert goes out the moment SUBSCRIBED is reported, before anything else.
          const id = nextId++;
          await stack.pg.sql(`insert into ${table} values ($1, $2, $3)`, [id, room, 'alice']);
          const change = await until(inbox, (c) => c.new.id === id, 5_000).catch((e) => {
            throw new Error(`round ${round}: the insert made at SUBSCRIBED was lost (${e.message})`);
          });
          assert.equal(change.new.room, room);
          await client.removeChannel(channel);
        }
      } finally {
        await done(client);
      }
    });
  }
}

test('a replicator that does not answer holds a join with bindings only as long as the bound, and no other join', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const order = [];
  stack.replicator.proc.child.kill('SIGSTOP'); // its socket stays open: requests hang, not fail
  try {
    const pg = client.channel('bound-pg').on('postgres_changes', { event: '*', schema: 'public', table: 'races' }, () => {});
    const system = new Inbox('bound-pg system');
    pg.on('system', {}, system.push);
    const held = subscribe(pg).then(() => order.push('with bindings'));
    await subscribe(client.channel('bound-plain')).then(() => order.push('without bindings'));
    await held;
    assert.deepEqual(order, ['without bindings', 'with bindings']);
    const error = await until(system, (m) => m.extension === 'postgres_changes');
    assert.equal(error.status, 'error');
    assert.equal(error.message, 'Realtime was unable to connect to the project database');
  } finally {
    stack.replicator.proc.child.kill('SIGCONT');
    await done(client);
  }
});
