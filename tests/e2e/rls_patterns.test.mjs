// The RLS patterns apps write, end to end with supabase-js: per-user rows (`user_id =
// auth.uid()`, each user subscribed, each sees only their own), and a chat room whose audience is
// a membership table: a user added to the room starts receiving its messages, one removed stops.
// Also the forms most projects write (a cast column, SECURITY DEFINER helpers, an OR with a
// role, membership two levels deep). "Does not receive" is shown by order: a later message the user may see arrives first.
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
  stack = await startStack({ name: 'e2e-rls-patterns', log: process.env.SLUICE_TEST_LOG ? console.error : undefined });
  await stack.pg.createRoles('anon', 'authenticated', 'service_role');
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
    alter publication supabase_realtime add table public.notes, public.chat;

    -- The forms of the policies most projects write: a cast column against a claim's text, a
    -- SECURITY DEFINER helper over a membership table that its own policy also uses, and an
    -- owner OR a role read through a helper.
    create function auth.jwt() returns jsonb language sql stable as $$
      select nullif(current_setting('request.jwt.claims', true), '')::jsonb $$;
    create table public.diary (id bigint primary key, user_id uuid not null, body text);
    alter table public.diary enable row level security;
    create policy own_by_text on public.diary for select to authenticated using (user_id::text = auth.jwt() ->> 'sub');
    create table public.room_participants (room_id bigint not null, user_id uuid not null, primary key (room_id, user_id));
    create table public.messages (id bigint primary key, room_id bigint not null, body text);
    create function public.is_room_participant(_room_id bigint) returns boolean
      language sql security definer stable set search_path = public as $$
        select exists (select 1 from room_participants where room_id = _room_id and user_id = auth.uid());
      $$;
    alter table public.room_participants enable row level security;
    create policy see_my_rooms on public.room_participants for select to authenticated using (is_room_participant(room_id));
    alter table public.messages enable row level security;
    create policy participants_read on public.messages for select to authenticated using (is_room_participant(room_id));
    create table public.user_roles (user_id uuid not null, role text not null);
    create function public.has_role(uid uuid, wanted text) returns boolean language sql security definer as $$
      select exists (select 1 from public.user_roles ur where ur.user_id = $1 and ur.role = $2) $$;
    create table public.tasks (id bigint primary key, user_id uuid not null, title text);
    alter table public.tasks enable row level security;
    create policy owner_or_admin on public.tasks for select to authenticated using (auth.uid() = user_id or has_role(auth.uid(), 'admin'));
    -- Two levels: a channel's members are profiles, and a profile belongs to a user.
    create table public.profiles (id bigint primary key, auth_id uuid not null);
    create table public.channel_members (channel_id bigint not null, profile_id bigint not null references public.profiles);
    create table public.posts (id bigint primary key, channel_id bigint not null, body text);
    alter table public.posts enable row level security;
    create policy channel_members_read on public.posts for select to authenticated using (exists (
      select 1 from public.channel_members m join public.profiles u on u.id = m.profile_id
      where m.channel_id = posts.channel_id and u.auth_id = auth.uid()));
    grant select on public.profiles, public.channel_members, public.posts to authenticated, service_role;
    grant usage on schema auth to authenticated;
    grant select on public.diary, public.room_participants, public.messages, public.tasks to authenticated;
    alter publication supabase_realtime add table public.diary, public.messages, public.tasks, public.posts;
    -- As on Supabase: service_role bypasses RLS and reads the tables (sluice reads memberships as it).
    alter role service_role bypassrls;
    grant select on public.room_participants, public.user_roles to service_role;`);
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

/** The replicator's count of (change, subscriber) pairs Postgres checked for every subscriber. */
async function unindexedPairs() {
  const metrics = await (await fetch(`${stack.replicator.url}/metrics`)).text();
  return Number(metrics.match(/^sluice_rls_pairs_total\{path="unindexed"\} (\d+)$/m)[1]);
}

test('a cast column against a claim\'s text: each user receives their own rows, on the indexed path', async () => {
  const before = await unindexedPairs();
  const users = [await user(ALICE, 'diary', '1.0.0'), await user(BOB, 'diary', '2.0.0')];
  try {
    await stack.pg.sql(`insert into public.diary values (1, '${BOB}', 'b'), (2, '${ALICE}', 'a'), (3, '${BOB}', 'b2')`);
    assert.deepEqual([(await users[0].next()).id], [2]);
    assert.deepEqual([(await users[1].next()).id, (await users[1].next()).id], [1, 3]);
    await stack.pg.sql(`insert into public.diary values (4, '${ALICE}', 'last')`);
    assert.equal((await users[0].next()).id, 4, 'alice got none of bob\'s rows');
    assert.equal(await unindexedPairs(), before, 'no pair was checked for every subscriber');
  } finally {
    await done(...users.map((u) => u.client));
  }
});

test('a SECURITY DEFINER helper decides a chat: participants receive, one added starts within a batch', async () => {
  await stack.pg.sql(`insert into public.room_participants values (1, '${ALICE}'), (2, '${BOB}'), (3, '${CAROL}')`);
  const before = await unindexedPairs();
  const alice = await user(ALICE, 'messages', '2.0.0');
  const bob = await user(BOB, 'messages', '1.0.0');
  const carol = await user(CAROL, 'messages', '2.0.0');
  let id = 0;
  const say = async (room) => {
    await stack.pg.sql('insert into public.messages values ($1, $2, $3)', [++id, room, `in ${room}`]);
    return id;
  };
  try {
    const inOne = await say(1);
    const inTwo = await say(2);
    assert.equal((await alice.next()).id, inOne);
    assert.equal((await bob.next()).id, inTwo, 'bob is not in room 1: his room-2 message comes first');
    // Bob joins room 1: the next message there reaches him (carol, in neither, gets only room 3's).
    await stack.pg.sql(`insert into public.room_participants values (1, '${BOB}')`);
    const afterJoin = await say(1);
    const inThree = await say(3);
    assert.equal((await bob.next()).id, afterJoin);
    assert.equal((await alice.next()).id, afterJoin);
    assert.equal((await carol.next()).id, inThree, 'carol received nothing of rooms 1 and 2');
    assert.equal(await unindexedPairs(), before, 'the helper was put in place: no pair was checked for every subscriber');
  } finally {
    await done(alice.client, bob.client, carol.client);
  }
});

test('owner OR has_role(auth.uid(), \'admin\'): owners and admins receive; one made admin starts within a batch', async () => {
  const before = await unindexedPairs();
  const alice = await user(ALICE, 'tasks', '2.0.0');
  const bob = await user(BOB, 'tasks', '1.0.0');
  try {
    await stack.pg.sql(`insert into public.tasks values (1, '${ALICE}', 'a'), (2, '${CAROL}', 'c'), (3, '${BOB}', 'b')`);
    assert.equal((await alice.next()).id, 1);
    assert.equal((await bob.next()).id, 3, 'bob is no admin: carol\'s task is not his');
    await stack.pg.sql(`insert into public.user_roles values ('${BOB}', 'admin'), ('${ALICE}', 'editor')`);
    await stack.pg.sql(`insert into public.tasks values (4, '${CAROL}', 'c2'), (5, '${ALICE}', 'a2')`);
    assert.equal((await bob.next()).id, 4, 'bob, made admin, receives carol\'s task');
    assert.equal((await bob.next()).id, 5);
    assert.equal((await alice.next()).id, 5, 'alice (an editor) receives only her own');
    assert.equal(await unindexedPairs(), before, 'no pair was checked for every subscriber');
  } finally {
    await done(alice.client, bob.client);
  }
});

test('membership two levels deep, through a join: members of the channel receive; a profile added starts within a batch', async () => {
  await stack.pg.sql(`insert into public.profiles values (10, '${ALICE}'), (20, '${BOB}'), (21, '${BOB}');
    insert into public.channel_members values (1, 10), (2, 21)`);
  const before = await unindexedPairs();
  const alice = await user(ALICE, 'posts', '1.0.0');
  const bob = await user(BOB, 'posts', '2.0.0');
  try {
    await stack.pg.sql(`insert into public.posts values (1, 1, 'one'), (2, 2, 'two')`);
    assert.equal((await alice.next()).id, 1);
    assert.equal((await bob.next()).id, 2, 'bob (through his second profile) is in channel 2 only');
    await stack.pg.sql('insert into public.channel_members values (1, 20)');
    await stack.pg.sql(`insert into public.posts values (3, 1, 'one again'), (4, 2, 'two again')`);
    assert.equal((await bob.next()).id, 3, 'bob\'s first profile, added to channel 1, receives its post');
    assert.equal((await bob.next()).id, 4);
    assert.equal((await alice.next()).id, 3, 'alice received nothing of channel 2');
    assert.equal(await unindexedPairs(), before, 'no pair was checked for every subscriber');
  } finally {
    await done(alice.client, bob.client);
  }
});
