// A database configured as managed ones are (TLS only, the replicator a non-superuser prepared by
// the SQL it prints): what the replicator says at start when TLS is wrong, and `doctor` against
// a good and a broken database. (Every stack of the other suites runs this way too: TLS with
// sslmode=verify-full and the printed role.)
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DEV_INTERNAL_SECRET } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, startProcess, waitFor } from '../stack/process.mjs';
import { prepareReplicatorRole, replicatorBinary, startReplicator } from '../stack/replicator.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';

/** Runs the replicator binary to its end; resolves with its exit code and output. */
function replicator(args, env) {
  return new Promise((resolve) => {
    execFile(replicatorBinary(ROOT), args, { env: { ...process.env, NO_COLOR: '1', SLUICE_HTTP_ADDR: '127.0.0.1:0', ...env }, timeout: 60_000 },
      (error, stdout, stderr) => resolve({ code: error ? error.code : 0, stdout, stderr }));
  });
}

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-managed' });
  await stack.pg.createRoles('authenticated');
  await stack.pg.sql(`create table public.notes (id int primary key, body text);
    alter table public.notes enable row level security;
    create policy signed_in on public.notes for select to authenticated using (true);
    grant select on public.notes to authenticated;
    alter publication supabase_realtime add table public.notes`);
});
after(() => stack?.stop());

const withUrl = (url) => ({ SLUICE_DATABASE_URL: url, SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET, SLUICE_GATEWAY_URL: stack.url });

test('the replicator runs as the printed role: not a superuser, with REPLICATION, NOINHERIT', async () => {
  const [role] = await stack.pg.sql(`select rolsuper, rolreplication, rolinherit from pg_roles where rolname = 'sluice'`);
  assert.deepEqual(role, { rolsuper: false, rolreplication: true, rolinherit: false });
  // The replicator answers /healthz (the stack's ready signal) just before its replication stream
  // opens: wait for the stream, then check who it is.
  const seen = await waitFor('the replicator\'s replication connection', async () =>
    (await stack.pg.sql(`select usename, ssl from pg_stat_replication join pg_stat_ssl using (pid)`))[0]);
  assert.deepEqual(seen, { usename: 'sluice', ssl: true });
});

test('a CA that did not sign the server certificate stops the start with the fix', async () => {
  const url = stack.pg.replicatorUrl.replace(encodeURIComponent(stack.pg.ca), encodeURIComponent(stack.pg.otherCa));
  const { code, stderr } = await replicator([], withUrl(url));
  assert.equal(code, 1);
  assert.match(stderr, /the server's certificate does not verify against sslrootcert=\S+other-ca\.crt: set sslrootcert in SLUICE_DATABASE_URL to the CA certificate that signed the server's/);
});

