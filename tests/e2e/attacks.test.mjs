// Attacks, end to end: what an attacker sends and what the server must answer, written next to
// each case: forged and misused tokens, roles the project does not let clients use, oversized
// frames.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { signJwt, tokenFor } from '../stack/keys.mjs';
import { refusedUpgrade, rawSocket, until, VSNS } from './clients.mjs';

let stack;
before(async () => (stack = await startStack({ name: 'e2e-attacks' })));
after(async () => stack?.stop());

const nowSecs = () => Math.floor(Date.now() / 1000);
const b64url = (text) => Buffer.from(text).toString('base64url');

describe('forged and misused tokens are refused at connect', () => {
  const refused = (apikey) => refusedUpgrade(stack.url, { apikey });
  const claims = () => ({ role: 'service_role', exp: nowSecs() + 3600 });

  test('alg none: no signature is no token', async () => {
    const none = `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64url(JSON.stringify(claims()))}.`;
    assert.deepEqual(await refused(none), {
      status: 401,
      body: { error: 'Failed to generate JWT signer, check your JWT secret or JWKS configuration' },
    });
  });

  test('a kid the tenant does not have, signed with another secret', async () => {
    const token = signJwt(claims(), 'an-attackers-secret-that-is-long-enough-too', { kid: 'not-a-key-of-ours' });
    assert.deepEqual(await refused(token), { status: 401, body: { error: 'Failed to validate JWT signature' } });
  });

  test('algorithm confusion: an RS256 public key presented as an HS256 secret', async () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pem = publicKey.export({ type: 'spki', format: 'pem' });
    const token = signJwt(claims(), pem, { kid: 'rsa-1' });
    assert.deepEqual(await refused(token), { status: 401, body: { error: 'Failed to validate JWT signature' } });
  });

  test('a tampered payload keeps its old signature', async () => {
    const [head, , sig] = tokenFor('anon').split('.');
    const forged = `${head}.${b64url(JSON.stringify(claims()))}.${sig}`;
    assert.deepEqual(await refused(forged), { status: 401, body: { error: 'Failed to validate JWT signature' } });
  });

  test('expired, not yet valid (nbf an hour ahead), and without a role', async () => {
    assert.deepEqual(await refused(tokenFor('anon', { ttlSecs: -5 })), { status: 401, body: { error: 'Token has expired' } });
    const early = await refused(signJwt({ ...claims(), nbf: nowSecs() + 3600 }));
    assert.equal(early.status, 401);
    assert.match(early.body.error, /^Token is not valid yet: it becomes valid in \d+ seconds$/);
    assert.deepEqual(await refused(signJwt({ exp: nowSecs() + 60 })), {
      status: 401,
      body: { error: 'Fields `role` and `exp` are required in JWT' },
    });
  });

  test('an nbf within the clock-skew leeway is accepted', async () => {
    const { ws } = await rawSocket(stack.url, { apikey: signJwt({ ...claims(), role: 'anon', nbf: nowSecs() + 10 }) });
    ws.close();
  });
});

describe('a validly signed token for a role clients may not use is refused everywhere a token is read', () => {
  // The replicator checks RLS as the token's role; if it may become `postgres` (the dev stack's
  // superuser, a careless grant), such a token would read every row. Default allowed roles: anon,
  // authenticated, service_role (the tenant's `allowed_roles`).
  const text = (role) => `Role "${role}" is not allowed for clients of this project: sign tokens for one of the tenant's allowed_roles (by default anon, authenticated, service_role)`;

  test('at connect: postgres and supabase_admin get 401 with the reason', async () => {
    for (const role of ['postgres', 'supabase_admin']) {
      assert.deepEqual(await refusedUpgrade(stack.url, { apikey: signJwt({ role, exp: nowSecs() + 3600 }) }), { status: 401, body: { error: text(role) } });
    }
  });

  for (const vsn of VSNS) {
    test(`vsn ${vsn}: on join (access_token) and on a token refresh`, async () => {
      const { ws, inbox } = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn });
      const send = (ref, topic, event, payload, joinRef = ref) => ws.send(JSON.stringify(vsn === '2.0.0' ? [joinRef, ref, topic, event, payload] : { topic, event, payload, ref, join_ref: joinRef }));
      const reply = (ref) => until(inbox, (m) => (Array.isArray(m) ? m[1] : m.ref) === ref && (Array.isArray(m) ? m[3] : m.event) === 'phx_reply', 20_000);
      const body = (m) => (Array.isArray(m) ? m[4] : m.payload);
      const postgres = signJwt({ role: 'postgres', exp: nowSecs() + 3600 });
      send('1', 'realtime:as-postgres', 'phx_join', { config: {}, access_token: postgres });
      assert.deepEqual(body(await reply('1')), { status: 'error', response: { reason: `InvalidJWTToken: ${text('postgres')}` } });
      // A channel joined as anon, then offered a postgres token: the channel is closed.
      send('2', 'realtime:then-postgres', 'phx_join', { config: {}, access_token: stack.keys.anon });
      assert.equal(body(await reply('2')).status, 'ok');
      send('3', 'realtime:then-postgres', 'access_token', { access_token: postgres }, '2');
      const system = await until(inbox, (m) => (Array.isArray(m) ? m[3] : m.event) === 'system', 10_000);
      assert.equal(body(system).message, text('postgres'));
      assert.equal(body(system).status, 'error');
      ws.close();
    });
  }

  test('on REST broadcast: 401', async () => {
    const res = await fetch(`${stack.url}/api/broadcast`, {
      method: 'POST',
      headers: { authorization: `Bearer ${signJwt({ role: 'postgres', exp: nowSecs() + 3600 })}`, apikey: stack.keys.anon, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ topic: 'x', event: 'e', payload: {} }] }),
    });
    assert.equal(res.status, 401);
  });
});

for (const vsn of VSNS) {
  test(`vsn ${vsn}: a frame over MAX_FRAME_BYTES closes its socket with 1009, unparsed, and no other`, async () => {
    const attacker = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn });
    const bystander = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn });
    const closed = new Promise((resolve) => attacker.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    // A join whose config is 4 MiB of padding: over the default 3 MiB.
    const padding = 'x'.repeat(4 * 1024 * 1024);
    const join = { config: { broadcast: {}, presence: { key: '' }, padding } };
    attacker.ws.send(JSON.stringify(vsn === '2.0.0' ? ['1', '1', 'realtime:big', 'phx_join', join] : { topic: 'realtime:big', event: 'phx_join', payload: join, ref: '1', join_ref: '1' }));
    const timeout = new Promise((resolve) => setTimeout(() => resolve('the socket was not closed within 15 s'), 15_000).unref());
    assert.deepEqual(await Promise.race([closed, timeout]), { code: 1009, reason: 'message too big' });
    assert.ok(
      stack.gateway.logLines().some((l) => /a socket sent a frame of 4194\d{3} bytes, over MAX_FRAME_BYTES \(3145728\): closing it/.test(l)),
      'the gateway says why it closed the socket',
    );
    // The bystander on the same hub is served.
    const heartbeat = vsn === '2.0.0' ? JSON.stringify([null, 'hb', 'phoenix', 'heartbeat', {}]) : JSON.stringify({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref: 'hb' });
    bystander.ws.send(heartbeat);
    const reply = await until(bystander.inbox, (m) => (Array.isArray(m) ? m[1] : m.ref) === 'hb');
    assert.equal((Array.isArray(reply) ? reply[4] : reply.payload).status, 'ok');
    bystander.ws.close();
  });
}
