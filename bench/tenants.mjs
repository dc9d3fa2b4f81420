// Many tenants served by one replicator process against one Postgres server with one database per
// tenant: listed in a tenants file (`--source file`, SLUICE_TENANTS_FILE: each tenant on its own
// address), or by the gateway's API (`--source api`: the deployment's replicator polls
// /internal/v1/databases and serves each under /tenants/<id> of its address). Prints one table: for each count of tenants, the start-up time
// (process start until every tenant's /healthz answers 200; first start, migrations included),
// the process's resident memory and what each idle tenant adds to it, the Postgres connections
// held, and commit-to-hub latency p50/p99 for one busy tenant (100 commits/s) while the others
// idle. The hub is a stand-in answering as the gateway does.
//
//   cargo build --release -p sluice-replicator
//   node_modules/.bin/node bench/tenants.mjs [--tenants 1,10,100] [--seconds 5] [--source file|api]
//
// A program, not a test: numbers depend on the machine, which also runs the load generator.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createHmac } from 'node:crypto';
import { DEV_INTERNAL_SECRET, signedRequest } from '../tests/stack/keys.mjs';
import { Postgres } from '../tests/stack/postgres.mjs';
import { freePort, waitFor } from '../tests/stack/process.mjs';
import { startReplicator } from '../tests/stack/replicator.mjs';
import { ROOT } from '../tests/stack/stack.mjs';

const { values: opts } = parseArgs({ options: { tenants: { type: 'string', default: '1,10,100' }, seconds: { type: 'string', default: '5' }, source: { type: 'string', default: 'file' } } });
const fromApi = opts.source === 'api';
process.env.SLUICE_REPLICATOR_PROFILE = 'release';
const log = (line) => console.error(`    ${line}`);
const now = () => performance.timeOrigin + performance.now();
const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);
const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

/** A stand-in gateway: answers change batches as a hub does, and times each change's arrival. */
async function standInGateway(onRecord, databases = {}) {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c)).on('end', () => {
      if (req.url === '/internal/v1/databases') return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ tenants: databases }));
      if (req.url.startsWith('/internal/v1/changes/')) {
        for (const change of JSON.parse(Buffer.concat(chunks).toString()).changes) {
          for (const p of change.payloads) onRecord(p.data.record);
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"gone":[]}');
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, stop: () => new Promise((r) => server.close(r)) };
}

const rssKiB = (pid) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m)[1]);

