// The replicator's delivery discipline, against a stand-in gateway we can make fail: while a hub
// cannot be reached the replicator retries and does not confirm the slot, so even a replicator
// killed meanwhile delivers every change once the gateway is back; gone channels are dropped.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { internalSignature, signedRequest } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, waitFor } from '../stack/process.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';

/**
 * A gateway stand-in: records batches per hub; answers 503 while `failing`, 401 while `refusing`
 * (a wrong secret), else the receipt, after `delayMs` (a slow hub).
 */
async function fakeGateway() {
  const gw = { batches: [], failing: false, refusing: false, delayMs: 0, gone: [], attempts: 0, signatures: [] };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      // The deployment's replicator asks which tenant databases to serve: none here.
      if (req.url === '/internal/v1/databases') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"tenants":{}}');
      gw.attempts++;
      const body = Buffer.concat(chunks).toString();
      const signature = req.headers['x-sluice-signature'] ?? '';
      const [, time, nonce] = signature.match(/^t=(\d+),n=(\d+),/) ?? [];
      gw.signatures.push({ valid: signature === internalSignature(req.method, req.url, body, { time: Number(time), nonce }), age: Math.floor(Date.now() / 1000) - time, authorization: req.headers.authorization });
      if (gw.failing) {
        res.writeHead(503).end('down');
        return;
      }
      if (gw.refusing) {
        res.writeHead(401).end('Unauthorized');
        return;
      }
      if (gw.delayMs) await new Promise((r) => setTimeout(r, gw.delayMs));
      gw.batches.push({ url: req.url, body: JSON.parse(Buffer.concat(chunks).toString()) });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ gone: gw.gone }));
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  gw.url = `http://127.0.0.1:${port}`;
  gw.stop = () => new Promise((r) => server.close(r));
  /** Every change id (the row's `id`) delivered, in order. */
  gw.ids = () => gw.batches.flatMap((b) => b.body.changes.flatMap((c) => c.payloads.map((p) => p.data.record?.id)));
  /** The highest position (LSN) of a change delivered. */
  gw.maxLsn = () => Math.max(0, ...gw.batches.flatMap((b) => b.body.changes.map((c) => c.lsn)));
  return gw;
}

let pg, gw, replicator;
const start = async () => (replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort(), gatewayUrl: gw.url }));

before(async () => {
  pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-delivery', 'postgres') });
  await pg.sql('create role anon nologin; create table public.t (id int primary key); grant select on t to anon');
  await pg.sql('create publication supabase_realtime for table public.t');
  gw = await fakeGateway();
  await start();
});
after(async () => {
  await replicator?.stop();
  await gw?.stop();
  await pg?.destroy();
});

async function subscribe(socket) {
  const url = `${replicator.url}/v1/subscriptions`;
  const res = await fetch(url, signedRequest('POST', url, { hub: 'hub:t:na:0', socket, topic: 'realtime:r', claims: { role: 'anon', exp: 9999999999 }, bindings: [{ event: 'INSERT', schema: 'public', table: 't' }] }));
  assert.equal(res.status, 200, await res.text());
}

const metric = async (name) => Number((await (await fetch(`${replicator.url}/metrics`)).text()).match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);

test('changes go to /internal/v1/changes/{hub} signed with the shared secret (which never travels), with positions and recipients', async () => {
  await subscribe('s1');
  await pg.sql('insert into t values (1)');
  await waitFor('a batch', () => gw.ids().includes(1));
  const [batch] = gw.batches;
  assert.equal(batch.url, `/internal/v1/changes/${encodeURIComponent('hub:t:na:0')}`);
  for (const { valid, age, authorization } of gw.signatures) {
    assert.ok(valid, 'signed over method, path and body');
    assert.ok(age >= 0 && age < 30, `signed now (${age} s ago)`);
    assert.equal(authorization, undefined);
  }
  assert.match(batch.body.stream, /^\d+:sluice_changes$/, 'positions are scoped to this database and slot');
  const [change] = batch.body.changes;
  assert.equal(typeof change.lsn, 'number');
  assert.equal(change.seq, 0);
  assert.deepEqual(change.payloads[0].to.map((r) => [r.socket, r.topic]), [['s1', 'realtime:r']]);
});

