// Connecting: token checks on the upgrade, malformed frames, and the channel protocol details
// supabase-js relies on, driven with a raw WebSocket for both protocol versions.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { waitFor } from '../stack/process.mjs';
import { signJwt, tokenFor } from '../stack/keys.mjs';
import { createClient } from '@supabase/supabase-js';
import { done, rawSocket, refusedUpgrade, subscribe, until, VSNS } from './clients.mjs';

let stack;
before(async () => (stack = await startStack({ name: 'e2e-connection' })));
after(async () => stack?.stop());

/** Encodes a client message for `vsn`. */
function frame(vsn, [joinRef, ref, topic, event, payload]) {
  return JSON.stringify(vsn === '2.0.0' ? [joinRef, ref, topic, event, payload] : { join_ref: joinRef, ref, topic, event, payload });
}

/** Decodes a server text message (V1 objects have no join_ref) to [joinRef, ref, topic, event, payload]. */
function parts(msg) {
  return Array.isArray(msg) ? msg : [undefined, msg.ref, msg.topic, msg.event, msg.payload];
}

describe('connect-time authentication', () => {
  const refused = (opts) => refusedUpgrade(stack.url, opts);

  test('refusals carry upstream status and text', async () => {
    const [expired, badSignature, missing, malformed, noRole, headerWins] = await Promise.all([
      refused({ apikey: tokenFor('anon', { ttlSecs: -10 }) }),
      refused({ apikey: tokenFor('anon', { secret: 'not-the-tenant-secret-but-long-enough-to-sign' }) }),
      refused({}),
      refused({ apikey: 'not-a-jwt' }),
      refused({ apikey: signJwt({ exp: Math.floor(Date.now() / 1000) + 60 }) }),
      refused({ apikey: stack.keys.anon, headers: { 'x-api-key': tokenFor('anon', { ttlSecs: -1 }) } }),
    ]);
    assert.deepEqual(expired, { status: 401, body: { error: 'Token has expired' } });
    assert.deepEqual(badSignature, { status: 401, body: { error: 'Failed to validate JWT signature' } });
    assert.deepEqual(missing, { status: 401, body: { error: 'API key is missing' } });
    assert.deepEqual(malformed, { status: 401, body: { error: 'The token provided is not a valid JWT' } });
    assert.deepEqual(noRole, { status: 401, body: { error: 'Fields `role` and `exp` are required in JWT' } });
    assert.deepEqual(headerWins, { status: 401, body: { error: 'Token has expired' } }, 'x-api-key takes precedence over apikey');
  });

  test('a valid key in the x-api-key header is accepted', async () => {
    const { ws } = await rawSocket(stack.url, { headers: { 'x-api-key': stack.keys.anon } });
    ws.close();
  });
});

for (const vsn of VSNS) {
  describe(`channel protocol over vsn ${vsn}`, () => {
    let ws, inbox;
    before(async () => ({ ws, inbox } = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn })));
    after(() => ws.close());
    const send = (...msg) => ws.send(frame(vsn, msg));

    test('malformed frames are dropped and the socket stays open', async () => {
      ws.send('this is not json');
      ws.send('{"topic": "phoenix"}');
      ws.send('[1, 2]');
      ws.send(JSON.stringify(vsn === '2.0.0' ? { topic: 'phoenix', event: 'heartbeat', payload: {}, ref: '0' } : [null, '0', 'phoenix', 'heartbeat', {}]));
      ws.send(Buffer.from([3, 200, 1, 2]));
      ws.send(Buffer.from([9, 9, 9]));
      send(null, 'hb-1', 'phoenix', 'heartbeat', {});
      const [joinRef, ref, topic, event, payload] = parts(await inbox.next());
      assert.deepEqual([ref, topic, event, payload], ['hb-1', 'phoenix', 'phx_reply', { status: 'ok', response: {} }]);
      if (vsn === '2.0.0') assert.equal(joinRef, null);
      assert.equal(ws.readyState, ws.OPEN);
    });

    test('join, duplicate join, leave and unmatched topics', async () => {
      send('1', '1', 'realtime:proto', 'phx_join', { config: { broadcast: { ack: true } } });
      let [joinRef, ref, , event, payload] = parts(await inbox.next());
      assert.deepEqual([ref, event, payload], ['1', 'phx_reply', { status: 'ok', response: { postgres_changes: [] } }]);
      if (vsn === '2.0.0') assert.equal(joinRef, '1');

      // A second join of the same topic ends the first incarnation.
      send('2', '2', 'realtime:proto', 'phx_join', { config: {} });
      assert.deepEqual(parts(await inbox.next()).slice(1), ['1', 'realtime:proto', 'phx_close', {}]);
      assert.equal(parts(await inbox.next())[1], '2');

      send('2', '3', 'realtime:elsewhere', 'broadcast', { type: 'broadcast', event: 'x', payload: {} });
      assert.deepEqual(parts(await inbox.next()).slice(1), ['3', 'realtime:elsewhere', 'phx_reply', { status: 'error', response: { reason: 'unmatched topic' } }]);

      send('2', '4', 'realtime:proto', 'phx_leave', {});
      assert.deepEqual(parts(await inbox.next()).slice(1), ['4', 'realtime:proto', 'phx_reply', { status: 'ok', response: {} }]);
      assert.deepEqual(parts(await inbox.next()).slice(1), ['2', 'realtime:proto', 'phx_close', {}]);
    });

    test('join errors use upstream reasons', async () => {
      send('5', '5', 'realtime:', 'phx_join', { config: {} });
      assert.deepEqual(parts(await inbox.next())[4], { status: 'error', response: { reason: 'TopicNameRequired: You must provide a topic name' } });
      send('6', '6', 'realtime:vault', 'phx_join', { config: { private: true } });
      assert.deepEqual(parts(await inbox.next())[4], {
        status: 'error',
        response: { reason: 'Unauthorized: You do not have permissions to read from this Channel topic: vault' },
      });
      send('7', '7', 'not-realtime', 'phx_join', { config: {} });
      assert.deepEqual(parts(await inbox.next())[4], { status: 'error', response: { reason: 'unmatched topic' } });
    });
  });
}