async function measure(count) {
  const dir = join(ROOT, '.local', `bench-tenants-${count}`);
  const slots = count + 10;
  const cluster = await Postgres.create({ dir: join(dir, 'postgres'), log, settings: {
    max_connections: count * 6 + 20, max_replication_slots: slots, max_wal_senders: slots, shared_buffers: '64MB',
  } });
  const latencies = [];
  let measuring = false;
  const databases = {};
  const gateway = await standInGateway((record) => measuring && latencies.push(now() - record.t), databases);
  let replicator;
  try {
    await cluster.sql(`create role anon nologin`);
    await cluster.sql(`create database template_tenant`);
    await cluster.sql(`create table items (id bigint primary key, t double precision not null);
      grant select on items to anon; create publication supabase_realtime for table items`, [], 'template_tenant');
    log(`creating ${count} tenant databases`);
    const tenants = {};
    for (let i = 0; i < count; i++) {
      await cluster.sql(`create database t${i} template template_tenant`);
      const url = new URL(cluster.url);
      url.pathname = `/t${i}`;
      tenants[`t${i}`] = { SLUICE_DATABASE_URL: url.toString(), SLUICE_HTTP_ADDR: `127.0.0.1:${await freePort()}` };
    }
    // Where each tenant's internal API is, and the secret it takes.
    const deployment = `127.0.0.1:${await freePort()}`;
    const apiOf = (t) => (fromApi ? `http://${deployment}/tenants/${t}` : `http://${tenants[t].SLUICE_HTTP_ADDR}`);
    const secretOf = (t) => (fromApi ? createHmac('sha256', DEV_INTERNAL_SECRET).update(`sluice deployment replicator, tenant ${t}`).digest('hex') : DEV_INTERNAL_SECRET);
    if (fromApi) {
      const server = new URL(cluster.url);
      for (const t of Object.keys(tenants)) databases[t] = { db_host: server.hostname, db_port: server.port, db_name: t, db_user: server.username };
    }
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'tenants.json');
    writeFileSync(file, JSON.stringify({ tenants }));
    log(`starting one replicator for ${count} tenants`);
    const started = now();
    replicator = await startReplicator({
      root: ROOT, databaseUrl: cluster.url, port: Number((fromApi ? deployment : tenants.t0.SLUICE_HTTP_ADDR).split(':')[1]), gatewayUrl: gateway.url,
      env: { ...(fromApi ? {} : { SLUICE_TENANTS_FILE: file }), RUST_LOG: 'warn' },
    });
    await waitFor(`${count} tenants healthy`, async () => {
      const answers = await Promise.all(Object.keys(tenants).map((t) => fetch(`${apiOf(t)}/healthz`).then((r) => r.status === 200, () => false)));
      return answers.every(Boolean);
    }, { timeoutMs: 600_000, intervalMs: 200 });
    const startup = (now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 2000)); // idle a moment before reading memory
    const rss = rssKiB(replicator.proc.child.pid);
    const connections = Number((await cluster.sql(`select count(*)::int as n from pg_stat_activity where backend_type in ('client backend', 'walsender') and application_name <> 'psql'`))[0].n);

    // One busy tenant: a subscriber on t0, 100 commits/s stamped with their commit-time clock.
    const api = `${apiOf('t0')}/v1/subscriptions`;
    const res = await fetch(api, signedRequest('POST', api, { hub: 'hub:t0:default:0', socket: 's', topic: 'realtime:items', claims: { role: 'anon', exp: 9999999999 }, bindings: [{ event: 'INSERT', schema: 'public', table: 'items' }] }, { secret: secretOf('t0') }));
    if (!res.ok) throw new Error(`subscribing: ${res.status} ${await res.text()}`);
    const db = new pg.Client({ connectionString: tenants.t0.SLUICE_DATABASE_URL });
    await db.connect();
    measuring = true;
    const seconds = Number(opts.seconds);
    let id = 0;
    const begin = now();
    while (now() - begin < seconds * 1000) {
      const tick = now();
      await db.query('insert into items values ($1, $2)', [++id, now()]);
      const wait = 10 - (now() - tick);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    await db.end();
    await waitFor('the last changes', () => latencies.length >= id, { timeoutMs: 30_000, intervalMs: 20 }).catch(() => {});
    latencies.sort((a, b) => a - b);
    return { count, startup, rss, connections, sent: id, delivered: latencies.length, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
  } finally {
    await replicator?.stop();
    await gateway.stop();
    await cluster.destroy();
  }
}

const rows = [];
for (const count of opts.tenants.split(',').map(Number)) {
  console.error(`==> ${count} tenants`);
  rows.push(await measure(count));
}
const single = rows.find((r) => r.count === 1);
console.log(`\n### Tenants served by one replicator process (one database each, one Postgres server; listed by ${fromApi ? "the gateway's API" : 'a tenants file'})\n`);
console.log('| tenants | start-up s | resident MiB | per idle tenant MiB | Postgres connections | busy tenant: delivered | p50 ms | p99 ms |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const perTenant = single && r.count > 1 ? (r.rss - single.rss) / (r.count - 1) / 1024 : r.rss / r.count / 1024;
  console.log(`| ${r.count} | ${fmt(r.startup, 2)} | ${fmt(r.rss / 1024)} | ${fmt(perTenant, 2)} | ${r.connections} | ${r.delivered}/${r.sent} | ${fmt(r.p50)} | ${fmt(r.p99)} |`);
}