test('verify-full checks the host name, verify-ca only the chain (libpq key=value form)', async () => {
  // A name the certificate does not list, reached at the server's address.
  const settings = (mode) => `host=db.example.invalid hostaddr=127.0.0.1 port=${stack.pg.port} user=sluice password='sluice-test-password' dbname=postgres sslmode=${mode} sslrootcert='${stack.pg.ca}'`;
  const full = await replicator(['doctor'], withUrl(settings('verify-full')));
  assert.equal(full.code, 1);
  assert.match(full.stdout, /^\[FAIL\] connection: db\.example\.invalid:\d+\/postgres \(sslmode=verify-full\) \(.*\): the server's certificate is not issued for host db\.example\.invalid: connect with a host name the certificate lists/m);
  const ca = await replicator(['doctor'], withUrl(settings('verify-ca')));
  assert.match(ca.stdout, /^\[ok {2}\] TLS: TLSv1\.\d, server certificate verified \(sslmode=verify-ca\)$/m);
});

test('a connection without TLS, refused by the server, is reported with the fix', async () => {
  const url = stack.pg.replicatorUrl.replace(/\?.*$/, '?sslmode=disable');
  const { code, stderr } = await replicator([], withUrl(url));
  assert.equal(code, 1);
  assert.match(stderr, /the server refuses connections without TLS: set sslmode=verify-full with sslrootcert=<CA file>/);
});

test('doctor passes a good database and the gateway', async () => {
  const { code, stdout } = await replicator(['doctor'], withUrl(stack.pg.replicatorUrl));
  assert.equal(code, 0, stdout);
  for (const line of [
    /^\[ok {2}\] TLS: TLSv1\.\d, server certificate verified \(sslmode=verify-full\)$/m,
    /^\[ok {2}\] wal_level: logical$/m,
    /^\[ok {2}\] role: sluice may replicate and is not a superuser$/m,
    /^\[ok {2}\] pooler: a direct \(or session-mode\) connection$/m,
    /^\[ok {2}\] API roles: sluice can become anon, authenticated, service_role$/m,
    /^\[ok {2}\] slot: sluice_changes in use, wal_status reserved, retains \d+ kB$/m,
    /^\[ok {2}\] public\.notes: primary key, REPLICA IDENTITY DEFAULT, RLS on, SELECT for authenticated$/m,
    /^\[ok {2}\] public\.notes policy \S+: indexed/m,
    /^\[ok {2}\] gateway: http:\/\/\S+ takes the internal secret$/m,
  ]) assert.match(stdout, line);
  assert.doesNotMatch(stdout, /\[FAIL\]/);
  const wrongSecret = await replicator(['doctor'], { ...withUrl(stack.pg.replicatorUrl), SLUICE_INTERNAL_SECRET: 'x'.repeat(40) });
  assert.equal(wrongSecret.code, 1);
  assert.match(wrongSecret.stdout, /^\[FAIL\] gateway: \S+: the gateway refused the internal secret/m);
});

describe('doctor against a broken database', () => {
  let pg;
  before(async () => {
    pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-doctor-broken', 'postgres'), settings: { wal_level: 'replica' } });
    await pg.sql(`create table public.nokey (body text); create table public.open (id int primary key);
      create table public.guarded (id int primary key, owner text); alter table public.guarded enable row level security;
      create policy by_helper on public.guarded for select using (lower(owner) = current_user);
      create publication supabase_realtime for table public.nokey, public.open, public.guarded`);
  });
  after(() => pg?.destroy());

  test('names each problem with its fix and exits non-zero', async () => {
    const { code, stdout } = await replicator(['doctor'], withUrl(pg.url));
    assert.equal(code, 1, stdout);
    for (const line of [
      /^\[FAIL\] wal_level: replica; logical replication needs logical: ALTER SYSTEM SET wal_level = logical, then restart Postgres/m,
      /^\[warn\] role: postgres is a superuser; least privilege: run as a role prepared by `sluice-replicator setup-sql`$/m,
      /^\[FAIL\] public\.nokey: UPDATE and DELETE on it fail \(no replica identity\): ALTER TABLE public\.nokey ADD PRIMARY KEY \(\.\.\.\) or ALTER TABLE public\.nokey REPLICA IDENTITY FULL; RLS is off/m,
      /^\[warn\] public\.open: RLS is off, every subscriber sees every row: ALTER TABLE public\.open ENABLE ROW LEVEL SECURITY and add policies; neither anon nor authenticated may SELECT it, their subscribers get Error 401: GRANT SELECT ON public\.open TO authenticated$/m,
      /^\[warn\] API roles: anon, authenticated, service_role do not exist/m,
      /^\[warn\] public\.guarded policy by_helper: checked for every subscriber: calls lower\(\), which is not a LANGUAGE sql helper whose body is one SELECT of these shapes; write its condition as `column = \(select auth\.uid\(\)\)`/m,
    ]) assert.match(stdout, line);
  });
});

describe('a pooler in transaction mode (PgBouncer)', () => {
  let pg;
  const bouncers = [];
  /** PgBouncer in transaction mode in front of `pg`; `ignoreOptions` lets the session options through. */
  async function bouncer(name, ignoreOptions) {
    const port = await freePort();
    const ini = join(pg.dir, `${name}.ini`);
    writeFileSync(ini, [
      '[databases]', `postgres = host=127.0.0.1 port=${pg.port} dbname=postgres user=postgres`,
      '[pgbouncer]', 'listen_addr = 127.0.0.1', `listen_port = ${port}`, 'unix_socket_dir =', 'auth_type = any',
      'pool_mode = transaction', ...(ignoreOptions ? ['ignore_startup_parameters = options'] : []), '',
    ].join('\n'));
    const proc = startProcess('pgbouncer', '/usr/sbin/pgbouncer', [ini], { ...pg.user });
    bouncers.push(proc);
    await waitFor('PgBouncer to listen', () => new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true); }).on('error', () => resolve(false));
    }));
    return `postgres://postgres@127.0.0.1:${port}/postgres?sslmode=disable`;
  }
  before(async () => {
    pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-pooler', 'postgres') });
  });
  after(async () => {
    for (const proc of bouncers) await proc.stop();
    await pg?.destroy();
  });

  test('stops the start with a message to use the direct or session-mode connection', async () => {
    const fix = /use the database's direct connection string, or the pooler's session mode/;
    // PgBouncer as installed refuses the session options the replicator sets...
    const refusing = await replicator([], withUrl(await bouncer('refusing', false)));
    assert.equal(refusing.code, 1);
    assert.match(refusing.stderr, fix);
    // ...and one that lets them through is recognised by its shared server sessions.
    const passing = await replicator([], withUrl(await bouncer('passing', true)));
    assert.equal(passing.code, 1);
    assert.match(passing.stderr, /cannot stream through this connection: the connection goes through a pooler in transaction mode/);
    const doctor = await replicator(['doctor'], withUrl(await bouncer('doctor', true)));
    assert.match(doctor.stdout, /^\[FAIL\] pooler: the connection goes through a pooler in transaction mode/m);
    // The direct connection passes the same check.
    const direct = await replicator(['doctor'], withUrl(pg.url));
    assert.match(direct.stdout, /^\[ok {2}\] pooler: a direct \(or session-mode\) connection$/m);
  });
});

