// Private channels (Realtime Authorization): RLS policies on realtime.messages, written as in
// Supabase's guide, decide who may join (read) and who may broadcast or track (write).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { done, Inbox, joinWithInbox, pgChannel, rawSocket, subscribe, supabase, until, VSNS } from './clients.mjs';
import { waitFor } from '../stack/process.mjs';
import { tokenFor } from '../stack/keys.mjs';
import { startStack } from '../stack/stack.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-private' });
  await stack.pg.createRoles('authenticated');
  await stack.pg.sql(`
    grant usage on schema realtime to authenticated;
    grant select, insert on realtime.messages to authenticated;
    create policy "team members receive" on realtime.messages for select to authenticated
      using (realtime.topic() like 'team-' || (current_setting('request.jwt.claims', true)::jsonb ->> 'team') || '-%');
    create policy "team writers broadcast" on realtime.messages for insert to authenticated
      with check (extension = 'broadcast'
        and realtime.topic() like 'team-' || (current_setting('request.jwt.claims', true)::jsonb ->> 'team') || '-%'
        and coalesce((current_setting('request.jwt.claims', true)::jsonb ->> 'writer')::bool, false));
    create policy "presence except in quiet rooms" on realtime.messages for insert to authenticated
      with check (extension = 'presence' and realtime.topic() not like '%-quiet');
    create policy "anyone sees who is on a stage" on realtime.messages for select to authenticated
      using (extension = 'presence' and realtime.topic() like '%-stage');
  `);
});
after(async () => {
  await stack?.stop();
});

const user = (team, extra = {}, vsn = '2.0.0') => supabase(stack.url, tokenFor('authenticated', { team, ...extra }), vsn);
const PRIVATE = { private: true };

for (const vsn of VSNS) {
  test(`vsn ${vsn}: the read policy admits team members and refuses others with upstream's text`, async () => {
    const member = user('a', {}, vsn);
    const outsider = user('b', {}, vsn);
    try {
      await joinWithInbox(member, 'team-a-room', PRIVATE);
      const refused = await subscribe(outsider.channel('team-a-room', { config: PRIVATE })).catch((e) => e);
      assert.match(refused.message, /CHANNEL_ERROR: Unauthorized: You do not have permissions to read from this Channel topic: team-a-room$/);
    } finally {
      await done(member, outsider);
    }
  });
}

test("a reader's broadcasts are dropped; a writer's arrive; public and private rooms stay apart", async () => {
  const writer = user('a', { writer: true });
  const reader = user('a');
  const observer = user('a');
  const publicMember = supabase(stack.url, stack.keys.anon);
  try {
    const w = await joinWithInbox(writer, 'team-a-chat', PRIVATE);
    const r = await joinWithInbox(reader, 'team-a-chat', PRIVATE);
    const o = await joinWithInbox(observer, 'team-a-chat', PRIVATE);
    const p = await joinWithInbox(publicMember, 'team-a-chat');
    assert.equal(await r.channel.send({ type: 'broadcast', event: 'dropped', payload: {} }), 'ok');
    await w.channel.send({ type: 'broadcast', event: 'marker', payload: {} });
    assert.equal((await o.inbox.next()).event, 'marker', 'the reader\'s message never arrived');
    assert.equal((await r.inbox.next()).event, 'marker');
    // Broadcast from the database to the private room reaches its members, not the public room.
    await stack.pg.sql(`select realtime.send('{"n": 1}', 'from-db', 'team-a-chat')`);
    await stack.pg.sql(`select realtime.send('{"n": 2}', 'public-marker', 'team-a-chat', false)`);
    assert.equal((await o.inbox.next()).event, 'from-db');
    assert.equal((await p.inbox.next()).event, 'public-marker', 'the public room got no private message');
    assert.equal(p.inbox.items.length, 0);
  } finally {
    await done(writer, reader, observer, publicMember);
  }
});

test('presence is allowed separately from broadcast', async () => {
  const client = user('a');
  try {
    const open = client.channel('team-a-lobby', { config: { ...PRIVATE, presence: { key: 'u1' } } });
    await subscribe(open);
    assert.equal(await open.track({ at: 1 }), 'ok');
    const quiet = client.channel('team-a-quiet', { config: { ...PRIVATE, presence: { key: 'u1' } } });
    await subscribe(quiet);
    assert.equal(await quiet.track({ at: 1 }), 'error');
  } finally {
    await done(client);
  }
});

