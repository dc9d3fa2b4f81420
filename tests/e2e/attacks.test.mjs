// Attacks, end to end: what an attacker sends and what the server must answer, written next to
// each case: forged and misused tokens, roles the project does not let clients use, the
// internal API of both components and the management API without the right credentials,
// SQL metacharacters, oversized frames, floods of connections and joins. (Another tenant's
// replicator credential: tenant_databases.test.mjs; each limit at its own value: limits.test.mjs.)
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { DEV_INTERNAL_SECRET, DEV_JWT_SECRET, internalSignature, signedRequest, signJwt, tokenFor } from '../stack/keys.mjs';
import { done, Inbox, pgChannel, refusedUpgrade, rawSocket, supabase, until, VSNS } from './clients.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-attacks' });
  await stack.pg.createRoles('authenticated');
  // Notes a user sees only when the token's `sub` is the row's owner: claims reach the policy.
  await stack.pg.sql(`create table public.attack_notes (id int primary key, owner text, body text);
    alter table public.attack_notes enable row level security;
    create policy own on public.attack_notes for select to authenticated
      using (owner = current_setting('request.jwt.claims', true)::json->>'sub');
    grant select on public.attack_notes to authenticated;
    alter publication supabase_realtime add table public.attack_notes`);
});
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

describe('the internal API of both components refuses requests not signed just now with the secret', () => {
  // Every route, with: no signature, the bearer secret instead, another secret, a signature made
  // 60 s ago (a captured request replayed later), a signature for another path. Expected: 401 and
  // nothing done.
  const attempts = (method, path, body) => {
    const text = body === undefined ? '' : JSON.stringify(body);
    const headers = (signature) => ({ 'content-type': 'application/json', ...(signature ? { 'x-sluice-signature': signature } : {}) });
    return {
      unsigned: { method, headers: headers() },
      bearer: { method, headers: { ...headers(), authorization: `Bearer ${DEV_INTERNAL_SECRET}` } },
      'another secret': { method, headers: headers(internalSignature(method, path, text, { secret: 'an-attackers-secret-of-at-least-32-characters' })) },
      'signed 60 s ago': { method, headers: headers(internalSignature(method, path, text, { time: nowSecs() - 60 })) },
      'signed for another path': { method, headers: headers(internalSignature(method, '/internal/v1/ping', text)) },
    };
  };
  const withBody = (init, body) => (body === undefined ? init : { ...init, body: JSON.stringify(body) });
  const change = { lsn: '0/1', changes: [] };

  test("the gateway's routes", async () => {
    const routes = [
      ['POST', '/internal/v1/changes/hub:127:0', change],
      ['POST', '/internal/v1/broadcasts', { broadcasts: [] }],
      ['POST', '/internal/v1/broadcasts/127', { broadcasts: [] }],
      ['GET', '/internal/v1/databases'],
      ['GET', '/internal/v1/ping'],
      ['GET', '/internal/v1/ping/127'],
    ];
    for (const [method, path, body] of routes) {
      for (const [how, init] of Object.entries(attempts(method, path, body))) {
        if (how === 'signed for another path' && path === '/internal/v1/ping') continue;
        const res = await fetch(`${stack.url}${path}`, withBody(init, body));
        assert.equal(res.status, 401, `${method} ${path} ${how}`);
      }
    }
    // The gateway takes a signed request again within the window: what it receives is idempotent
    // (hubs drop changes by position), so a replay within 30 s changes nothing.
    const ping = signedRequest('GET', `${stack.url}/internal/v1/ping`);
    assert.equal((await fetch(`${stack.url}/internal/v1/ping`, ping)).status, 204);
  });

  test("the replicator's routes, and a replay within the window", async () => {
    const routes = [
      ['POST', '/v1/subscriptions', { hub: 'h', socket: 's', topic: 't', bindings: [] }],
      ['PATCH', '/v1/subscriptions', { hub: 'h', socket: 's', topic: 't', claims: {} }],
      ['DELETE', '/v1/subscriptions', { hub: 'h', socket: 's' }],
      ['DELETE', '/v1/tenant'],
      ['POST', '/v1/tenant/reconnect'],
      ['POST', '/v1/authorize', { topic: 't', claims: { role: 'anon' } }],
      ['POST', '/v1/replay', { topic: 't', claims: { role: 'anon' }, since: 0, limit: 10 }],
    ];
    for (const [method, path, body] of routes) {
      for (const [how, init] of Object.entries(attempts(method, path, body))) {
        const res = await fetch(`${stack.replicator.url}${path}`, withBody(init, body));
        assert.equal(res.status, 401, `${method} ${path} ${how}`);
      }
    }
    // A request captured and sent again within the window: the replicator remembers signatures.
    const url = `${stack.replicator.url}/v1/subscriptions`;
    const captured = signedRequest('DELETE', url, { hub: 'h', socket: 'nobody' });
    assert.equal((await fetch(url, captured)).status, 200);
    assert.equal((await fetch(url, captured)).status, 401);
    // The replicator still serves (the refused DELETE /v1/tenant retired nothing).
    assert.equal((await fetch(`${stack.replicator.url}/healthz`)).status, 200);
  });
});