test('an unreachable gateway holds the slot; a replicator killed meanwhile still delivers everything once it is back', async () => {
  gw.failing = true;
  const attempts = gw.attempts;
  await pg.sql('insert into t values (2), (3)');
  await pg.sql('insert into t values (4)');
  await waitFor('retries', () => gw.attempts >= attempts + 3);
  assert.ok((await metric('sluice_push_errors_total')) >= 3);
  assert.ok((await metric('sluice_slot_lag_bytes')) > 0, 'nothing confirmed while the hub is unreachable');

  replicator.proc.child.kill('SIGKILL');
  await replicator.proc.exited;
  await pg.sql('insert into t values (5)');
  await start();
  gw.failing = false;
  await waitFor('everything delivered', () => gw.ids().includes(5));
  // The hub drops repeats by position; here we check what the replicator sent: each change in
  // order, and the ones before the kill possibly twice (at least once each), never skipped.
  const ids = gw.ids();
  for (const id of [2, 3, 4, 5]) assert.ok(ids.includes(id), `change ${id} delivered`);
  await waitFor('the slot to catch up', async () => (await metric('sluice_slot_lag_bytes')) === 0);
});

test('channels a hub reports gone lose their subscriptions', async () => {
  await subscribe('s2');
  gw.gone = [{ hub: 'hub:t:na:0', socket: 's1', topic: 'realtime:r' }];
  await pg.sql('insert into t values (6)');
  await waitFor('s1 dropped', async () => (await pg.sql("select count(*)::int as n from sluice.subscriptions where socket = 's1'"))[0].n === 0);
  gw.gone = [];
  const before = gw.batches.length;
  await pg.sql('insert into t values (7)');
  await waitFor('the next batch', () => gw.batches.length > before);
  const recipients = gw.batches.at(-1).body.changes[0].payloads[0].to.map((r) => r.socket);
  assert.deepEqual(recipients, ['s2']);
});

const healthz = async () => (await fetch(`${replicator.url}/healthz`)).json();
/** The slot's confirmed position as a number (same scale as the batches' `lsn`). */
async function confirmedLsn() {
  const [{ lsn }] = await pg.sql(`select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = 'sluice_changes'`);
  const [high, low] = lsn.split('/');
  return parseInt(high, 16) * 2 ** 32 + parseInt(low, 16);
}

test('a gateway refusing the secret is reported in /healthz and the log, retried slowly, and recovers once fixed', async () => {
  gw.refusing = true;
  await pg.sql('insert into t values (8)');
  const health = await waitFor('/healthz to report the refusal', async () => {
    const h = await healthz();
    return h.status === 'degraded' && h;
  });
  assert.match(health.gateway, /SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET/);
  assert.ok(
    replicator.proc.lines.some((l) => l.includes('ERROR') && l.includes("SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET")),
    'the log says what to fix',
  );
  // Retried slowly: not the outage backoff (which makes several attempts a second).
  const attempts = gw.attempts;
  await new Promise((r) => setTimeout(r, 2000));
  assert.ok(gw.attempts - attempts <= 1, `${gw.attempts - attempts} attempts in 2 s while refused`);
  gw.refusing = false;
  await waitFor('the change once the secret is fixed', () => gw.ids().includes(8), { timeoutMs: 20_000 });
  assert.equal((await healthz()).status, 'ok');
});

test('SIGTERM mid-stream: the batch in flight is delivered and confirmed, the replicator exits 0, and a restart delivers every change exactly once', async () => {
  const first = 100;
  const count = 60;
  const sent = gw.batches.length;
  gw.delayMs = 150; // every delivery is in flight for a while
  const writer = (async () => {
    for (let id = first; id < first + count; id++) await pg.sql(`insert into t values (${id})`);
  })();
  await waitFor('deliveries under way', () => gw.batches.length > sent + 1);
  replicator.proc.child.kill('SIGTERM');
  const { code } = await replicator.proc.exited;
  assert.equal(code, 0, `exit code ${code}:\n${replicator.proc.lines.slice(-15).join('\n')}`);
  assert.ok(replicator.proc.lines.some((l) => l.includes('replication stream closed')), 'the stream was closed cleanly');
  assert.ok((await confirmedLsn()) >= gw.maxLsn(), 'what was delivered was confirmed before exit');
  await writer;
  gw.delayMs = 0;
  await start();
  await waitFor('every change', () => gw.ids().includes(first + count - 1));
  const ids = gw.ids().filter((id) => id >= first);
  assert.deepEqual(ids, Array.from({ length: count }, (_, i) => first + i), 'each change once, in order');
});
