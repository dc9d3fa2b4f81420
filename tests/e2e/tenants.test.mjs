// Many projects on one gateway: the management API (upstream's paths and shapes, admin tokens
// with rotation), tenants found by host (TENANT_HOSTS, first label, DEFAULT_TENANT), each
// tenant's own JWT secret, broadcasts and presence, and the answers for unknown and suspended
// tenants. Postgres Changes per tenant database: tenant_databases.test.mjs.
// Here `127.0.0.1` is mapped to tenant `alpha` and `localhost` to `beta`; other tenants are
// reached with a Host header of their own.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { DEV_API_SECRET, signJwt, tokenFor } from '../stack/keys.mjs';
import { waitFor } from '../stack/process.mjs';
import { startStack } from '../stack/stack.mjs';
import { done, Inbox, joinWithInbox, rawSocket, refusedUpgrade, subscribe, supabase, until, watchedChannel } from './clients.mjs';

const NEXT_API_SECRET = 'the-next-admin-secret-while-rotating-with-32-chars';
const SECRETS = { alpha: 'alpha-project-jwt-secret-with-at-least-32-chars', beta: 'beta-project-jwt-secret-with-at-least-32-characters' };

let stack;
before(async () => {
  stack = await startStack({
    name: 'e2e-tenants',
    vars: {
      TENANT_HOSTS: JSON.stringify({ '127.0.0.1': 'alpha', localhost: 'beta' }),
      API_JWT_SECRET_NEXT: NEXT_API_SECRET,
      CONNECT_ERROR_BACKOFF_MS: '20',
      // No key to seal database passwords with: they are refused.
      DB_ENC_PUBLIC_KEY: '',
    },
  });
});
after(() => stack?.stop());

/** The gateway's URL with another host name. */
const at = (host) => {
  const url = new URL(stack.url);
  url.hostname = host;
  return url.origin;
};
const adminToken = (secret = DEV_API_SECRET) => signJwt({ role: 'supabase_admin', iat: Math.floor(Date.now() / 1000) }, secret);

