// The gateway's /metrics: refused without a bearer JWT signed with METRICS_JWT_SECRET, and with
// one, Prometheus text that counts a known workload per tenant.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { done, joinWithInbox, refusedUpgrade, subscribe, supabase } from './clients.mjs';
import { signJwt, tokenFor } from '../stack/keys.mjs';
import { startStack } from '../stack/stack.mjs';

// The stack is reached at 127.0.0.1: tenant "127".
const TENANT = '127';

let stack;
before(async () => (stack = await startStack({ name: 'e2e-metrics', vars: {
  TENANT_LIMITS: JSON.stringify({ '*': { max_channels_per_client: 2 } }),
} })));
after(() => stack?.stop());

const scrape = (token) => fetch(`${stack.url}/metrics`, token ? { headers: { authorization: `Bearer ${token}` } } : {});

/** `name{labels} value` lines of the exposition, as a map from `name{labels}` to the value. */
async function samples(res) {
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/plain/);
  const text = await res.text();
  return new Map(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => {
    const at = l.lastIndexOf(' ');
    return [l.slice(0, at), Number(l.slice(at + 1))];
  }));
}

test('refused without a token signed with METRICS_JWT_SECRET', async () => {
  for (const token of [undefined, 'not-a-jwt', signJwt({ role: 'admin' }, 'some-other-secret-of-at-least-32-chars!!'), stack.keys.serviceRole]) {
    const res = await scrape(token);
    assert.equal(res.status, 403, `token ${token}`);
    assert.equal(await res.text(), '');
  }
});

test('counts a known workload per tenant', async () => {
  const token = stack.metricsKey; // signed with the stack's METRICS_JWT_SECRET
  const before = await samples(await scrape(token));
  const at = (m, name, labels = '') => m.get(`${name}{tenant="${TENANT}"${labels}}`) ?? 0;
  const a = supabase(stack.url, stack.keys.anon);
  const b = supabase(stack.url, stack.keys.anon, '1.0.0');
  try {
    const sender = await joinWithInbox(a, 'metered');
    const receiver = await joinWithInbox(b, 'metered');
    await subscribe(b.channel('metered-2'));
    const refused = b.channel('metered-3');
    await assert.rejects(subscribe(refused), /ChannelRateLimitReached/);
    await b.removeChannel(refused); // or realtime-js would try again a second later
    for (let i = 0; i < 5; i++) await sender.channel.send({ type: 'broadcast', event: 'e', payload: { i } });
    for (let i = 0; i < 5; i++) await receiver.inbox.next();
    await refusedUpgrade(stack.url, { apikey: tokenFor('anon', { ttlSecs: -10 }) });

    const now = await samples(await scrape(token));
    assert.equal(at(now, 'sluice_connected_sockets'), 2);
    assert.equal(at(now, 'sluice_joined_channels'), 3);
    assert.equal(at(now, 'sluice_joins_total') - at(before, 'sluice_joins_total'), 3);
    assert.equal(at(now, 'sluice_deliveries_total', ',kind="broadcast"') - at(before, 'sluice_deliveries_total', ',kind="broadcast"'), 5);
    assert.equal(at(now, 'sluice_refused_joins_total', ',reason="ChannelRateLimitReached"'), 1);
    assert.equal(at(now, 'sluice_refused_connections_total', ',reason="InvalidJWTToken"'), 1);
    assert.ok(at(now, 'sluice_messages_in_total') - at(before, 'sluice_messages_in_total') >= 9, 'joins and broadcasts came in');
    assert.ok(at(now, 'sluice_bytes_out_total') > at(before, 'sluice_bytes_out_total'));

    // An evicted hub resumes its counts: nothing reported is reported lower afterwards.
    const hub = stack.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).find(Boolean);
    await stack.gateway.evictHub(hub);
    const later = await samples(await scrape(token));
    for (const name of ['sluice_joins_total', 'sluice_messages_in_total', 'sluice_bytes_out_total']) {
      assert.ok(at(later, name) >= at(now, name), `${name}: ${at(later, name)} after eviction, ${at(now, name)} before`);
    }
    assert.equal(at(later, 'sluice_connected_sockets'), 2, 'the sockets stayed open');
  } finally {
    await done(a, b);
  }
});