describe('the management API refuses forged admin tokens and bodies that are not a tenant', () => {
  const api = (method, path, { token = stack.adminKey, body } = {}) => fetch(`${stack.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const tenant = { tenant: { external_id: 'intruder', jwt_secret: 'x'.repeat(40) } };

  test('admin tokens: alg none, the users\' JWT secret (a service_role key), a tampered one: 403, nothing created', async () => {
    const none = `${b64url(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64url(JSON.stringify({ role: 'supabase_admin' }))}.`;
    const [head, , sig] = stack.adminKey.split('.');
    const tampered = `${head}.${b64url(JSON.stringify({ role: 'supabase_admin', iat: nowSecs() }))}.${sig}`;
    for (const token of [none, signJwt({ role: 'service_role', exp: nowSecs() + 3600 }, DEV_JWT_SECRET), stack.keys.serviceRole, tampered]) {
      assert.equal((await api('POST', '/api/tenants', { token, body: tenant })).status, 403);
      assert.equal((await api('GET', '/api/tenants', { token })).status, 403);
      assert.equal((await api('DELETE', '/api/tenants/127', { token })).status, 403);
    }
    assert.equal((await api('GET', '/api/tenants/intruder')).status, 404, 'nothing was created');
  });

  test('bodies that are not a tenant: 4xx with what is wrong, nothing created, the gateway keeps serving', async () => {
    for (const body of ['not json', '[]', 'null', '{"tenant": "x"}', { tenant: { external_id: "x'; drop table tenants; --", jwt_secret: 'x'.repeat(40) } },
      { tenant: { external_id: 'intruder' } }, { tenant: { external_id: 'intruder', jwt_secret: 7 } },
      { tenant: { external_id: 'intruder', jwt_secret: 'x'.repeat(40), max_concurrent_users: -1 } },
      { tenant: { external_id: 'intruder', jwt_secret: 'x'.repeat(40), allowed_roles: [] } },
      { tenant: { external_id: 'intruder', jwt_jwks: { keys: [{ kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' }] } } }]) {
      const res = await api('POST', '/api/tenants', { body });
      assert.ok(res.status >= 400 && res.status < 500, `${JSON.stringify(body)}: ${res.status}`);
    }
    assert.equal((await api('GET', '/api/tenants/intruder')).status, 404);
    const { ws } = await rawSocket(stack.url, { apikey: stack.keys.anon });
    ws.close();
  });
});

describe('SQL metacharacters in filters, table names, topics and claims are data, never SQL', () => {
  // Expected: a filter value or a claim with quotes and semicolons matches only rows holding that
  // exact text; a table name with them is a table that does not exist; the table survives.
  const evil = "x'); drop table public.attack_notes; --";

  for (const vsn of VSNS) {
    test(`vsn ${vsn}: a filter value and a sub claim with quotes match exactly; a table name with them is refused`, async () => {
      const token = signJwt({ role: 'authenticated', sub: evil, exp: nowSecs() + 3600 });
      const client = supabase(stack.url, stack.keys.anon, vsn, {}, { accessToken: token });
      // realtime-js puts a token in a join only once it has one: fetched from the callback first.
      await client.realtime.setAuth();
      const inbox = new Inbox('attack_notes');
      try {
        await pgChannel(client, `realtime:${evil}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'attack_notes', filter: `body=eq.${evil}` }, inbox }]);
        const id = vsn === '2.0.0' ? 20 : 10;
        await stack.pg.sql(`insert into public.attack_notes values (${id}, $1, 'plain'), (${id + 1}, $1, $1), (${id + 2}, 'someone else', $1)`, [evil]);
        const got = await inbox.next(15_000);
        assert.deepEqual([got.new.id, got.new.owner, got.new.body], [id + 1, evil, evil]);
        await assert.rejects(inbox.next(1_000), /nothing arrived/, 'not the plain row, not another owner\'s');
        await assert.rejects(pgChannel(client, 'evil-table', [{ binding: { event: '*', schema: 'public', table: `attack_notes"; drop table public.attack_notes; --` }, inbox: new Inbox() }]));
        await assert.rejects(pgChannel(client, 'evil-schema', [{ binding: { event: '*', schema: `public'; drop table public.attack_notes; --`, table: 'attack_notes' }, inbox: new Inbox() }]));
        const [{ n }] = await stack.pg.sql(`select count(*)::int as n from public.attack_notes`);
        assert.ok(n >= 3, 'the table is still there');
      } finally {
        await done(client);
      }
    });
  }
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