test('a broadcast_changes trigger delivers row changes to a private channel', async () => {
  await stack.pg.sql(`
    create table public.todos (id int primary key, title text);
    create function public.todos_changes() returns trigger language plpgsql security definer as $$
    begin
      perform realtime.broadcast_changes('team-a-todos', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
      return null;
    end $$;
    create trigger todos_broadcast after insert or update or delete on public.todos
      for each row execute function public.todos_changes();`);
  const client = user('a');
  try {
    const { inbox } = await joinWithInbox(client, 'team-a-todos', PRIVATE);
    await stack.pg.sql(`insert into todos values (1, 'write tests')`);
    await stack.pg.sql(`update todos set title = 'ship' where id = 1`);
    const insert = await inbox.next();
    assert.equal(insert.event, 'INSERT');
    assert.deepEqual([insert.payload.operation, insert.payload.table, insert.payload.schema], ['INSERT', 'todos', 'public']);
    assert.deepEqual([insert.payload.record, insert.payload.old_record], [{ id: 1, title: 'write tests' }, null]);
    assert.equal(insert.meta.id, insert.payload.id);
    const update = await inbox.next();
    assert.deepEqual([update.event, update.payload.old_record.title, update.payload.record.title], ['UPDATE', 'write tests', 'ship']);
  } finally {
    await done(client);
  }
});

test('a new access_token that loses read access closes the channel with upstream\'s text', async () => {
  const client = user('a');
  try {
    const channel = client.channel('team-a-moving', { config: PRIVATE });
    const system = new Inbox('system');
    channel.on('system', {}, system.push);
    await subscribe(channel);
    await client.realtime.setAuth(tokenFor('authenticated', { team: 'b' }));
    const shutdown = await until(system, (m) => m.status === 'error');
    assert.equal(shutdown.message, 'You no longer have permission to read from this Channel topic: team-a-moving');
    await waitFor('the channel to close', () => channel.state === 'closed');
  } finally {
    await done(client);
  }
});

for (const vsn of VSNS) {
  test(`vsn ${vsn}: replay sends the newest stored messages oldest first, marked replayed, and live ones once`, async () => {
    const topic = `team-a-replay-${vsn.replace(/\./g, '')}`;
    const since = Date.now() - 60_000;
    for (const n of [1, 2, 3]) await stack.pg.sql(`select realtime.send($1::jsonb, 'm', $2)`, [JSON.stringify({ n }), topic]);
    const client = user('a', {}, vsn);
    try {
      const { inbox } = await joinWithInbox(client, topic, { ...PRIVATE, broadcast: { replay: { since, limit: 2 } } });
      const [first, second] = [await inbox.next(), await inbox.next()];
      assert.deepEqual([first.payload.n, second.payload.n], [2, 3]);
      assert.deepEqual([first.meta.replayed, first.meta.id], [true, first.payload.id]);
      await stack.pg.sql(`select realtime.send('{"n": 4}', 'm', $1)`, [topic]);
      const live = await inbox.next();
      assert.equal(live.payload.n, 4);
      assert.equal(live.meta.replayed, undefined);
      assert.equal(inbox.items.length, 0, 'nothing delivered twice');
    } finally {
      await done(client);
    }
  });
}