describe('idle sockets', () => {
  let idle;
  before(async () => (idle = await startStack({ name: 'e2e-idle', vars: { IDLE_TIMEOUT_MS: '1500' } })));
  after(async () => idle?.stop());

  test('a silent socket is closed; one that heartbeats stays open', async () => {
    const silent = await rawSocket(idle.url, { apikey: idle.keys.anon, vsn: '2.0.0' });
    const chatty = await rawSocket(idle.url, { apikey: idle.keys.anon, vsn: '2.0.0' });
    // The server's close frame. (ws emits 'close' only once TCP ends, which workerd delays locally
    // until the object is evicted; the frame itself is what a client acts on.)
    const closed = new Promise((resolve) => silent.ws._receiver.once('conclude', (code, reason) => resolve([code, reason.toString()])));
    const beat = setInterval(() => chatty.ws.send(JSON.stringify([null, 'hb', 'phoenix', 'heartbeat', {}])), 300);
    try {
      assert.deepEqual(await closed, [1000, 'idle timeout']);
      assert.equal(chatty.ws.readyState, chatty.ws.OPEN);
    } finally {
      clearInterval(beat);
      chatty.ws.close();
    }
  });
});

test('sockets the client closed get no more frames', async () => {
  // Each socket joins (its reply waits for the topic's Channel) and closes at once: the hub must
  // not write the reply, or anything else, to a socket whose close it has answered.
  const join = (ref) => JSON.stringify([ref, ref, 'realtime:closing', 'phx_join', { config: { presence: { key: '' } } }]);
  const sockets = await Promise.all(Array.from({ length: 20 }, () => rawSocket(stack.url, { apikey: stack.keys.anon, vsn: '2.0.0' })));
  const closed = sockets.map(({ ws }) => new Promise((resolve) => ws.once('close', resolve)));
  for (const { ws } of sockets) {
    ws.send(join('1'));
    ws.close();
  }
  await Promise.all(closed);
  // Calls to one Channel go in order: once a later join of the topic is answered, the closed
  // sockets' joins were answered too.
  const probe = await rawSocket(stack.url, { apikey: stack.keys.anon, vsn: '2.0.0' });
  probe.ws.send(join('2'));
  await until(probe.inbox, (m) => m[3] === 'phx_reply');
  probe.ws.close();
  const warnings = stack.gateway.logLines().filter((l) => /after close|send failed/.test(l));
  assert.deepEqual(warnings, []);
});

test('the log_level connection parameter decides which of a socket\'s lines are written', async () => {
  const client = (logLevel) => createClient(stack.url, stack.keys.anon, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: logLevel ? { logLevel } : {},
  });
  const loud = client('info');
  const quiet = client(undefined); // upstream's default: error
  try {
    // The quiet socket first: its lines, were there any, would be logged before the loud one's.
    for (const [c, topic] of [[quiet, 'quiet-topic'], [loud, 'loud-topic']]) {
      const channel = c.channel(topic, { config: { broadcast: { ack: true } } });
      await subscribe(channel);
      assert.equal(await channel.send({ type: 'broadcast', event: 'e', payload: {} }), 'ok');
    }
    const logged = (text) => stack.gateway.logLines().some((l) => l.includes(text));
    await waitFor('the loud socket\'s info lines', () => logged('realtime:loud-topic: joined') && logged('realtime:loud-topic: received a broadcast'));
    assert.equal(logged('realtime:quiet-topic'), false, 'no info lines of the quiet socket');
  } finally {
    await done(loud, quiet);
  }
});

test('the inspector is off unless INSPECTOR=on: GET /inspector says how to turn it on, GET / does not link it', async () => {
  const inspector = await fetch(`${stack.url}/inspector`);
  assert.equal(inspector.status, 404);
  assert.match(await inspector.text(), /INSPECTOR=on/);
  assert.equal((await fetch(`${stack.url}/inspector/inspector.js`)).status, 404);
  const front = await (await fetch(`${stack.url}/`)).text();
  assert.match(front, /Supabase Realtime-compatible/);
  assert.doesNotMatch(front, /href="\/inspector"/);
});
