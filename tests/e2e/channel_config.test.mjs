// Join config switches as upstream 2.129 treats them: `presence.enabled` (the client's, or the
// tenant's `presence_enabled`) decides whether a join gets `presence_state`; and
// `broadcast.replication_ready` is answered once the database's replication connection is up,
// or shuts the channel down when it is not up in time.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { done, rawSocket, supabase, until, VSNS, watchedChannel } from './clients.mjs';
import { startStack } from '../stack/stack.mjs';

/** A raw frame as `{ topic, event, payload, ref }`, whatever the serializer. */
const normal = (f) => (Array.isArray(f) ? { ref: f[1], topic: f[2], event: f[3], payload: f[4] } : f);

/**
 * Joins `topic` on a raw socket with `config` and says whether `presence_state` came: the join
 * reply is awaited, then a heartbeat, whose reply comes after anything the join sent.
 */
async function getsPresenceState(url, apikey, vsn, topic, config) {
  const { ws, inbox } = await rawSocket(url, { apikey, vsn });
  const send = (ref, t, event, payload) =>
    ws.send(JSON.stringify(vsn === '1.0.0' ? { join_ref: ref, ref, topic: t, event, payload } : [ref, ref, t, event, payload]));
  try {
    send('1', `realtime:${topic}`, 'phx_join', { config });
    const reply = normal(await until(inbox, (f) => normal(f).ref === '1'));
    assert.equal(reply.payload.status, 'ok');
    send('2', 'phoenix', 'heartbeat', {});
    let presenceState = false;
    for (;;) {
      const f = normal(await inbox.next());
      if (f.event === 'presence_state' && f.topic === `realtime:${topic}`) presenceState = true;
      if (f.ref === '2') return presenceState;
    }
  } finally {
    ws.close();
  }
}

describe('presence switches', () => {
  for (const tenantEnabled of [false, true]) {
    describe(`tenant presence_enabled ${tenantEnabled}`, () => {
      let stack;
      before(async () => (stack = await startStack({
        name: `e2e-config-presence-${tenantEnabled}`,
        vars: { TENANT_LIMITS: JSON.stringify({ '*': { presence_enabled: tenantEnabled } }) },
      })));
      after(() => stack?.stop());

      for (const vsn of VSNS) {
        test(`vsn ${vsn}: presence_state only when the client or the tenant enables presence`, async () => {
          const on = await getsPresenceState(stack.url, stack.keys.anon, vsn, `p-on-${vsn}`, { presence: { enabled: true } });
          const off = await getsPresenceState(stack.url, stack.keys.anon, vsn, `p-off-${vsn}`, { presence: { enabled: false } });
          assert.equal(on, true, 'the client enabled presence');
          assert.equal(off, tenantEnabled, tenantEnabled ? 'the tenant enables presence for everyone' : 'presence disabled by both');
        });
      }
    });
  }
});

describe('broadcast.replication_ready', () => {
  let stack;
  before(async () => (stack = await startStack({ name: 'e2e-config-replication', vars: { REPLICATION_READY_TIMEOUT_MS: '1500' } })));
  after(() => stack?.stop());

  for (const vsn of VSNS) {
    test(`vsn ${vsn}: the system message says the replication connection is up`, async () => {
      const client = supabase(stack.url, stack.keys.anon, vsn);
      try {
        const { system } = await watchedChannel(client, `ready-${vsn}`, { broadcast: { replication_ready: true } });
        assert.deepEqual(await system.next(), {
          extension: 'system', status: 'ok', message: 'Replication connection established', channel: `ready-${vsn}`,
        });
      } finally {
        await done(client);
      }
    });
  }

  // Last: the replicator stays down.
  test('without a replication connection in time, the channel is shut down with upstream\'s text', async () => {
    await stack.replicator.stop();
    const client = supabase(stack.url, stack.keys.anon);
    try {
      const { system, statuses } = await watchedChannel(client, 'never-ready', { broadcast: { replication_ready: true } });
      assert.deepEqual(await system.next(), {
        extension: 'system', status: 'error', message: 'Replication connection was not established in time', channel: 'never-ready',
      });
      assert.equal(await statuses.next(), 'SUBSCRIBED');
      assert.equal(await statuses.next(), 'CLOSED');
    } finally {
      await done(client);
    }
  });
});
