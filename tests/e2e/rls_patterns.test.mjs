// The RLS patterns apps write, end to end with supabase-js: per-user rows (`user_id =
// auth.uid()`, each user subscribed, each sees only their own), and a chat room whose audience is
// a membership table: a user added to the room starts receiving its messages, one removed stops.
// "Does not receive" is shown by order: a later message the user may see arrives first.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { tokenFor } from '../stack/keys.mjs';
import { startStack } from '../stack/stack.mjs';
import { done, Inbox, pgChannel, supabase } from './clients.mjs';

const ALICE = 'a1a1a1a1-0000-4000-8000-000000000001';
const BOB = 'b0b0b0b0-0000-4000-8000-000000000002';
const CAROL = 'c0c0c0c0-0000-4000-8000-000000000003';

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-rls-patterns' });
  await stack.pg.createRoles('anon', 'authenticated');
  await stack.pg.sql(`
    create schema auth;
    create function auth.uid() returns uuid language sql stable as $$
      select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
    grant usage on schema auth to authenticated;
    create table public.notes (id bigint primary key, user_id uuid not null, body text);
    alter table public.notes enable row level security;
    create policy own on public.notes for select to authenticated using (user_id = auth.uid());
    create table public.room_members (room int not null, user_id uuid not null, primary key (room, user_id));
    create table public.chat (id bigint primary key, room int not null, body text);
    alter table public.chat enable row level security;
    create policy members_read on public.chat for select to authenticated
      using (exists (select 1 from public.room_members m where m.room = chat.room and m.user_id = (select auth.uid())));
    grant select on public.notes, public.room_members, public.chat to authenticated;
    alter publication supabase_realtime add table public.notes, public.chat;`);
});
after(() => stack?.stop());

/** A signed-in user subscribed to INSERTs on `tables` (a name or a list), in one channel. */
async function user(sub, tables, vsn) {
  const client = supabase(stack.url, tokenFor('authenticated', { sub }), vsn);
  const names = [tables].flat();
  const inbox = new Inbox(`${names.join(', ')} of ${sub}`);
  await pgChannel(client, `${names.join('-')}-${sub}`, names.map((table) => ({ binding: { event: 'INSERT', schema: 'public', table }, inbox })));
  return { client, inbox, next: async () => (await inbox.next(15_000)).new };
}

test('per-user rows: each subscribed user receives their own rows and no one else\'s', async () => {
  const users = [await user(ALICE, 'notes', '1.0.0'), await user(BOB, 'notes', '2.0.0'), await user(CAROL, 'notes', '2.0.0')];
  try {
    const owners = [ALICE, BOB, CAROL, BOB, ALICE, CAROL, CAROL, ALICE, BOB];
    await stack.pg.sql(`insert into public.notes select i, (array[${owners.map((o) => `'${o}'::uuid`).join(',')}])[i], 'n' || i
      from generate_series(1, ${owners.length}) i`);
    for (const [n, sub] of [ALICE, BOB, CAROL].entries()) {
      const expected = owners.flatMap((o, i) => (o === sub ? [i + 1] : []));
      const got = [];
      for (let k = 0; k < expected.length; k++) {
        const row = await users[n].next();
        assert.equal(row.user_id, sub);
        got.push(row.id);
      }
      assert.deepEqual(got, expected);
    }
    // Nothing else is on its way: a last row for each arrives next.
    await stack.pg.sql(`insert into public.notes values (100, '${ALICE}', 'last'), (101, '${BOB}', 'last'), (102, '${CAROL}', 'last')`);
    assert.deepEqual(await Promise.all(users.map(async (u) => (await u.next()).id)), [100, 101, 102]);
  } finally {
    await done(...users.map((u) => u.client));
  }
});

test('chat room: membership decides; added members start receiving, removed ones stop', async () => {
  await stack.pg.sql(`insert into public.room_members values (1, '${ALICE}'), (2, '${BOB}'), (3, '${ALICE}')`);
  const alice = await user(ALICE, 'chat', '2.0.0');
  const bob = await user(BOB, 'chat', '1.0.0');
  let id = 0;
  const say = async (room) => {
    await stack.pg.sql('insert into public.chat values ($1, $2, $3)', [++id, room, `in ${room}`]);
    return id;
  };
  try {
    const first = await say(1);
    const bobsOwn = await say(2);
    assert.equal((await alice.next()).id, first);
    assert.equal((await bob.next()).id, bobsOwn, 'bob is not in room 1: his room-2 message comes first');

    await stack.pg.sql(`insert into public.room_members values (1, '${BOB}')`);
    const afterJoin = await say(1);
    assert.equal((await bob.next()).id, afterJoin, 'bob, added to room 1, receives it');
    assert.equal((await alice.next()).id, afterJoin);

    await stack.pg.sql(`delete from public.room_members where room = 1 and user_id = '${ALICE}'`);
    const afterLeave = await say(1);
    const alicesOwn = await say(3);
    assert.equal((await bob.next()).id, afterLeave);
    assert.equal((await alice.next()).id, alicesOwn, 'alice, removed from room 1, gets her room-3 message next');
  } finally {
    await done(alice.client, bob.client);
  }
});

test('a row only its owner may see costs about one check, and a message about one per room member, however many users are subscribed', async () => {
  const USERS = 40;
  const ids = (await stack.pg.sql(`select gen_random_uuid()::text as id from generate_series(1, ${USERS})`)).map((r) => r.id);
  const users = [];
  for (const sub of ids) users.push(await user(sub, ['notes', 'chat'], '2.0.0'));
  const checks = async () => Number((await (await fetch(`${stack.replicator.url}/metrics`)).text()).match(/^sluice_rls_queries_total (\d+)$/m)[1]);
  try {
    // The first rows also compute each user's auth.uid() once; count from the second round.
    let id = 1000;
    for (const round of [0, 1]) {
      const before = await checks();
      const owners = [ids[round], ids[round + 1]];
      await stack.pg.sql(`insert into public.notes values (${++id}, '${owners[0]}', 'x'), (${++id}, '${owners[1]}', 'y')`);
      assert.equal((await users[round].next()).user_id, owners[0]);
      assert.equal((await users[round + 1].next()).user_id, owners[1]);
      if (round === 1) {
        const spent = (await checks()) - before;
        assert.ok(spent <= 2 * 2, `${spent} visibility queries for 2 rows with ${USERS} subscribers (one per owner expected, not one per subscriber)`);
      }
    }
    // Room 7 has two members among the subscribers: its messages reach them, and cost a read of
    // the membership table and a check per member, not one per subscriber.
    await stack.pg.sql(`insert into public.room_members values (7, '${ids[2]}'), (7, '${ids[3]}')`);
    for (const round of [0, 1]) {
      const before = await checks();
      await stack.pg.sql(`insert into public.chat values (${++id}, 7, 'hello')`);
      assert.deepEqual([(await users[2].next()).id, (await users[3].next()).id], [id, id]);
      if (round === 1) {
        const spent = (await checks()) - before;
        assert.ok(spent <= 1 + 2, `${spent} queries for a message to a room of 2 with ${USERS} subscribers`);
      }
    }
  } finally {
    await done(...users.map((u) => u.client));
  }
});