/** Calls the management API; `{ status, body, location }` (body parsed when JSON). */
async function api(method, path, body, token = adminToken()) {
  const res = await fetch(`${stack.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch {}
  return { status: res.status, body: parsed, location: res.headers.get('location') };
}

const create = (id, fields = {}) => api('POST', '/api/tenants', { tenant: { external_id: id, name: id, jwt_secret: SECRETS[id] ?? `${id}-secret-with-at-least-32-characters-long`, ...fields } });
const token = (tenant, extra = {}) => tokenFor('anon', { secret: SECRETS[tenant] ?? `${tenant}-secret-with-at-least-32-characters-long`, ...extra });

test('the management API: admin tokens (and the next secret while rotating); no token or a wrong one gets 403', async () => {
  assert.deepEqual(await api('GET', '/api/tenants', undefined, null), { status: 403, body: '', location: null });
  assert.equal((await api('GET', '/api/tenants', undefined, adminToken('not-the-admin-secret-but-32-chars-long'))).status, 403);
  assert.equal((await api('GET', '/api/tenants', undefined, token('alpha'))).status, 403, "a tenant's user token is no admin token");
  assert.equal((await api('GET', '/api/tenants')).status, 200);
  assert.equal((await api('GET', '/api/tenants', undefined, adminToken(NEXT_API_SECRET))).status, 200);
});

test('tenants created, read, updated and deleted with upstream\'s shapes; secrets are never shown', async () => {
  const created = await create('crud', { max_concurrent_users: 7, extensions: [{ type: 'postgres_cdc_rls', settings: { db_host: 'db.internal', region: 'us-east-1' } }] });
  assert.equal(created.status, 201);
  assert.equal(created.location, '/api/tenants/crud');
  assert.equal(created.body.data.external_id, 'crud');
  assert.equal(created.body.data.max_concurrent_users, 7);
  assert.equal(created.body.data.max_events_per_second, 100, "upstream's default");
  assert.equal(created.body.data.extensions[0].settings.db_host, 'db.internal');

  const listed = await api('GET', '/api/tenants');
  assert.ok(listed.body.data.some((t) => t.external_id === 'crud'));
  const shown = await api('GET', '/api/tenants/crud');
  assert.equal(shown.status, 200);
  for (const answer of [created, listed, shown]) {
    assert.ok(!JSON.stringify(answer.body).includes('secret-with-at-least'), 'no JWT secret in any answer');
    assert.ok(!JSON.stringify(answer.body).includes('jwt_secret'));
  }

  const updated = await api('PUT', '/api/tenants/crud', { tenant: { max_events_per_second: 5 } });
  assert.equal(updated.status, 200);
  assert.equal(updated.body.data.max_events_per_second, 5);
  assert.equal(updated.body.data.max_concurrent_users, 7, 'what the update does not give is kept');

  const withPassword = await api('PUT', '/api/tenants/crud', { tenant: { extensions: [{ type: 'postgres_cdc_rls', settings: { db_password: 'pw' } }] } });
  assert.equal(withPassword.status, 422);
  assert.match(withPassword.body.errors.detail, /db_password.*DB_ENC_PUBLIC_KEY/);
  assert.equal((await api('POST', '/api/tenants', { tenant: { external_id: 'nokeys' } })).status, 422);

  assert.equal((await api('POST', '/api/tenants/crud/reload')).status, 204);
  assert.equal((await api('POST', '/api/tenants/nosuch/reload')).status, 404);
  assert.equal((await api('GET', '/api/tenants/crud/health')).status, 200);
  assert.equal((await api('DELETE', '/api/tenants/crud')).status, 204);
  assert.deepEqual(await api('GET', '/api/tenants/crud'), { status: 404, body: { message: 'not found' }, location: null });
  assert.equal((await api('DELETE', '/api/tenants/crud')).status, 204, 'as upstream: deleting what is gone is fine');
});

/** Joins `topic` with presence key `key`, tracks, and resolves with the first presence state that shows itself. */
async function present(client, topic, key) {
  const channel = client.channel(topic, { config: { presence: { key } } });
  const synced = new Inbox(`${topic} presence of ${key}`);
  channel.on('presence', { event: 'sync' }, () => synced.push(channel.presenceState()));
  await subscribe(channel);
  await channel.track({ who: key });
  return until(synced, (state) => key in state);
}

test('two tenants by host: each with its own JWT secret, channels of the same name kept apart', async () => {
  assert.equal((await create('alpha')).status, 201);
  assert.equal((await create('beta')).status, 201);
  // Served within the settings cache's few seconds.
  await waitFor('alpha served', async () => !(await refusedUpgrade(at('127.0.0.1'), { apikey: token('alpha'), vsn: '2.0.0' }).catch(() => null)));
  const [a1, a2] = [supabase(at('127.0.0.1'), token('alpha')), supabase(at('127.0.0.1'), token('alpha'))];
  const [b1, b2] = [supabase(at('localhost'), token('beta')), supabase(at('localhost'), token('beta'))];
  try {
    const [sendA, inA, sendB, inB] = await Promise.all([
      joinWithInbox(a1, 'room'), joinWithInbox(a2, 'room'), joinWithInbox(b1, 'room'), joinWithInbox(b2, 'room'),
    ]);
    await sendA.channel.send({ type: 'broadcast', event: 'note', payload: { from: 'alpha' } });
    assert.deepEqual((await inA.inbox.next()).payload, { from: 'alpha' });
    await sendB.channel.send({ type: 'broadcast', event: 'note', payload: { from: 'beta' } });
    // Beta's first message is beta's: alpha's never reached it.
    assert.deepEqual((await inB.inbox.next()).payload, { from: 'beta' });

    // Presence of the same room name: each tenant sees its own members only.
    assert.deepEqual(Object.keys(await present(a1, 'members', 'alpha-user')), ['alpha-user']);
    assert.deepEqual(Object.keys(await present(b1, 'members', 'beta-user')), ['beta-user'], "alpha's member is not in beta's room");

    // A token of alpha is refused by beta (its secret did not sign it), and the other way round.
    const refused = await refusedUpgrade(at('localhost'), { apikey: token('alpha'), vsn: '2.0.0' });
    assert.equal(refused.status, 401);
    assert.equal((await refusedUpgrade(at('127.0.0.1'), { apikey: token('beta'), vsn: '2.0.0' })).status, 401);
  } finally {
    await done(a1, a2, b1, b2);
  }
});

test('an unknown tenant gets upstream\'s 404 and a log line naming the host, the tenant and the fixes; one created meanwhile is served', async () => {
  const headers = { host: 'gamma.example.com' };
  const refused = await refusedUpgrade(stack.url, { apikey: token('gamma'), vsn: '2.0.0', headers });
  assert.deepEqual(refused, { status: 404, body: { error: 'Tenant not found' } });
  await waitFor('the log line', () => stack.gateway.logLines().some((l) => l.includes('TenantNotFound: the host "gamma.example.com" names tenant "gamma"')
    && l.includes('POST /api/tenants') && l.includes('TENANT_HOSTS')));

  assert.equal((await create('gamma')).status, 201);
  const socket = await waitFor('gamma served', async () => rawSocket(stack.url, { apikey: token('gamma'), vsn: '2.0.0', headers }).catch(() => null));
  socket.ws.close();
});

test('reload tells every channel of the tenant the server requested a disconnect and closes its sockets; other tenants are untouched', async () => {
  const alpha = supabase(at('127.0.0.1'), token('alpha'));
  const [b1, b2] = [supabase(at('localhost'), token('beta')), supabase(at('localhost'), token('beta'))];
  try {
    const watched = await watchedChannel(alpha, 'lobby');
    const betaWatched = await watchedChannel(b1, 'lobby');
    const inBeta = new Promise((resolve) => betaWatched.channel.on('broadcast', { event: 'after' }, resolve));
    const sender = await joinWithInbox(b2, 'lobby');
    assert.equal((await api('POST', '/api/tenants/alpha/reload')).status, 204);
    const notice = await watched.system.next();
    assert.deepEqual({ ...notice, channel: undefined }, { extension: 'system', status: 'ok', message: 'Server requested disconnect', channel: undefined });
    await sender.channel.send({ type: 'broadcast', event: 'after', payload: {} });
    await inBeta;
    assert.equal(betaWatched.system.items.length, 0, 'beta was not disconnected');
  } finally {
    await done(alpha, b1, b2);
  }
});

test('a suspended tenant is refused with upstream\'s text; a deleted one is not found', async () => {
  assert.equal((await create('delta')).status, 201);
  const headers = { host: 'delta.example.com' };
  // An open socket with a joined channel: told, then closed, when the tenant is suspended.
  const { ws, inbox } = await waitFor('delta served', async () => rawSocket(stack.url, { apikey: token('delta'), vsn: '1.0.0', headers }).catch(() => null));
  const closed = new Promise((resolve) => ws.on('close', resolve));
  ws.send(JSON.stringify({ topic: 'realtime:room', event: 'phx_join', payload: { config: {} }, ref: '1', join_ref: '1' }));
  assert.equal((await until(inbox, (m) => m.event === 'phx_reply')).payload.status, 'ok');
  assert.equal((await api('PUT', '/api/tenants/delta', { tenant: { suspend: true } })).status, 200);
  const notice = await until(inbox, (m) => m.event === 'system');
  assert.equal(notice.payload.message, 'Server requested disconnect');
  assert.equal(await closed, 1000);
  const suspended = await waitFor('delta suspended', async () => {
    const answer = await refusedUpgrade(stack.url, { apikey: token('delta'), vsn: '2.0.0', headers }).catch(() => null);
    return answer?.status === 403 && answer;
  });
  assert.deepEqual(suspended.body, { error: 'Realtime was disabled for this tenant' });
  assert.equal((await api('DELETE', '/api/tenants/delta')).status, 204);
  await waitFor('delta gone', async () => (await refusedUpgrade(stack.url, { apikey: token('delta'), vsn: '2.0.0', headers }).catch(() => null))?.status === 404);
});
