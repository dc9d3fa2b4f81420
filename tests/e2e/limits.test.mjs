// Tenant limits (TENANT_LIMITS), each tripped through supabase-js or a raw socket, with the
// client-visible outcome and text of upstream.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { done, Inbox, joinWithInbox, rawSocket, refusedUpgrade, subscribe, supabase, watchedChannel } from './clients.mjs';

async function closedWith(w, message) {
  const system = await w.system.next();
  assert.deepEqual([system.status, system.message], ['error', message]);
  assert.equal(await w.statuses.next(), 'SUBSCRIBED');
  assert.equal(await w.statuses.next(), 'CLOSED');
}

const refusal = (url, apikey) => refusedUpgrade(url, { apikey });

describe('per-socket and size limits', () => {
  let stack;
  before(async () => (stack = await startStack({ name: 'e2e-limits-a', vars: { TENANT_LIMITS: JSON.stringify({ '*': {
    max_channels_per_client: 2, max_concurrent_users: 3, max_payload_size_in_kb: 1, max_client_presence_events_per_window: 3,
  }, localhost: { private_only: true } }) } })));
  after(async () => stack?.stop());

  test('channels per client', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    await subscribe(c.channel('one'));
    await subscribe(c.channel('two'));
    await assert.rejects(subscribe(c.channel('three')), /CHANNEL_ERROR: ChannelRateLimitReached: Too many channels/);
  });

  test('payload size: an oversized broadcast is refused to the sender and reaches no one', async (t) => {
    const a = supabase(stack.url, stack.keys.anon);
    const b = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(a, b));
    const sender = await joinWithInbox(a, 'sized', { broadcast: { ack: true } });
    const receiver = await joinWithInbox(b, 'sized');
    assert.equal(await sender.channel.send({ type: 'broadcast', event: 'big', payload: { blob: 'x'.repeat(2000) } }), 'error');
    assert.equal(await sender.channel.send({ type: 'broadcast', event: 'small', payload: {} }), 'ok');
    assert.equal((await receiver.inbox.next()).event, 'small', 'the big one never arrived');
  });

  test('track payload size closes the channel', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const w = await watchedChannel(c, 'big-presence');
    w.channel.track({ blob: 'y'.repeat(2000) });
    await closedWith(w, 'Track message size exceeded');
  });

  test('client presence calls per window', async (t) => {
    const c = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(c));
    const w = await watchedChannel(c, 'chatty');
    for (let i = 1; i <= 3; i++) assert.equal(await w.channel.track({ i }), 'ok');
    w.channel.track({ i: 4 });
    await closedWith(w, 'Client presence rate limit exceeded');
  });

  test('concurrent users: joins and connections beyond the limit are refused', async (t) => {
    // Connected while there was room, joining once there is none.
    const early = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn: '2.0.0' });
    const clients = [0, 1, 2].map(() => supabase(stack.url, stack.keys.anon));
    t.after(() => {
      early.ws.close();
      return done(...clients);
    });
    for (const c of clients) await subscribe(c.channel('crowd'));
    early.ws.send(JSON.stringify(['1', '1', 'realtime:crowd', 'phx_join', { config: {} }]));
    assert.deepEqual((await early.inbox.next())[4], { status: 'error', response: { reason: 'ConnectionRateLimitReached: Too many connected users' } });
    assert.deepEqual(await refusal(stack.url, stack.keys.anon), { status: 429, body: { error: 'Too many connected users' } });
  });

  test('private_only refuses public joins with upstream\'s text (tenant "localhost" here)', async (t) => {
    const c = supabase(stack.url.replace('127.0.0.1', 'localhost'), stack.keys.anon);
    t.after(() => done(c));
    await assert.rejects(subscribe(c.channel('open')), /CHANNEL_ERROR: PrivateOnly: This project only allows private channels/);
  });

  test('a broadcast from the database over the payload size is dropped', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const { inbox } = await joinWithInbox(c, 'db-sized');
    await stack.pg.sql(`select realtime.send(jsonb_build_object('big', repeat('x', 3000)), 'big', 'db-sized', false)`);
    await stack.pg.sql(`select realtime.send('{}', 'small', 'db-sized', false)`);
    assert.equal((await inbox.next()).event, 'small');
  });
});

