// Presence through unmodified supabase-js clients of both protocol versions, with one hub and with
// four: presenceState() and the sync / join / leave events must show the right members.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { done, hubsUsed, Inbox, subscribe, supabase, until } from './clients.mjs';

/** A channel with presence listeners feeding inboxes, subscribed. */
async function presenceChannel(client, topic, key) {
  const channel = client.channel(topic, { config: { presence: { key } } });
  const events = { sync: new Inbox(`${key} sync`), join: new Inbox(`${key} join`), leave: new Inbox(`${key} leave`) };
  channel.on('presence', { event: 'sync' }, () => events.sync.push(channel.presenceState()));
  channel.on('presence', { event: 'join' }, ({ key: k, newPresences }) => events.join.push({ key: k, metas: newPresences }));
  channel.on('presence', { event: 'leave' }, ({ key: k, leftPresences }) => events.leave.push({ key: k, metas: leftPresences }));
  await subscribe(channel);
  return { channel, ...events };
}

const names = (state, key) => (state[key] ?? []).map((p) => p.name);

for (const hubs of [1, 4]) describe(`presence, ${hubs} hub(s)`, () => {
  let stack;
  before(async () => (stack = await startStack({ name: `e2e-presence-${hubs}`, vars: { HUB_SHARDS: String(hubs) } })));
  after(async () => stack?.stop());

  test('track, update, untrack and disconnect are seen by every member', async (t) => {
    const ana = supabase(stack.url, stack.keys.anon);
    const bob = supabase(stack.url, stack.keys.anon, '1.0.0');
    t.after(() => done(ana, bob));
    const a = await presenceChannel(ana, 'lobby', 'ana');
    const b = await presenceChannel(bob, 'lobby', 'bob');

    assert.equal(await a.channel.track({ name: 'Ana' }), 'ok');
    const joined = await until(b.join, (e) => e.key === 'ana');
    assert.equal(joined.metas[0].name, 'Ana');
    assert.match(joined.metas[0].presence_ref, /^[A-Za-z0-9_-]{16}$/);
    await until(a.sync, (s) => names(s, 'ana').includes('Ana')); // the tracker sees itself

    // An update replaces the meta: still one presence under the key, with the new fields.
    assert.equal(await a.channel.track({ name: 'Ana', status: 'away' }), 'ok');
    const state = await until(b.sync, (s) => s.ana?.[0]?.status === 'away');
    assert.equal(state.ana.length, 1);

    // A member that joins later gets the current state with its join.
    const cat = supabase(stack.url, stack.keys.anon);
    t.after(() => done(cat));
    const c = await presenceChannel(cat, 'lobby', 'cat');
    const first = await c.sync.next();
    assert.deepEqual(names(first, 'ana'), ['Ana']);

    assert.equal(await b.channel.track({ name: 'Bob' }), 'ok');
    await until(a.join, (e) => e.key === 'bob');

    assert.equal(await a.channel.untrack(), 'ok');
    assert.equal((await until(b.leave, (e) => e.key === 'ana')).metas[0].name, 'Ana');
    assert.equal((await until(c.leave, (e) => e.key === 'ana')).metas[0].name, 'Ana');

    // Bob's socket drops without leaving: everyone else sees him leave.
    a.sync.items.length = 0;
    bob.realtime.disconnect();
    assert.equal((await until(c.leave, (e) => e.key === 'bob')).metas[0].name, 'Bob');
    const after = await until(a.sync, (s) => !s.bob);
    assert.deepEqual(Object.keys(after), []);
    if (hubs > 1) assert.ok(hubsUsed(stack) >= 3, 'the three clients were on different hubs');
  });

  test('leaving a channel removes the presence', async (t) => {
    const x = supabase(stack.url, stack.keys.anon, '1.0.0');
    const y = supabase(stack.url, stack.keys.anon);
    t.after(() => done(x, y));
    const px = await presenceChannel(x, 'leavers', 'x');
    const py = await presenceChannel(y, 'leavers', 'y');
    await px.channel.track({ here: true });
    await until(py.join, (e) => e.key === 'x');
    await x.removeChannel(px.channel);
    assert.equal((await until(py.leave, (e) => e.key === 'x')).metas[0].here, true);
  });
});
