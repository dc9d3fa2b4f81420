// The REST broadcast API: batch and single endpoints reach V1 and V2 receivers, realtime-js's
// httpSend() and its fallback for unjoined channels work, and bad requests get upstream's answers.
import assert from 'node:assert/strict';
import { waitFor } from '../stack/process.mjs';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { tokenFor } from '../stack/keys.mjs';
import { done, joinWithInbox, supabase } from './clients.mjs';

let stack, v1, v2, r1, r2;
before(async () => {
  stack = await startStack({ name: 'e2e-rest', vars: { HUB_SHARDS: '2' } });
  v1 = supabase(stack.url, stack.keys.anon, '1.0.0');
  v2 = supabase(stack.url, stack.keys.anon);
  r1 = await joinWithInbox(v1, 'news');
  r2 = await joinWithInbox(v2, 'news');
});
after(async () => {
  await done(v1, v2);
  await stack?.stop();
});

const post = (path, body, headers = {}) =>
  fetch(`${stack.url}${path}`, { method: 'POST', headers: { apikey: stack.keys.serviceRole, 'content-type': 'application/json', ...headers }, body });

describe('batch POST /api/broadcast', () => {
  test('delivers each message as a text broadcast, with meta.id when given', async () => {
    const res = await post('/realtime/v1/api/broadcast', JSON.stringify({ messages: [
      { topic: 'news', event: 'headline', payload: { title: 'one' } },
      { topic: 'elsewhere', event: 'x', payload: {} },
      { topic: 'news', event: 'headline', payload: { title: 'two' }, id: 'msg-2' },
    ] }));
    assert.equal(res.status, 202);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    for (const r of [r1, r2]) {
      const first = await r.inbox.next();
      assert.deepEqual([first.event, first.payload], ['headline', { title: 'one' }]);
      const second = await r.inbox.next();
      assert.deepEqual([second.payload, second.meta], [{ title: 'two' }, { id: 'msg-2' }]);
    }
  });

  test('refuses bad tokens and bad bodies', async () => {
    const noAuth = await fetch(`${stack.url}/api/broadcast`, { method: 'POST', body: '{}' });
    assert.deepEqual([noAuth.status, await noAuth.json()], [401, { message: 'Unauthorized' }]);
    const expired = await post('/api/broadcast', '{"messages":[]}', { apikey: tokenFor('anon', { ttlSecs: -5 }) });
    assert.equal(expired.status, 401);
    const bearerWins = await post('/api/broadcast', '{"messages":[]}', { authorization: `Bearer ${tokenFor('anon', { ttlSecs: -5 })}` });
    assert.equal(bearerWins.status, 401, 'Authorization: Bearer takes precedence over apikey');
    const invalid = await post('/api/broadcast', JSON.stringify({ messages: [{ topic: 'news', payload: 'x' }] }));
    assert.equal(invalid.status, 422);
    assert.deepEqual(await invalid.json(), { errors: { messages: [{ event: ["can't be blank"], payload: ['is invalid'] }] } });
  });
});

describe('single POST /api/broadcast/:topic/events/:event', () => {
  test('JSON and binary bodies reach V2 receivers; V1 receivers get the JSON one', async () => {
    const json = await post('/api/broadcast/news/events/flash', JSON.stringify({ level: 3 }));
    assert.equal(json.status, 202);
    const bin = await post('/api/broadcast/news/events/blob', new Uint8Array([1, 2, 255]), { 'content-type': 'application/octet-stream' });
    assert.equal(bin.status, 202);
    const marker = await post('/api/broadcast/news/events/marker', '{}');
    assert.equal(marker.status, 202);

    assert.deepEqual([(await r2.inbox.next()).payload, (await r2.inbox.next()).event], [{ level: 3 }, 'blob']);
    assert.equal((await r2.inbox.next()).event, 'marker');
    assert.deepEqual((await r1.inbox.next()).payload, { level: 3 });
    assert.equal((await r1.inbox.next()).event, 'marker', 'no binary message reached the V1 receiver');
  });

  test('refusals', async () => {
    const media = await post('/api/broadcast/news/events/e', 'x', { 'content-type': 'text/plain' });
    assert.deepEqual([media.status, await media.json()], [415, { error: 'Unsupported Media Type. Use application/json or application/octet-stream' }]);
    // No policy lets anon write; service_role bypasses RLS (BYPASSRLS, as on Supabase).
    const priv = await post('/api/broadcast/news/events/e?private=true', '{}', { apikey: stack.keys.anon });
    assert.deepEqual([priv.status, await priv.json()], [403, { message: 'Unauthorized' }]);
    assert.equal((await post('/api/broadcast/news/events/e?private=true', '{}')).status, 202);
    const preflight = await fetch(`${stack.url}/api/broadcast`, { method: 'OPTIONS' });
    assert.equal(preflight.status, 204);
    assert.match(preflight.headers.get('access-control-allow-headers'), /apikey/);
  });

  test("realtime-js httpSend() and send() on an unjoined channel", async (t) => {
    const sender = supabase(stack.url, stack.keys.anon);
    t.after(() => done(sender));
    const unjoined = sender.channel('news');
    const res = await unjoined.httpSend('via-http', { n: 1 });
    assert.deepEqual(res, { success: true });
    assert.equal(await unjoined.send({ type: 'broadcast', event: 'fallback', payload: { n: 2 } }), 'ok');
    for (const r of [r1, r2]) {
      assert.deepEqual([(await r.inbox.next()).payload, (await r.inbox.next()).payload], [{ n: 1 }, { n: 2 }]);
    }
  });
});

describe('health', () => {
  test('GET /healthcheck', async () => {
    const res = await fetch(`${stack.url}/healthcheck`);
    assert.deepEqual([res.status, await res.text()], [200, 'ok']);
  });

  test('GET /api/tenants/:id/health with an admin token reports the database', async () => {
    const health = async () => {
      const res = await fetch(`${stack.url}/api/tenants/any/health`, { headers: { authorization: `Bearer ${stack.adminKey}` } });
      assert.equal(res.status, 200);
      return (await res.json()).data;
    };
    // The replication stream connects just after the replicator starts.
    const data = await waitFor('replication_connected', async () => ((await health()).replication_connected ? health() : null));
    assert.deepEqual([data.healthy, data.db_connected, data.replication_connected], [true, true, true]);
    assert.equal(typeof data.connected_cluster, 'number');
    const tenantKey = await fetch(`${stack.url}/api/tenants/any/health`, { headers: { authorization: `Bearer ${stack.keys.serviceRole}` } });
    assert.deepEqual([tenantKey.status, await tenantKey.text()], [403, ''], 'a tenant key is not an admin key');
  });
});