describe("a database whose realtime schema belongs to another role (as Supabase's)", () => {
  let pg;
  let started;
  before(async () => {
    pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-foreign-realtime', 'postgres'), managed: true });
    await pg.sql(`create schema realtime;
      create table realtime.messages (topic text not null, extension text not null, payload jsonb, event text,
        private boolean default false, updated_at timestamp not null default now(), inserted_at timestamp not null default now(),
        id uuid not null default gen_random_uuid(), primary key (id, inserted_at)) partition by range (inserted_at)`);
    await prepareReplicatorRole(ROOT, pg);
  });
  after(async () => {
    await started?.stop();
    await pg?.destroy();
  });

  test('the non-superuser replicator starts, leaves it alone, and says what its owner runs to stream database broadcasts', async () => {
    const lines = [];
    started = await startReplicator({ root: ROOT, databaseUrl: pg.replicatorUrl, port: await freePort(), log: (l) => lines.push(l) });
    const [{ versions }] = await pg.sql('select array_agg(version order by version) as versions from sluice.migrations');
    assert.deepEqual(versions, [1, 2, 3, 4, 5]);
    const [{ owner, publications, partitions }] = await pg.sql(`select (select nspowner::regrole::text from pg_namespace where nspname = 'realtime') as owner,
      (select count(*)::int from pg_publication where pubname = 'sluice_messages') as publications,
      (select count(*)::int from pg_inherits where inhparent = 'realtime.messages'::regclass) as partitions`);
    assert.deepEqual({ owner, publications, partitions }, { owner: 'postgres', publications: 0, partitions: 0 });
    await waitFor('the log line', () => lines.some((l) => l.includes('Broadcast from the database is off: publication sluice_messages does not exist. The owner of realtime.messages creates it with: CREATE PUBLICATION sluice_messages FOR TABLE realtime.messages')));
  });
});