describe('per-second limits', () => {
  let stack;
  before(async () => (stack = await startStack({ name: 'e2e-limits-b', vars: { TENANT_LIMITS: JSON.stringify({ '*': {
    max_events_per_second: 5, max_presence_events_per_second: 1, max_joins_per_second: 3, max_client_presence_events_per_window: 100,
  } }) } })));
  after(async () => stack?.stop());

  // First in this stack: it needs the hub's event counter fresh.
  test('broadcasts from the database over the events rate are dropped, not queued', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const w = await watchedChannel(c, 'db-flood');
    const inbox = new Inbox('db-flood');
    w.channel.on('broadcast', { event: '*' }, inbox.push);
    await stack.pg.sql(`select realtime.send(jsonb_build_object('i', i), 'm', 'db-flood', false) from generate_series(1, 60) i`);
    assert.equal((await inbox.next()).payload.i, 1);
    // The counter is tripped now: the channel's own next message closes it, after everything the
    // hub delivered from the database (same socket, in order).
    w.channel.send({ type: 'broadcast', event: 'e', payload: {} });
    await closedWith(w, 'Too many messages per second');
    const received = [1, ...inbox.items.map((m) => m.payload.i)];
    assert.deepEqual(received, received.map((_, k) => k + 1), 'a prefix, in order');
    assert.ok(received.length < 60, `only what fit the rate arrived (${received.length} of 60)`);
  });

  test('events per second close the channel that sends', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const w = await watchedChannel(c, 'firehose');
    for (let i = 0; i < 40; i++) w.channel.send({ type: 'broadcast', event: 'e', payload: { i } });
    await closedWith(w, 'Too many messages per second');
  });

  test('presence events per second close the channel', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const w = await watchedChannel(c, 'busy-presence');
    for (let i = 0; i < 10; i++) w.channel.track({ i });
    await closedWith(w, 'Too many presence messages per second');
  });

  // Last in this stack: the join counter stays over the limit for up to a minute.
  test('joins per second: the join is refused and the socket disconnected, then connects get 429', async (t) => {
    const c = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(c));
    const attempts = [];
    for (let i = 0; i < 20; i++) attempts.push(subscribe(c.channel(`j${i}`)).then(() => null, (e) => e.message));
    const errors = (await Promise.all(attempts)).filter(Boolean);
    assert.ok(errors.some((m) => m.includes('ClientJoinRateLimitReached: Too many joins per second')), errors.join('\n'));
    assert.ok(errors.some((m) => m.includes('socket closed: 1001')), 'the server disconnected the socket (1001)');
    assert.deepEqual(await refusal(stack.url, stack.keys.anon), { status: 429, body: { error: 'Too many joins per second' } });
  });
});

describe('bytes per second (sluice enforces what upstream only stores)', () => {
  let stack;
  before(async () => (stack = await startStack({ name: 'e2e-limits-c', vars: { TENANT_LIMITS: JSON.stringify({ '*': {
    max_bytes_per_second: 2000,
  } }) } })));
  after(async () => stack?.stop());

  test('the bytes a tenant\'s sockets send and receive close the channel that sends', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    const w = await watchedChannel(c, 'heavy', { broadcast: { ack: true } });
    // About 1 KB each: the first few fit 2,000 B/s over the 5-second first bucket, then no more.
    const replies = [];
    for (let i = 0; i < 20; i++) replies.push(await w.channel.send({ type: 'broadcast', event: 'e', payload: { blob: 'x'.repeat(1000) } }));
    assert.equal(replies[0], 'ok');
    await closedWith(w, 'Too many bytes per second');
  });
});

describe('join error backoff (CHANNEL_ERROR_BACKOFF_MS)', () => {
  let stack;
  before(async () => (stack = await startStack({ name: 'e2e-limits-d', vars: {
    CHANNEL_ERROR_BACKOFF_MS: '1500', TENANT_LIMITS: JSON.stringify({ '*': { max_channels_per_client: 1 } }),
  } })));
  after(async () => stack?.stop());

  test('a refused join is answered after the backoff; an admitted one is not held', async (t) => {
    const c = supabase(stack.url, stack.keys.anon);
    t.after(() => done(c));
    let started = Date.now();
    await subscribe(c.channel('first'));
    const admittedMs = Date.now() - started;
    started = Date.now();
    await assert.rejects(subscribe(c.channel('second')), /ChannelRateLimitReached: Too many channels/);
    const refusedMs = Date.now() - started;
    assert.ok(refusedMs >= 1500, `the refusal came after ${refusedMs} ms, before the 1,500 ms backoff`);
    assert.ok(admittedMs < 1500, `the admitted join took ${admittedMs} ms`);
  });
});
