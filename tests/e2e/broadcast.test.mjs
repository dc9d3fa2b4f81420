// Broadcast between unmodified supabase-js clients of both protocol versions, with one hub and
// with four (sockets are spread over the hubs, so clients meet only through Channel objects).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { done, hubsUsed, joinWithInbox, supabase } from './clients.mjs';

for (const hubs of [1, 4]) describe(`broadcast between V2 (default) and V1 clients, ${hubs} hub(s)`, () => {
  let stack;
  // The ordering test sends a burst well over the default 100 events/s (limits.test.mjs tests those).
  const limits = JSON.stringify({ '*': { max_events_per_second: 100000 } });
  before(async () => (stack = await startStack({ name: `e2e-broadcast-${hubs}`, vars: { HUB_SHARDS: String(hubs), TENANT_LIMITS: limits } })));
  after(async () => stack?.stop());
  test('both directions, ack and self honoured', async (t) => {
    const v2 = supabase(stack.url, stack.keys.anon);
    const v1 = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(v2, v1));
    assert.equal(v2.realtime.vsn, '2.0.0');
    const a = await joinWithInbox(v2, 'room1', { broadcast: { ack: true, self: true } });
    const b = await joinWithInbox(v1, 'room1', { broadcast: { ack: false, self: false } });

    // V2 -> everyone, sent as a binary kind-3 frame; acked because ack:true.
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'move', payload: { x: 1 } }), 'ok');
    assert.deepEqual((await b.inbox.next()).payload, { x: 1 }, 'the V1 client receives it');
    const own = await a.inbox.next();
    assert.deepEqual([own.event, own.payload], ['move', { x: 1 }], 'the sender receives its own (self:true)');

    // V1 -> everyone, as JSON text; the V1 sender has self:false.
    assert.equal(await b.channel.send({ type: 'broadcast', event: 'chat', payload: { text: 'hi', n: [1, 2] } }), 'ok');
    const got = await a.inbox.next();
    assert.deepEqual([got.event, got.payload], ['chat', { text: 'hi', n: [1, 2] }]);

    // A marker from the V2 client proves the V1 sender did not get its own message back:
    // messages on one channel arrive in order, so it would have come first.
    await a.channel.send({ type: 'broadcast', event: 'marker', payload: {} });
    assert.equal((await b.inbox.next()).event, 'marker');
    assert.equal((await a.inbox.next()).event, 'marker');
    assert.equal(hubsUsed(stack), Math.min(hubs, 2), 'with several hubs, the two sockets are on different ones');
  });

  test('order from one sender is kept for every receiver', async (t) => {
    const sender = supabase(stack.url, stack.keys.anon);
    const receivers = [supabase(stack.url, stack.keys.anon, '1.0.0'), supabase(stack.url, stack.keys.anon), supabase(stack.url, stack.keys.anon, '1.0.0')];
    t.after(() => done(sender, ...receivers));
    const s = await joinWithInbox(sender, 'ordered');
    const rs = [];
    for (const r of receivers) rs.push(await joinWithInbox(r, 'ordered'));
    const n = 200;
    for (let i = 0; i < n; i++) s.channel.send({ type: 'broadcast', event: 'seq', payload: { i } });
    for (const r of rs) {
      const got = [];
      for (let i = 0; i < n; i++) got.push((await r.inbox.next()).payload.i);
      assert.deepEqual(got, [...Array(n).keys()]);
    }
  });

  test('binary payloads reach V2 clients and are skipped for V1', async (t) => {
    const sender = supabase(stack.url, stack.keys.anon);
    const v2 = supabase(stack.url, stack.keys.anon);
    const v1 = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(sender, v2, v1));
    const s = await joinWithInbox(sender, 'bin-room');
    const r2 = await joinWithInbox(v2, 'bin-room');
    const r1 = await joinWithInbox(v1, 'bin-room');
    const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]);
    await s.channel.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer });
    const got = await r2.inbox.next();
    assert.equal(got.event, 'blob');
    assert.deepEqual(new Uint8Array(got.payload), bytes);
    await s.channel.send({ type: 'broadcast', event: 'after', payload: { ok: true } });
    assert.equal((await r2.inbox.next()).event, 'after');
    assert.equal((await r1.inbox.next()).event, 'after', 'the V1 client got no binary message before this one');
  });

  test('channels are separate rooms', async (t) => {
    const c1 = supabase(stack.url, stack.keys.anon);
    const c2 = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(c1, c2));
    const a = await joinWithInbox(c1, 'left', { broadcast: { self: true } });
    const b = await joinWithInbox(c2, 'right');
    const bLeft = await joinWithInbox(c2, 'left');
    await a.channel.send({ type: 'broadcast', event: 'only-left', payload: {} });
    assert.equal((await bLeft.inbox.next()).event, 'only-left');
    assert.equal((await a.inbox.next()).event, 'only-left');
    assert.equal(b.inbox.items.length, 0);
  });
});