describe('request bodies over the limits: 8,000,000 bytes for the APIs (upstream\'s parser), 64 MiB internal', () => {
  // Expected: 413 with sluice's text, answered without reading the body whole (by its
  // content-length, or counted as it streams in when it has none); the gateway keeps serving.
  const text = { message: 'Request body too large: at most 8000000 bytes' };

  /**
   * Posts a body of `size` bytes over a raw TCP connection; its status and JSON. With `declare`
   * the request says its content-length and sends only its first 64 KiB, then waits: an answer
   * shows the server did not wait for the rest. Without, it is sent whole, chunked (no length).
   */
  const sendUntilAnswered = (path, headers, size, { declare }) => new Promise((resolve, reject) => {
    const url = new URL(path, stack.url);
    const socket = net.connect(Number(url.port), url.hostname);
    const head = [`POST ${url.pathname} HTTP/1.1`, `host: ${url.host}`, 'connection: close',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      declare ? `content-length: ${size}` : 'transfer-encoding: chunked'];
    let received = '';
    let sent = 0;
    const answer = () => {
      const [status, ...rest] = received.split('\r\n\r\n');
      const code = Number(status.split(' ')[1]);
      const body = rest.join('\r\n\r\n');
      const length = Number(status.match(/content-length: (\d+)/i)?.[1] ?? NaN);
      const text = /transfer-encoding: chunked/i.test(status) ? body.split('\r\n').filter((_, i) => i % 2 === 1).join('') : body;
      if (Buffer.byteLength(text) < length) return null; // not all of it yet
      try {
        return { status: code, body: JSON.parse(text) };
      } catch {
        return Number.isNaN(length) ? null : { status: code, body: text };
      }
    };
    socket.on('data', (d) => {
      received += d;
      const done = received.includes('\r\n\r\n') && answer();
      if (done) {
        socket.destroy();
        resolve({ ...done, sentBytes: sent });
      }
    });
    socket.setTimeout(10_000, () => reject(new Error(`${path} (content-length: ${declare}): no answer within 10 s`)));
    socket.on('error', () => {}); // the server may close while we write: its answer is what counts
    socket.on('close', () => reject(new Error(`${path} (content-length: ${declare}): closed without an answer after ${sent} bytes: ${received.slice(0, 300)}`)));
    socket.on('connect', () => {
      socket.write(`${head.join('\r\n')}\r\n\r\n`);
      const chunk = Buffer.alloc(1 << 16, 'x');
      const more = () => {
        while (!socket.destroyed && sent < (declare ? chunk.length : size)) {
          sent += chunk.length;
          const ok = socket.write(declare ? chunk : Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]));
          if (!ok) return socket.once('drain', more);
        }
        if (!socket.destroyed && !declare) socket.write('0\r\n\r\n');
      };
      more();
    });
  });

  test('REST broadcast and the management API, with and without a content-length', async () => {
    const rest = { apikey: stack.keys.anon, authorization: `Bearer ${stack.keys.anon}`, 'content-type': 'application/json' };
    const admin = { authorization: `Bearer ${stack.adminKey}`, 'content-type': 'application/json' };
    for (const [path, headers] of [['/api/broadcast', rest], ['/api/broadcast/big/events/e', rest], ['/api/tenants', admin]]) {
      for (const declare of [true, false]) {
        const { status, body } = await sendUntilAnswered(path, headers, 9_000_000, { declare });
        assert.deepEqual({ status, body }, { status: 413, body: text }, `${path}, content-length: ${declare}`);
      }
    }
    const small = await fetch(`${stack.url}/api/broadcast`, { method: 'POST', headers: rest, body: JSON.stringify({ messages: [{ topic: 'big', event: 'e', payload: {} }] }) });
    assert.equal(small.status, 202, 'the gateway keeps serving');
  });

  test('the internal API: no body is read before a well-formed, fresh signature header, nor over 64 MiB', async () => {
    // Expected: unsigned, 401 without reading the body; a fresh header with a made-up tag and a
    // body over 64 MiB, 413 without reading it; the gateway keeps serving.
    const path = '/internal/v1/changes/hub:127:0';
    const unsigned = await sendUntilAnswered(path, { 'content-type': 'application/json' }, 100 << 20, { declare: true });
    assert.deepEqual([unsigned.status, unsigned.body], [401, 'Unauthorized: the request is not signed']);
    const forged = { 'content-type': 'application/json', 'x-sluice-signature': `t=${nowSecs()},n=1,v1=${'00'.repeat(32)}` };
    const oversized = await sendUntilAnswered(path, forged, 100 << 20, { declare: true });
    assert.deepEqual([oversized.status, oversized.body], [413, { message: `Request body too large: at most ${64 << 20} bytes` }]);
    assert.equal((await fetch(`${stack.url}/internal/v1/ping`, signedRequest('GET', `${stack.url}/internal/v1/ping`))).status, 204);
  });
});

