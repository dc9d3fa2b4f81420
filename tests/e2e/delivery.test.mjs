// The replicator's delivery discipline, against a stand-in gateway we can make fail: while a hub
// cannot be reached the replicator retries and does not confirm the slot, so even a replicator
// killed meanwhile delivers every change once the gateway is back; gone channels are dropped.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { DEV_INTERNAL_SECRET } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, waitFor } from '../stack/process.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';

/** A gateway stand-in: records batches per hub; answers 503 while `failing`, else the receipt. */
async function fakeGateway() {
  const gw = { batches: [], failing: false, gone: [], attempts: 0, authorizations: new Set() };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      gw.attempts++;
      gw.authorizations.add(req.headers.authorization);
      if (gw.failing) {
        res.writeHead(503).end('down');
        return;
      }
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
  const res = await fetch(`${replicator.url}/v1/subscriptions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${DEV_INTERNAL_SECRET}`, 'content-type': 'application/json' },
    body: JSON.stringify({ hub: 'hub:t:na:0', socket, topic: 'realtime:r', claims: { role: 'anon', exp: 9999999999 }, bindings: [{ event: 'INSERT', schema: 'public', table: 't' }] }),
  });
  assert.equal(res.status, 200, await res.text());
}

const metric = async (name) => Number((await (await fetch(`${replicator.url}/metrics`)).text()).match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);

test('changes go to /internal/v1/changes/{hub} with the shared secret, with positions and recipients', async () => {
  await subscribe('s1');
  await pg.sql('insert into t values (1)');
  await waitFor('a batch', () => gw.ids().includes(1));
  const [batch] = gw.batches;
  assert.equal(batch.url, `/internal/v1/changes/${encodeURIComponent('hub:t:na:0')}`);
  assert.deepEqual([...gw.authorizations], [`Bearer ${DEV_INTERNAL_SECRET}`]);
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
