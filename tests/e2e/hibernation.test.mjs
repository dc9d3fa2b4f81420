// A channel keeps working after its SocketHub loses its in-memory state: the hub is evicted from
// memory with its sockets hibernated, as workerd does with an idle Durable Object, and the next
// message wakes a fresh instance that must rebuild everything from the sockets' attachments.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { waitFor } from '../stack/process.mjs';
import { done, Inbox, joinWithInbox, rawSocket, subscribe, supabase, until } from './clients.mjs';
import { tokenFor } from '../stack/keys.mjs';

let stack;
before(async () => (stack = await startStack({ name: 'e2e-hibernation' })));
after(async () => stack?.stop());

const rebuilds = () => stack.gateway.logLines().filter((l) => l.includes('rebuilt the roster')).length;

test('broadcast and acks still work after the hub is evicted from memory', async (t) => {
  const v2 = supabase(stack.url, stack.keys.anon);
  const v1 = supabase(stack.url, stack.keys.anon, '1.0.0');
  t.after(() => done(v2, v1));
  const a = await joinWithInbox(v2, 'sleepy', { broadcast: { ack: true, self: true } });
  const b = await joinWithInbox(v1, 'sleepy', { broadcast: { ack: true } });
  const hub = await waitFor('the hub name in the worker log', () =>
    stack.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).find(Boolean));

  const before = rebuilds();
  await stack.gateway.evictHub(hub);

  // The first message after eviction reaches a new instance of the hub.
  assert.equal(await b.channel.send({ type: 'broadcast', event: 'after-wake', payload: { n: 1 } }), 'ok');
  assert.deepEqual((await a.inbox.next()).payload, { n: 1 });
  assert.equal(rebuilds(), before + 1, 'a fresh hub instance rebuilt its roster from the sockets');
  const sockets = stack.gateway.logLines().findLast((l) => l.includes('rebuilt the roster'));
  assert.match(sockets, /from 2 sockets/);

  // Membership options (ack, self) came back from the attachments too.
  assert.equal(await a.channel.send({ type: 'broadcast', event: 'back', payload: { n: 2 } }), 'ok');
  assert.deepEqual((await b.inbox.next()).payload, { n: 2 });
  assert.deepEqual((await a.inbox.next()).payload, { n: 2 }, 'self:true survived');
});

test('a socket that drops while its hub is evicted leaves presence', async (t) => {
  const watcher = supabase(stack.url, stack.keys.anon);
  const leaver = supabase(stack.url, stack.keys.anon, '1.0.0');
  t.after(() => done(watcher, leaver));
  const joins = new Inbox('joins');
  const leaves = new Inbox('leaves');
  const w = watcher.channel('dozing', { config: { presence: { key: 'watcher' } } });
  w.on('presence', { event: 'join' }, ({ key }) => joins.push(key));
  w.on('presence', { event: 'leave' }, ({ key }) => leaves.push(key));
  await subscribe(w);
  const l = leaver.channel('dozing', { config: { presence: { key: 'leaver' } } });
  await subscribe(l);
  assert.equal(await l.track({ here: true }), 'ok');
  await until(joins, (k) => k === 'leaver');

  const hub = stack.gateway.logLines().map((line) => line.match(/^(hub:\S+): accepted socket/)?.[1]).find(Boolean);
  const before = rebuilds();
  await stack.gateway.evictHub(hub);
  leaver.realtime.disconnect();
  assert.equal(await until(leaves, (k) => k === 'leaver'), 'leaver');
  assert.equal(rebuilds(), before + 1, 'the close woke a fresh hub instance');
});

test('a Channel object evicted from memory keeps its presence registry', async (t) => {
  const ana = supabase(stack.url, stack.keys.anon);
  const later = supabase(stack.url, stack.keys.anon, '1.0.0');
  t.after(() => done(ana, later));
  const a = ana.channel('remembered', { config: { presence: { key: 'ana' } } });
  await subscribe(a);
  assert.equal(await a.track({ name: 'Ana' }), 'ok');
  const hub = stack.gateway.logLines().map((line) => line.match(/^(hub:\S+): accepted socket/)?.[1]).find(Boolean);
  const tenant = hub.split(':')[1];
  await stack.gateway.evictChannel(`ch:${tenant}:public:remembered`);

  const syncs = new Inbox('syncs');
  const l = later.channel('remembered', { config: { presence: { key: 'later' } } });
  l.on('presence', { event: 'sync' }, () => syncs.push(l.presenceState()));
  await subscribe(l);
  const state = await syncs.next();
  assert.deepEqual(state.ana?.map((p) => p.name), ['Ana'], 'the state came back from storage');
});

test('a socket with the default 100 channels keeps them (its session outgrows the attachment) across eviction', async () => {
  const apikey = tokenFor('authenticated', { sub: 'a-user-id-of-ordinary-length-0123456789' });
  const { ws, inbox } = await rawSocket(stack.url, { apikey, vsn: '2.0.0' });
  const next = async (event) => { for (;;) { const m = await inbox.next(); if (m[3] === event) return m; } };
  try {
    const config = { broadcast: { self: true, ack: true }, presence: { key: '' }, private: false };
    const topic = (i) => `realtime:a-fairly-ordinary-room-name-${i}`;
    for (let i = 1; i <= 101; i++) ws.send(JSON.stringify([`${i}`, `${i}`, topic(i), 'phx_join', { config, access_token: apikey }]));
    // Joins of different topics are answered as each completes, not necessarily in order.
    const replies = [];
    while (replies.length < 101) replies.push(await next('phx_reply'));
    replies.sort((x, y) => Number(x[1]) - Number(y[1]));
    assert.deepEqual(replies.slice(0, 100).filter((m) => m[4].status !== 'ok'), [], 'every join up to the limit succeeded');
    assert.deepEqual(replies[100][4], { status: 'error', response: { reason: 'ChannelRateLimitReached: Too many channels' } });
    assert.ok(stack.gateway.logLines().some((l) => l.includes('session kept in storage')));

    const hub = stack.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).findLast(Boolean);
    await stack.gateway.evictHub(hub);
    // A fresh instance finds all 100 channels: the first and the last still echo (self: true).
    for (const i of [1, 100]) {
      ws.send(JSON.stringify([`${i}`, `b${i}`, topic(i), 'broadcast', { type: 'broadcast', event: 'e', payload: { i } }]));
      assert.deepEqual((await next('broadcast')).slice(2, 5), [topic(i), 'broadcast', { type: 'broadcast', event: 'e', payload: { i } }]);
    }
  } finally {
    ws.close();
  }
});
