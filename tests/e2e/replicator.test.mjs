// The replicator as an operator meets it: health while the database is up and down, a clear
// message when it cannot start, the publication and persistent slot it sets up, and the pgoutput
// stream it reads (changes made while it is down are not lost).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, startProcess, waitFor } from '../stack/process.mjs';
import { replicatorBinary, startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';
import { DEV_INTERNAL_SECRET } from '../stack/keys.mjs';

let pg;
before(async () => (pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-replicator', 'postgres') })));
after(async () => pg?.destroy());

test('/healthz is 200 while the database answers, 503 while it is gone, 200 again after it restarts', async () => {
  const replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
  try {
    const up = await fetch(`${replicator.url}/healthz`);
    assert.equal(up.status, 200);
    const body = await up.json();
    assert.deepEqual([body.status, body.database], ['ok', 'connected']);
    assert.ok(['connected', 'disconnected'].includes(body.replication), 'it says whether the stream is up');
    await pg.stop();
    const down = await fetch(`${replicator.url}/healthz`);
    assert.equal(down.status, 503);
    assert.equal((await down.json()).status, 'error');
    await pg.start();
    const again = await fetch(`${replicator.url}/healthz`);
    assert.equal(again.status, 200, 'the SQL connection was reopened');
  } finally {
    await replicator.stop();
  }
});

test('an unreachable database stops the replicator at start with what to fix', async () => {
  const port = await freePort();
  const proc = startProcess('replicator', replicatorBinary(ROOT), [], {
    env: { SLUICE_DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres`, SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET, SLUICE_GATEWAY_URL: 'http://127.0.0.1:9', NO_COLOR: '1' },
  });
  const { code } = await proc.exited;
  assert.equal(code, 1);
  const out = proc.lines.join('\n');
  assert.match(out, new RegExp(`cannot connect to Postgres at 127\\.0\\.0\\.1:${port}/postgres`));
  assert.match(out, /check SLUICE_DATABASE_URL/);
});

test('a missing setting stops it with the variable to set', async () => {
  const noUrl = startProcess('replicator', replicatorBinary(ROOT), [], { env: { SLUICE_DATABASE_URL: '' } });
  assert.equal((await noUrl.exited).code, 1);
  assert.match(noUrl.lines.join('\n'), /SLUICE_DATABASE_URL is not set/);
  const noSecret = startProcess('replicator', replicatorBinary(ROOT), [], { env: { SLUICE_DATABASE_URL: pg.url, SLUICE_INTERNAL_SECRET: 'short' } });
  assert.equal((await noSecret.exited).code, 1);
  assert.match(noSecret.lines.join('\n'), /SLUICE_INTERNAL_SECRET is missing or shorter than 32 characters/);
  const noGateway = startProcess('replicator', replicatorBinary(ROOT), [], { env: { SLUICE_DATABASE_URL: pg.url, SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET } });
  assert.equal((await noGateway.exited).code, 1);
  assert.match(noGateway.lines.join('\n'), /SLUICE_GATEWAY_URL is missing or not an http\(s\) URL: set it to the gateway Worker/);
});

/** Reads a counter from the replicator's /metrics. */
async function metric(replicator, name) {
  const text = await (await fetch(`${replicator.url}/metrics`)).text();
  return Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);
}

test('sets up an empty publication and a persistent slot, and says how to add tables', async () => {
  // Earlier tests started a replicator on this database: start from nothing.
  await pg.sql('drop publication if exists supabase_realtime');
  await pg.sql("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = 'sluice_changes'");
  const lines = [];
  const replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort(), log: (l) => lines.push(l) });
  try {
    assert.ok(lines.some((l) => l.includes('created the empty publication supabase_realtime: add the tables to stream with ALTER PUBLICATION supabase_realtime ADD TABLE')), lines.join('\n'));
    const [slot] = await pg.sql("select plugin, temporary from pg_replication_slots where slot_name = 'sluice_changes'");
    assert.deepEqual(slot, { plugin: 'pgoutput', temporary: false });
    assert.deepEqual(await pg.sql("select count(*)::int as n from pg_publication_tables where pubname = 'supabase_realtime'"), [{ n: 0 }]);
  } finally {
    await replicator.stop();
  }
});

test('decodes inserts, updates and deletes (not truncates), and streams what changed while it was killed', async () => {
  // The replicator creates the publication if needed; the table joins it while streaming.
  let replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
  try {
    await waitFor('the stream', async () => (await metric(replicator, 'sluice_replication_connected')) === 1);
    await pg.sql('create table public.notes (id int primary key, body text)');
    await pg.sql('alter publication supabase_realtime add table public.notes');
    await pg.sql("insert into notes values (1, 'a'), (2, 'b'), (3, 'c')");
    await pg.sql("update notes set body = 'z' where id = 1");
    await pg.sql('delete from notes where id = 2');
    await pg.sql('truncate notes');
    await waitFor('5 decoded changes', async () => (await metric(replicator, 'sluice_changes_total')) === 5);

    replicator.proc.child.kill('SIGKILL');
    await replicator.proc.exited;
    await pg.sql("insert into notes values (10, 'while'), (11, 'down'), (12, 'x'), (13, 'y')");
    replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
    // The persistent slot kept them: the new process streams at least those four.
    await waitFor('the 4 changes made while down', async () => (await metric(replicator, 'sluice_changes_total')) >= 4);
    await waitFor('the slot to catch up', async () => (await metric(replicator, 'sluice_slot_lag_bytes')) === 0, { timeoutMs: 20_000 });
  } finally {
    await replicator.stop();
  }
});

test('the stream survives a Postgres restart and picks up changes made after it', async () => {
  const replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
  try {
    await waitFor('the stream', async () => (await metric(replicator, 'sluice_replication_connected')) === 1);
    await pg.sql('create table if not exists public.restarts (id int primary key)');
    await pg.sql('alter publication supabase_realtime add table public.restarts').catch(() => {});
    const before = await metric(replicator, 'sluice_changes_total');
    await pg.stop();
    await waitFor('the stream to notice', async () => (await metric(replicator, 'sluice_replication_connected')) === 0);
    await pg.start();
    await pg.sql('insert into restarts values (1), (2)');
    await waitFor('the stream to reconnect and decode 2 changes', async () => (await metric(replicator, 'sluice_changes_total')) >= before + 2, { timeoutMs: 45_000 });
    assert.equal(await metric(replicator, 'sluice_replication_connected'), 1);
  } finally {
    await replicator.stop();
  }
});

test('a database without wal_level=logical stops it at start with the fix', async () => {
  const replica = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-replicator', 'replica'), settings: { wal_level: 'replica' } });
  try {
    const proc = startProcess('replicator', replicatorBinary(ROOT), [], {
      env: { SLUICE_DATABASE_URL: replica.url, SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET, SLUICE_GATEWAY_URL: 'http://127.0.0.1:9', NO_COLOR: '1' },
    });
    assert.equal((await proc.exited).code, 1);
    assert.match(proc.lines.join('\n'), /wal_level is replica, and logical replication needs logical: run ALTER SYSTEM SET wal_level = logical .* and restart Postgres/);
  } finally {
    await replica.destroy();
  }
});

test('replicators starting at once on a fresh database set it up once, and all start', async () => {
  await pg.sql('create database fresh');
  const databaseUrl = pg.url.replace(/\/postgres$/, '/fresh');
  const started = await Promise.all(['a', 'b', 'c'].map(async (name) =>
    startReplicator({ root: ROOT, databaseUrl, port: await freePort(), env: { SLUICE_SLOT: `sluice_${name}` } })));
  try {
    for (const replicator of started) assert.equal((await fetch(`${replicator.url}/healthz`)).status, 200);
    const fresh = `select (select array_agg(version order by version) from sluice.migrations) as versions,
      (select count(*)::int from pg_publication) as publications,
      (select count(*)::int from pg_replication_slots where database = 'fresh') as slots`;
    const client = new (await import('pg')).default.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const [row] = (await client.query(fresh)).rows;
      assert.deepEqual(row, { versions: [1, 2, 3, 4, 5], publications: 2, slots: 3 }, "each migration applied once");
    } finally {
      await client.end();
    }
  } finally {
    await Promise.all(started.map((r) => r.stop()));
  }
});
