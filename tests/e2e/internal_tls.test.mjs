// The internal API over HTTPS, as between a Worker on Cloudflare and a replicator on the
// internet: the replicator serves HTTPS with its own certificate and the gateway (workerd) checks
// it; the replicator reaches the gateway through TLS and checks the gateway's certificate. Every
// request is signed; the secret itself never travels. Postgres Changes flow end to end.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { getCACertificates, setDefaultCACertificates } from 'node:tls';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeCertificates } from '../stack/tls.mjs';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
// The gateway trusts the test CA as a deployed Worker trusts public ones: the test harness sends
// the Worker's outbound requests from this process (Node's CA store), and workerd reads
// NODE_EXTRA_CA_CERTS when miniflare loads, before the stack is imported.
const tls = makeCertificates(join(ROOT, '.local', 'e2e-internal-tls', 'tls'));
process.env.NODE_EXTRA_CA_CERTS = tls.ca;
setDefaultCACertificates([...getCACertificates('default'), readFileSync(tls.ca, 'utf8')]);
const { startStack } = await import('../stack/stack.mjs');
const { get, replicatorBinary, startReplicator } = await import('../stack/replicator.mjs');
const { DEV_INTERNAL_SECRET, signJwt } = await import('../stack/keys.mjs');
const { freePort } = await import('../stack/process.mjs');
const { done, Inbox, pgChannel, supabase } = await import('./clients.mjs');
const { execFile } = await import('node:child_process');

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-internal-tls', internalTls: tls });
  await stack.pg.createRoles('anon');
  await stack.pg.sql(`create table public.tls_notes (id int primary key, body text);
    grant select on public.tls_notes to anon;
    alter publication supabase_realtime add table public.tls_notes`);
});
after(() => stack?.stop());

test('the replicator speaks only HTTPS, with a certificate of the given CA', async () => {
  assert.match(stack.replicator.url, /^https:\/\/localhost:\d+$/);
  assert.equal((await get(`${stack.replicator.url}/healthz`, tls.ca)).status, 200);
  await assert.rejects(get(`${stack.replicator.url}/healthz`, tls.otherCa), /self-signed certificate|unable to verify|unknown ca/i);
  await assert.rejects(get(stack.replicator.url.replace('https:', 'http:') + '/healthz'), /socket hang up|ECONNRESET|parse/i);
});

test('Postgres Changes flow with the internal API over TLS both ways', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const inbox = new Inbox('tls_notes');
  try {
    // The join registers through the gateway's HTTPS call to the replicator...
    await pgChannel(client, 'tls-room', [{ binding: { event: 'INSERT', schema: 'public', table: 'tls_notes' }, inbox }]);
    // ...and the change comes back through the replicator's HTTPS call to the gateway.
    await stack.pg.sql(`insert into public.tls_notes values (1, 'over tls')`);
    assert.equal((await inbox.next(15_000)).new.body, 'over tls');
  } finally {
    await done(client);
  }
});

test("the replicator refuses a gateway whose certificate it cannot verify", async () => {
  const env = { ...process.env, SLUICE_DATABASE_URL: stack.pg.replicatorUrl, SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET,
    SLUICE_GATEWAY_URL: stack.proxy.url, SLUICE_HTTP_ADDR: '127.0.0.1:0', NO_COLOR: '1' };
  const doctor = (extra) => new Promise((resolve) => execFile(replicatorBinary(ROOT), ['doctor'], { env: { ...env, ...extra } },
    (error, stdout) => resolve({ code: error ? error.code : 0, stdout })));
  const trusted = await doctor({ SLUICE_GATEWAY_CA: tls.ca });
  assert.match(trusted.stdout, /^\[ok {2}\] gateway: https:\/\/localhost:\d+ takes the internal secret$/m);
  const untrusted = await doctor({ SLUICE_GATEWAY_CA: tls.otherCa });
  assert.equal(untrusted.code, 1);
  assert.match(untrusted.stdout, /^\[FAIL\] gateway: https:\/\/localhost:\d+: the gateway is unavailable \(.*(certificate|UnknownIssuer)/m);
});

test('the gateway does not send internal requests in clear text off loopback', async () => {
  const plain = await startStack({ name: 'e2e-internal-plain', vars: { REPLICATOR_URL: 'http://replicator.example.com:9187' } });
  const client = supabase(plain.url, plain.keys.anon);
  try {
    await assert.rejects(pgChannel(client, 'plain', [{ binding: { event: '*', schema: 'public' }, inbox: new Inbox() }]),
      /Realtime was unable to connect to the project database/);
    assert.ok(plain.gateway.logLines().some((l) => l.includes('REPLICATOR_URL=http://replicator.example.com:9187 would carry internal requests in clear text: use https://')));
  } finally {
    await done(client);
    await plain.stop();
  }
});

test('a replicator listening off loopback: /healthz says up or down only, /metrics needs a token signed with SLUICE_METRICS_JWT_SECRET', async () => {
  // On loopback (the stack's replicator) both are open and /healthz says why.
  const local = JSON.parse((await get(`${stack.replicator.url}/healthz`, tls.ca)).body);
  assert.equal(local.database, 'connected');
  assert.equal((await get(`${stack.replicator.url}/metrics`, tls.ca)).status, 200);

  const port = await freePort();
  const exposed = (env) => startReplicator({ root: ROOT, databaseUrl: stack.pg.replicatorUrl, port, tls,
    env: { SLUICE_HTTP_ADDR: `0.0.0.0:${port}`, SLUICE_SLOT: 'sluice_exposed', ...env } });
  const url = `https://localhost:${port}`;
  let replicator = await exposed({});
  try {
    assert.deepEqual(await get(`${url}/healthz`, tls.ca), { status: 200, body: '{"status":"ok"}' });
    const open = await get(`${url}/metrics`, tls.ca);
    assert.equal(open.status, 403, 'no metrics secret: nobody reads /metrics off loopback');
    assert.match(JSON.parse(open.body).error, /set SLUICE_METRICS_JWT_SECRET/);
    await replicator.stop();

    const secret = 'a-metrics-secret-of-at-least-32-characters';
    replicator = await exposed({ SLUICE_METRICS_JWT_SECRET: secret });
    const metrics = (token) => get(`${url}/metrics`, tls.ca, token ? { authorization: `Bearer ${token}` } : {});
    assert.equal((await metrics()).status, 403);
    assert.equal((await metrics(signJwt({ role: 'metrics' }, 'another-secret-of-at-least-32-characters'))).status, 403);
    assert.equal((await metrics(signJwt({ role: 'metrics', exp: Math.floor(Date.now() / 1000) - 10 }, secret))).status, 403, 'expired');
    const scraped = await metrics(signJwt({ role: 'metrics' }, secret));
    assert.equal(scraped.status, 200);
    assert.match(scraped.body, /^sluice_changes_total \d+$/m);
  } finally {
    await replicator.stop();
    await stack.pg.sql(`select pg_drop_replication_slot('sluice_exposed') from pg_replication_slots where slot_name = 'sluice_exposed'`);
  }
});