// On a stack of their own: a join flood trips the tenant's joins-per-second counter, which then
// refuses every connect of the tenant for up to a minute (upstream counts joins per tenant), and
// with limits lower than the defaults the counter trips after a known number of joins.
describe('floods from one client (max_joins_per_second 20, max_channels_per_client 50)', () => {
  let flood;
  before(async () => {
    flood = await startStack({ name: 'e2e-attacks-flood', vars: { TENANT_LIMITS: JSON.stringify({ '*': { max_joins_per_second: 20, max_channels_per_client: 50 } }) } });
  });
  after(async () => flood?.stop());
  const heartbeat = (socket, ref) => {
    socket.ws.send(JSON.stringify([null, ref, 'phoenix', 'heartbeat', {}]));
    return until(socket.inbox, (m) => Array.isArray(m) && m[1] === ref, 10_000).then((m) => m[4].status);
  };

  test('300 connections at once: each is upgraded or refused with a status, and a bystander is served throughout', async () => {
    // Expected: no upgrade hangs or fails with a 5xx; unjoined sockets are not users (upstream
    // counts users at join), so they are upgraded; the bystander's heartbeats are answered while
    // they are open and after they close.
    const bystander = await rawSocket(flood.url, { apikey: flood.keys.anon, vsn: '2.0.0' });
    try {
      const outcomes = await Promise.all(Array.from({ length: 300 }, () => rawSocket(flood.url, { apikey: flood.keys.anon, vsn: '2.0.0' }).then(
        (socket) => ({ socket, status: 101 }),
        (refusal) => ({ status: refusal.status ?? `error: ${refusal.message}` }),
      )));
      const statuses = [...new Set(outcomes.map((o) => o.status))];
      assert.deepEqual(statuses, [101], `every connection upgraded (${statuses.join(', ')})`);
      assert.equal(await heartbeat(bystander, 'during'), 'ok');
      for (const { socket } of outcomes) socket?.ws.close();
      assert.equal(await heartbeat(bystander, 'after'), 'ok');
    } finally {
      bystander.ws.close();
    }
  });

  test('1,000 joins in one burst on one socket: refused past the limits, the socket disconnected, a bystander served', async () => {
    // Expected: 50 joins admitted (max_channels_per_client), the next refused with "Too many
    // channels"; once the hub's joins average over 20 per second (its rate counter averages over
    // at least 5 s, as upstream's: past 100 joins) the join is refused with upstream's
    // ClientJoinRateLimitReached and the server closes the flooding socket (1001); a bystander
    // socket, connected before, still gets its heartbeat answered; new connects get 429 until
    // the counter's window has passed.
    const bystander = await rawSocket(flood.url, { apikey: flood.keys.anon, vsn: '2.0.0' });
    const attacker = await rawSocket(flood.url, { apikey: flood.keys.anon, vsn: '2.0.0' });
    try {
      const closed = new Promise((resolve) => attacker.ws.on('close', (code) => resolve(code)));
      for (let i = 0; i < 1000; i++) attacker.ws.send(JSON.stringify([`${i}`, `${i}`, `realtime:flood-${i}`, 'phx_join', { config: {} }]));
      const timeout = new Promise((resolve) => setTimeout(() => resolve('not closed within 60 s'), 60_000).unref());
      const outcome = await Promise.race([closed, timeout]);
      assert.equal(outcome, 1001, 'the server closed the flooding socket');
      const replies = attacker.inbox.items.filter((m) => Array.isArray(m) && m[3] === 'phx_reply');
      const reasons = new Set(replies.filter((m) => m[4].status !== 'ok').map((m) => m[4].response.reason));
      assert.equal(replies.filter((m) => m[4].status === 'ok').length, 50, 'joins admitted');
      assert.deepEqual([...reasons], ['ChannelRateLimitReached: Too many channels', 'ClientJoinRateLimitReached: Too many joins per second']);
      assert.equal(await heartbeat(bystander, 'flood'), 'ok');
      assert.deepEqual(await refusedUpgrade(flood.url, { apikey: flood.keys.anon }), { status: 429, body: { error: 'Too many joins per second' } });
    } finally {
      bystander.ws.close();
    }
  });
});
