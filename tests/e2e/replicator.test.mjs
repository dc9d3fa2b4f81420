// The replicator as an operator meets it: health while the database is up and down, and a clear
// message when it cannot start.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, startProcess } from '../stack/process.mjs';
import { replicatorBinary, startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';

let pg;
before(async () => (pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-replicator', 'postgres') })));
after(async () => pg?.destroy());

test('/healthz is 200 while the database answers and 503 once it is gone', async () => {
  const replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
  try {
    const up = await fetch(`${replicator.url}/healthz`);
    assert.equal(up.status, 200);
    assert.deepEqual(await up.json(), { status: 'ok', database: 'connected' });
    await pg.stop();
    const down = await fetch(`${replicator.url}/healthz`);
    assert.equal(down.status, 503);
    assert.equal((await down.json()).status, 'error');
  } finally {
    await replicator.stop();
    await pg.start();
  }
});

test('an unreachable database stops the replicator at start with what to fix', async () => {
  const port = await freePort();
  const proc = startProcess('replicator', replicatorBinary(ROOT), [], {
    env: { SLUICE_DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres`, NO_COLOR: '1' },
  });
  const { code } = await proc.exited;
  assert.equal(code, 1);
  const out = proc.lines.join('\n');
  assert.match(out, new RegExp(`cannot connect to Postgres at 127\\.0\\.0\\.1:${port}/postgres`));
  assert.match(out, /check SLUICE_DATABASE_URL/);
});

test('a missing setting stops it with the variable to set', async () => {
  const proc = startProcess('replicator', replicatorBinary(ROOT), [], { env: { SLUICE_DATABASE_URL: '' } });
  assert.equal((await proc.exited).code, 1);
  assert.match(proc.lines.join('\n'), /SLUICE_DATABASE_URL is not set/);
});