test('REST broadcast to private topics follows the write policy: batch skips, single answers 403', async () => {
  const member = user('a');
  const writerToken = tokenFor('authenticated', { team: 'a', writer: true });
  const readerToken = tokenFor('authenticated', { team: 'a' });
  const post = (path, token, body) => fetch(`${stack.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, apikey: stack.keys.anon, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  try {
    const { inbox } = await joinWithInbox(member, 'team-a-rest', PRIVATE);
    const batch = (event) => ({ messages: [{ topic: 'team-a-rest', event, payload: {}, private: true }] });
    assert.equal((await post('/api/broadcast', readerToken, batch('from-reader'))).status, 202);
    assert.equal((await post('/api/broadcast', writerToken, batch('from-writer'))).status, 202);
    assert.equal((await inbox.next()).event, 'from-writer', "the reader's message was skipped");
    const single = await post('/api/broadcast/team-a-rest/events/single?private=true', readerToken, {});
    assert.deepEqual([single.status, await single.json()], [403, { message: 'Unauthorized' }]);
    assert.equal((await post('/api/broadcast/team-a-rest/events/single?private=true', writerToken, { n: 1 })).status, 202);
    assert.equal((await inbox.next()).event, 'single');
  } finally {
    await done(member);
  }
});

test('write is asked at the first broadcast, not at join, and kept for the channel\'s life; messages stay in order', async () => {
  await stack.pg.sql(`
    create table public.open_rooms (name text primary key);
    grant select on public.open_rooms to authenticated;
    create policy "open rooms are readable" on realtime.messages for select to authenticated
      using (realtime.topic() like 'lazy-%');
    create policy "open rooms are writable" on realtime.messages for insert to authenticated
      with check (extension = 'broadcast' and exists (select 1 from public.open_rooms where name = realtime.topic()));`);
  const sender = user('z');
  const receiver = user('z');
  try {
    const s = await joinWithInbox(sender, 'lazy-room', PRIVATE);
    const r = await joinWithInbox(receiver, 'lazy-room', PRIVATE);
    // Closed at join, open at the first broadcast: a check at join would drop everything.
    await stack.pg.sql(`insert into public.open_rooms values ('lazy-room')`);
    for (let i = 0; i < 20; i++) s.channel.send({ type: 'broadcast', event: 'm', payload: { i } });
    for (let i = 0; i < 20; i++) assert.equal((await r.inbox.next()).payload.i, i);
    // Closed again: the answer is kept until the next token, as upstream.
    await stack.pg.sql(`delete from public.open_rooms`);
    await s.channel.send({ type: 'broadcast', event: 'after-close', payload: {} });
    assert.equal((await r.inbox.next()).event, 'after-close');
  } finally {
    await done(sender, receiver);
  }
});

test("policies see the socket's x- headers as request.headers", async () => {
  await stack.pg.sql(`
    create policy "kiosks by header" on realtime.messages for select to authenticated
      using (realtime.topic() = 'kiosk' and current_setting('request.headers', true)::jsonb ->> 'x-kiosk' = 'lobby');`);
  const apikey = tokenFor('authenticated', { team: 'k' });
  const join = async (headers) => {
    const { ws, inbox } = await rawSocket(stack.url, { apikey, vsn: '2.0.0', headers });
    ws.send(JSON.stringify(['1', '1', 'realtime:kiosk', 'phx_join', { config: { private: true } }]));
    const reply = (await inbox.next())[4];
    ws.close();
    return reply;
  };
  assert.equal((await join({ 'X-Kiosk': 'lobby' })).status, 'ok');
  assert.deepEqual(await join({ 'x-kiosk': 'garage' }), {
    status: 'error',
    response: { reason: 'Unauthorized: You do not have permissions to read from this Channel topic: kiosk' },
  });
});

test('a member admitted by presence read alone gets presence but no broadcasts', async () => {
  const performer = user('s', { writer: true });
  const audience = user('x');
  try {
    const stage = await joinWithInbox(performer, 'team-s-stage', PRIVATE);
    const events = new Inbox('audience events');
    const seat = audience.channel('team-s-stage', { config: { ...PRIVATE, presence: { key: 'fan' } } });
    seat.on('broadcast', { event: '*' }, (m) => events.push({ kind: 'broadcast', event: m.event }));
    seat.on('presence', { event: 'join' }, ({ key }) => events.push({ kind: 'presence', key }));
    await subscribe(seat);
    // The performer's messages are handled in order: a broadcast delivered to the audience would
    // reach it before the presence join that follows.
    assert.equal(await stage.channel.send({ type: 'broadcast', event: 'song', payload: {} }), 'ok');
    assert.equal(await stage.channel.track({ on: 'stage' }), 'ok');
    const first = await until(events, (e) => e.kind === 'broadcast' || e.key !== 'fan');
    assert.equal(first.kind, 'presence', 'the broadcast did not reach the audience');
  } finally {
    await done(performer, audience);
  }
});

test('postgres_changes work on a private channel, governed by the table (not realtime.messages)', async () => {
  await stack.pg.sql(`
    create table public.scores (id int primary key, points int);
    grant select on public.scores to authenticated;
    alter publication supabase_realtime add table public.scores;`);
  const client = user('a');
  try {
    const inbox = new Inbox('scores');
    await pgChannel(client, 'team-a-scores', [{ binding: { event: 'INSERT', schema: 'public', table: 'scores' }, inbox }], PRIVATE);
    await stack.pg.sql('insert into public.scores values (1, 10)');
    const change = await inbox.next();
    assert.deepEqual([change.eventType, change.new], ['INSERT', { id: 1, points: 10 }]);
  } finally {
    await done(client);
  }
});

test("the Realtime Authorization guide's rooms_users policies, verbatim, with auth.uid()", async () => {
  // auth.uid() as a Supabase database defines it: the sub claim.
  await stack.pg.sql(`
    create schema if not exists auth;
    create function auth.uid() returns uuid language sql stable as $$
      select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
        (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid $$;
    grant usage on schema auth to authenticated;
    create table public.rooms (id bigint generated by default as identity primary key, topic text not null unique);
    create table public.rooms_users (user_id uuid, room_topic text references public.rooms (topic), created_at timestamptz default now());
    grant select on public.rooms_users to authenticated;
    create policy "authenticated can read broadcast and presence state" on realtime.messages for select to authenticated
      using (exists (select user_id from public.rooms_users
        where user_id = (select auth.uid()) and room_topic = (select realtime.topic())
          and realtime.messages.extension in ('broadcast', 'presence')));
    create policy "authenticated can send broadcast and track presence" on realtime.messages for insert to authenticated
      with check (exists (select user_id from public.rooms_users
        where user_id = (select auth.uid()) and room_topic = (select realtime.topic())
          and realtime.messages.extension in ('broadcast', 'presence')));
    insert into public.rooms (topic) values ('guide-room');
    insert into public.rooms_users (user_id, room_topic) values
      ('11111111-1111-4111-8111-111111111111', 'guide-room'), ('22222222-2222-4222-8222-222222222222', 'guide-room');`);
  const member = (sub) => supabase(stack.url, tokenFor('authenticated', { sub }));
  const [alice, bob, eve] = [member('11111111-1111-4111-8111-111111111111'), member('22222222-2222-4222-8222-222222222222'), member('33333333-3333-4333-8333-333333333333')];
  try {
    const a = await joinWithInbox(alice, 'guide-room', PRIVATE);
    const b = await joinWithInbox(bob, 'guide-room', PRIVATE);
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'hi', payload: { from: 'alice' } }), 'ok');
    assert.deepEqual((await b.inbox.next()).payload, { from: 'alice' });
    const refused = await subscribe(eve.channel('guide-room', { config: PRIVATE })).catch((e) => e);
    assert.match(refused.message, /Unauthorized: You do not have permissions to read from this Channel topic: guide-room$/);
  } finally {
    await done(alice, bob, eve);
  }
});

test("a private channel joined again writes with its own token's claims, not the socket's", async () => {
  const receiver = user('a');
  // The socket connects as a reader; the channel brings a writer's token.
  const { ws, inbox } = await rawSocket(stack.url, { apikey: tokenFor('authenticated', { team: 'a' }), vsn: '2.0.0' });
  try {
    const r = await joinWithInbox(receiver, 'team-a-rejoin', PRIVATE);
    const access_token = tokenFor('authenticated', { team: 'a', writer: true });
    for (const ref of ['1', '2']) {
      ws.send(JSON.stringify([ref, ref, 'realtime:team-a-rejoin', 'phx_join', { config: { private: true }, access_token }]));
      assert.equal((await until(inbox, (m) => m[3] === 'phx_reply' && m[1] === ref))[4].status, 'ok');
    }
    ws.send(JSON.stringify(['2', '3', 'realtime:team-a-rejoin', 'broadcast', { type: 'broadcast', event: 'after-rejoin', payload: {} }]));
    assert.equal((await r.inbox.next()).event, 'after-rejoin');
  } finally {
    ws.close();
    await done(receiver);
  }
});
