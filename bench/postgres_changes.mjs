// Postgres Changes benchmarks. Prints one table per workload:
//
//   1. throughput: changes/s decoded, filtered and dispatched by the replicator, to a null sink (a
//      local HTTP server answering like a hub) and to the real gateway with supabase-js clients,
//      for small and 1 KB rows;
//   2. rls: deliveries/s with 1,000 subscribers as 1,000 distinct users on one RLS table, sluice's
//      batched checks against the per-change-per-subscriber design (Supabase's `apply_rls`),
//      implemented below as a baseline on the same database;
//   3. latency: commit to supabase-js callback, p50/p95/p99, at 100 and 1,000 changes/s through
//      the whole local stack (Postgres, replicator, wrangler dev);
//   4. joins: subscribe() to SUBSCRIBED, p50/p99, for channels without and with postgres_changes
//      bindings (the latter wait until changes committed afterwards will be delivered), with the
//      stream idle and with 1,000 changes/s flowing;
//   5. owners: per-user rows (`user_id = auth.uid()`, both forms) for S = 100, 1,000, 10,000
//      subscribed users, each row visible to one, against the per-change-per-subscriber design;
//   6. rooms: chat rooms whose audience is a membership table, the same comparison;
//   7. steady: commit-to-hub p50/p99 at 100 changes/s with S = 1,000 per-user subscribers;
//   8. forms: one row per RLS policy spelling (casts, helpers, OR with a role, arrays, joins), each row
//      visible to its owner, S = 1,000 and 10,000 (`--only forms`).
//
//   cargo build --release -p sluice-replicator && scripts/build-worker
//   node_modules/.bin/node bench/postgres_changes.mjs [--only throughput,rls,latency,joins,owners,rooms,steady,forms]
//     [--rows 50000] [--seconds 5] [--users 100,1000,10000] [--form <text in a form's label>]
//   owners, rooms, steady, forms (RLS at scale) are not in the default set: they take minutes.
//
// It runs the release build of the replicator (target/release).
// A program, not a test: numbers depend on the machine, which also runs the load generator.
import http from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { done, Inbox, pgChannel, subscribe, supabase } from '../tests/e2e/clients.mjs';
import { signedRequest, tokenFor } from '../tests/stack/keys.mjs';
import { Postgres } from '../tests/stack/postgres.mjs';
import { freePort, waitFor } from '../tests/stack/process.mjs';
import { startReplicator } from '../tests/stack/replicator.mjs';
import { ROOT, startStack } from '../tests/stack/stack.mjs';

const { values: opts } = parseArgs({ options: {
  only: { type: 'string', default: 'throughput,rls,latency,joins' },
  users: { type: 'string' },
  form: { type: 'string' }, // --only forms: just the forms whose label holds this text
  rows: { type: 'string', default: '50000' },
  seconds: { type: 'string', default: '5' },
} });
const only = new Set(opts.only.split(','));
process.env.SLUICE_REPLICATOR_PROFILE = 'release';
const ROWS = Number(opts.rows);
const log = (line) => console.error(`    ${line}`);
const now = () => performance.timeOrigin + performance.now();
const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);
const fmt = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');
const SCHEMA = `
  create role authenticated nologin;
  create table small (id bigint primary key, n int);
  create table kb (id bigint primary key, body text);
  create table rls_items (id bigint primary key, bucket int not null);
  alter table rls_items enable row level security;
  create policy by_bucket on rls_items for select
    using (bucket = (current_setting('request.jwt.claims', true)::jsonb ->> 'bucket')::int);
  grant select on all tables in schema public to authenticated;
  create publication supabase_realtime for table small, kb, rls_items;`;

/** An HTTP server that answers change batches as a hub would, counting what it receives. */
async function nullSink(onPayload = () => {}) {
  const counts = { changes: 0, deliveries: 0, requests: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      // The deployment's replicator asks which tenant databases to serve: none here.
      if (req.url === '/internal/v1/databases') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"tenants":{}}');
      const batch = JSON.parse(Buffer.concat(chunks).toString());
      counts.requests++;
      counts.changes += batch.changes.length;
      for (const c of batch.changes) {
        for (const p of c.payloads) {
          counts.deliveries += p.to.length;
          onPayload(p);
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"gone":[]}');
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, counts, stop: () => new Promise((r) => server.close(r)) };
}

/** Registers one channel's bindings with the replicator directly, as a hub would. */
async function register(replicatorUrl, socket, claims, bindings) {
  const url = `${replicatorUrl}/v1/subscriptions`;
  const res = await fetch(url, signedRequest('POST', url, { hub: 'hub:bench:na:0', socket, topic: 'realtime:bench', claims, bindings }));
  if (!res.ok) throw new Error(`registering ${socket}: ${res.status} ${await res.text()}`);
}

/** Inserts `rows` rows into `table` in transactions of `perTx`, from a second connection pool. */
async function insertRows(db, table, rows, perTx, startId = 1) {
  const value = table === 'kb' ? "repeat('x', 1000)" : table === 'rls_items' ? 'g % 10' : 'g';
  for (let first = startId; first < startId + rows; first += perTx) {
    const last = Math.min(first + perTx, startId + rows) - 1;
    await db.query(`insert into ${table} select g, ${value} from generate_series($1::bigint, $2::bigint) g`, [first, last]);
  }
}

/** Waits until `count()` reaches `target`; the seconds it took since `started` (NaN if it never did). */
async function timeUntil(count, target, started, what) {
  try {
    await waitFor(what, () => count() >= target, { timeoutMs: 120_000, intervalMs: 5 });
    return (now() - started) / 1000;
  } catch {
    log(`only ${count()} of ${target} arrived (${what})`);
    return NaN;
  }
}

async function withDatabase(name, fn) {
  const database = await Postgres.create({ dir: join(ROOT, '.local', `bench-${name}`, 'postgres'), log });
  const db = new pg.Client({ connectionString: database.url });
  try {
    await db.connect();
    await db.query(SCHEMA);
    return await fn(database, db);
  } finally {
    await db.end();
    await database.destroy();
  }
}

async function throughput() {
  const results = [];
  // To a null sink: the replicator's own cost.
  await withDatabase('throughput', async (database, db) => {
    const sink = await nullSink();
    const replicator = await startReplicator({ root: ROOT, databaseUrl: database.url, port: await freePort(), gatewayUrl: sink.url });
    try {
      for (let s = 0; s < 10; s++) {
        await register(replicator.url, `s${s}`, { role: 'authenticated', exp: 9999999999 }, [
          { event: '*', schema: 'public', table: 'small' },
          { event: 'INSERT', schema: 'public', table: 'kb', filter: `id=gt.${s}` },
        ]);
      }
      let nextId = 1;
      for (const [table, label] of [['small', 'small rows'], ['kb', '1 KB rows']]) {
        const base = { ...sink.counts };
        const started = now();
        await insertRows(db, table, ROWS, 1000, nextId);
        const inserted = (now() - started) / 1000;
        const secs = await timeUntil(() => sink.counts.changes - base.changes, ROWS, started, `${ROWS} changes at the sink`);
        const deliveries = sink.counts.deliveries - base.deliveries;
        results.push({ sink: 'null sink', label, rows: ROWS, subscribers: 10, inserted, secs, deliveries });
        nextId += ROWS;
      }
    } finally {
      await replicator.stop();
      await sink.stop();
    }
  });
  // Through the real gateway (wrangler dev) to supabase-js clients.
  const stack = await startStack({ name: 'bench-throughput-gw', gateway: 'wrangler', log: process.env.BENCH_VERBOSE ? log : () => {} });
  const clients = [];
  try {
    await stack.pg.sql(`create role anon nologin;
      create table small (id bigint primary key, n int); create table kb (id bigint primary key, body text);
      grant select on small, kb to anon; alter publication supabase_realtime add table small, kb`);
    const received = { n: 0 };
    const count = { push: () => received.n++ };
    for (let s = 0; s < 10; s++) {
      const client = supabase(stack.url, stack.keys.anon);
      clients.push(client);
      await pgChannel(client, `bench-${s}`, [
        { binding: { event: 'INSERT', schema: 'public', table: 'small' }, inbox: count },
        { binding: { event: 'INSERT', schema: 'public', table: 'kb' }, inbox: count },
      ]);
    }
    const db = new pg.Client({ connectionString: stack.pg.url });
    await db.connect();
    const rows = Math.min(ROWS, 10000);
    let nextId = 1;
    for (const [table, label] of [['small', 'small rows'], ['kb', '1 KB rows']]) {
      const base = received.n;
      const started = now();
      await insertRows(db, table, rows, 1000, nextId);
      const inserted = (now() - started) / 1000;
      const secs = await timeUntil(() => received.n - base, rows * 10, started, `${rows * 10} callbacks`);
      results.push({ sink: 'gateway (wrangler dev) → supabase-js', label, rows, subscribers: 10, inserted, secs, deliveries: rows * 10 });
      nextId += rows;
    }
    await db.end();
  } finally {
    await done(...clients);
    await stack.stop();
  }
  console.log('\n### 1. Replicator throughput (10 subscribing channels, inserts of 1,000 rows per transaction)\n');
  console.log('| delivered to | rows | changes | insert time s | all delivered after s | changes/s | deliveries/s |');
  console.log('|---|---|---:|---:|---:|---:|---:|');
  for (const r of results) {
    console.log(`| ${r.sink} | ${r.label} | ${r.rows} | ${fmt(r.inserted, 2)} | ${fmt(r.secs, 2)} | ${Math.round(r.rows / r.secs)} | ${Math.round(r.deliveries / r.secs)} |`);
  }
}

async function rls() {
  const USERS = 1000;
  const CHANGES = 2000;
  const rows = [];
  await withDatabase('rls', async (database, db) => {
    const sink = await nullSink();
    const replicator = await startReplicator({ root: ROOT, databaseUrl: database.url, port: await freePort(), gatewayUrl: sink.url });
    try {
      log(`registering ${USERS} users`);
      for (let u = 0; u < USERS; u += 50) {
        await Promise.all(Array.from({ length: 50 }, (_, k) => register(replicator.url, `u${u + k}`,
          { role: 'authenticated', sub: `user-${u + k}`, bucket: (u + k) % 10, exp: 9999999999 },
          [{ event: '*', schema: 'public', table: 'rls_items' }])));
      }
      // sluice: the replicator's batched checks.
      const started = now();
      await insertRows(db, 'rls_items', CHANGES, 100, 1);
      const expected = CHANGES * (USERS / 10); // each row is visible to the 100 users of its bucket
      const secs = await timeUntil(() => sink.counts.deliveries, expected, started, `${expected} deliveries`);
      rows.push({ design: 'sluice', changes: CHANGES, deliveries: sink.counts.deliveries, queries: await rlsQueries(replicator.url), secs });
    } finally {
      await replicator.stop();
      await sink.stop();
    }
    // The baseline: Supabase's apply_rls design, one visibility query per change per subscriber.
    const claims = Array.from({ length: USERS }, (_, u) => ({ role: 'authenticated', sub: `user-${u}`, bucket: u % 10 }));
    const base = await perSubscriberBaseline(db, 'rls_items', claims, 100);
    rows.push({ design: 'baseline: one query per change per subscriber', ...base, queries: base.changes * USERS });
  });
  console.log(`\n### 2. RLS: ${USERS} subscribers as ${USERS} distinct users on one RLS table (each row visible to ${USERS / 10})\n`);
  console.log('| design | changes | deliveries | visibility queries | seconds | deliveries/s | changes/s |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.design} | ${r.changes} | ${r.deliveries} | ${r.queries} | ${fmt(r.secs, 2)} | ${Math.round(r.deliveries / r.secs)} | ${fmt(r.changes / r.secs)} |`);
  }
}

async function latency() {
  const seconds = Number(opts.seconds);
  const rows = [];
  const stack = await startStack({ name: 'bench-latency', gateway: 'wrangler', log: () => {} });
  try {
    await stack.pg.sql(`create role anon nologin; create table lat (id bigserial primary key, t double precision not null);
      grant select on lat to anon; alter publication supabase_realtime add table lat`);
    const db = new pg.Client({ connectionString: stack.pg.url });
    await db.connect();
    for (const rate of [100, 1000]) {
      const client = supabase(stack.url, stack.keys.anon);
      const latencies = [];
      const inbox = { push: (p) => latencies.push(now() - p.new.t) };
      await pgChannel(client, `lat-${rate}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'lat' }, inbox }]);
      // One commit every 10 ms carrying rate/100 rows, each stamped with its commit-time clock.
      const perTick = rate / 100;
      let sent = 0;
      const started = now();
      while (now() - started < seconds * 1000) {
        const tickStart = now();
        await db.query('insert into lat (t) select $1::double precision from generate_series(1, $2)', [now(), perTick]);
        sent += perTick;
        const wait = 10 - (now() - tickStart);
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const achieved = sent / ((now() - started) / 1000);
      await waitFor('the last changes', () => latencies.length >= sent, { timeoutMs: 30_000, intervalMs: 20 }).catch(() => {});
      await done(client);
      latencies.sort((a, b) => a - b);
      rows.push({ rate, achieved, sent, delivered: latencies.length, p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), p99: percentile(latencies, 0.99) });
    }
    await db.end();
  } finally {
    await stack.stop();
  }
  console.log(`\n### 3. Commit to supabase-js callback, whole local stack (wrangler dev), ${seconds} s per rate\n`);
  console.log('| target changes/s | achieved | sent | delivered | p50 ms | p95 ms | p99 ms |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.rate} | ${Math.round(r.achieved)} | ${r.sent} | ${r.delivered} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} |`);
  }
}

async function joins() {
  const JOINS = 100;
  const rows = [];
  const stack = await startStack({ name: 'bench-joins', gateway: 'wrangler', log: () => {} });
  try {
    await stack.pg.sql(`create role anon nologin; create table joined (id bigserial primary key, n int);
      grant select on joined to anon; alter publication supabase_realtime add table joined`);
    const db = new pg.Client({ connectionString: stack.pg.url });
    await db.connect();
    for (const load of [0, 1000]) {
      // Background commits, one every 10 ms, while the joins are timed.
      let writing = load > 0;
      const writer = (async () => {
        while (writing) {
          await db.query('insert into joined (n) select 1 from generate_series(1, $1)', [load / 100]);
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      for (const bindings of [false, true]) {
        const client = supabase(stack.url, stack.keys.anon);
        const times = [];
        for (let i = 0; i < JOINS; i++) {
          const channel = client.channel(`join-${load}-${bindings}-${i}`);
          if (bindings) channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'joined', filter: `n=eq.${i + 2}` }, () => {});
          const started = now();
          await subscribe(channel);
          times.push(now() - started);
          await client.removeChannel(channel);
        }
        await done(client);
        times.sort((a, b) => a - b);
        rows.push({ load, bindings, p50: percentile(times, 0.5), p99: percentile(times, 0.99) });
      }
      writing = false;
      await writer;
    }
    await db.end();
  } finally {
    await stack.stop();
  }
  console.log(`\n### 4. subscribe() to SUBSCRIBED, whole local stack (wrangler dev), ${JOINS} joins each\n`);
  console.log('| changes/s flowing | channel | p50 ms | p99 ms |');
  console.log('|---:|---|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.load} | ${r.bindings ? 'one postgres_changes binding' : 'no bindings'} | ${fmt(r.p50)} | ${fmt(r.p99)} |`);
  }
}

const AUTH = `
  create schema auth;
  create function auth.uid() returns uuid language sql stable as $$
    select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
  grant usage on schema auth to authenticated;`;

/** `count` users, each registered as its own subscriber to INSERTs on `table`. */
async function registerUsers(replicatorUrl, ids, table) {
  for (let u = 0; u < ids.length; u += 50) {
    await Promise.all(ids.slice(u, u + 50).map((id, k) => register(replicatorUrl, `u${u + k}`,
      { role: 'authenticated', sub: id, exp: 9999999999 }, [{ event: 'INSERT', schema: 'public', table }])));
  }
}

/** Runs `insert` for `count` single-row commits from 4 connections; returns when all committed. */
async function insertConcurrently(pool, count, insert) {
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < count) {
      const i = next++;
      await insert(pool, i);
    }
  }));
}

/**
 * The per-change-per-subscriber design (Supabase's `apply_rls`: for each change, for each
 * subscriber, set its role and claims and ask for the row), on `sample` rows of `table`:
 * deliveries/s, the baseline of tables 5 and 6.
 */
async function perSubscriberBaseline(db, table, claims, sample) {
  await db.query('create table if not exists bench_subscribers (claims jsonb not null); truncate bench_subscribers');
  await db.query('insert into bench_subscribers select c from unnest($1::jsonb[]) c', [claims.map((c) => JSON.stringify(c))]);
  await db.query(`
    create or replace function bench_apply_rls(change_id bigint) returns int language plpgsql as $$
    declare
      s record;
      visible bool;
      n int := 0;
    begin
      for s in select claims from bench_subscribers loop
        perform set_config('role', 'authenticated', true);
        perform set_config('request.jwt.claims', s.claims::text, true);
        execute 'select exists(select 1 from public.${table} where id = $1)' into visible using change_id;
        if visible then n := n + 1; end if;
        perform set_config('role', 'postgres', true);
      end loop;
      return n;
    end $$`);
  const started = now();
  let deliveries = 0;
  for (let id = 1; id <= sample; id++) deliveries += (await db.query('select bench_apply_rls($1) as n', [id])).rows[0].n;
  return { changes: sample, deliveries, secs: (now() - started) / 1000 };
}

/** Queries the replicator counted as RLS work so far. */
async function rlsQueries(replicatorUrl) {
  const metrics = await (await fetch(`${replicatorUrl}/metrics`)).text();
  return Number(metrics.match(/^sluice_rls_queries_total (\S+)$/m)[1]);
}

/**
 * One RLS workload: the users in `ids` each subscribed to INSERTs on `table`, 2,000 single-row
 * commits (`insert(pool, id)`, each visible to `audience` users) twice — the first pass includes
 * what is done once per subscriber (computing each one's claim value), the second is the steady
 * state — then the per-change-per-subscriber design on a sample of the same rows.
 */
async function passesAndBaseline(database, db, ids, table, audience, insert, { baseline = true } = {}) {
  const rows = [];
  const sink = await nullSink();
  const replicator = await startReplicator({ root: ROOT, databaseUrl: database.url, port: await freePort(), gatewayUrl: sink.url });
  const pool = new pg.Pool({ connectionString: database.url, max: 4 });
  try {
    await registerUsers(replicator.url, ids, table);
    let offset = 0;
    for (const pass of ['first', 'steady']) {
      const before = sink.counts.deliveries;
      const count = 2000;
      const started = now();
      await insertConcurrently(pool, count, (p, i) => insert(p, offset + i + 1));
      const expected = count * audience;
      const secs = await timeUntil(() => sink.counts.deliveries - before, expected, started, `${expected} deliveries`);
      rows.push({ design: `sluice, ${pass} pass`, changes: count, deliveries: sink.counts.deliveries - before, queries: await rlsQueries(replicator.url), secs });
      offset += count;
    }
  } finally {
    await pool.end();
    await replicator.stop();
    await sink.stop();
  }
  if (!baseline) return rows;
  const sample = Math.max(5, Math.min(200, Math.round(200_000 / ids.length)));
  log(`baseline: ${sample} changes × ${ids.length} subscribers`);
  const claims = ids.map((sub) => ({ role: 'authenticated', sub }));
  const base = await perSubscriberBaseline(db, table, claims, sample);
  rows.push({ design: 'baseline, per change per subscriber', ...base, queries: sample * ids.length });
  return rows;
}

/**
 * Per-user rows (issue #13's workload): S subscribers, each its own user subscribed to INSERTs on
 * `notes`, whose policy lets a user see its own rows; single-row inserts spread over the users,
 * each row visible to exactly one of them. Both policy forms Supabase users write, and the
 * per-change-per-subscriber design on a sample of the same rows.
 */
async function owners() {
  const FORMS = {
    'user_id = auth.uid()': 'user_id = auth.uid()',
    'user_id = (select auth.uid())': 'user_id = (select auth.uid())',
  };
  const rows = [];
  for (const users of (opts.users ?? '100,1000,10000').split(',').map(Number)) {
    for (const [form, using] of Object.entries(FORMS)) {
      await withDatabase(`owners-${users}`, async (database, db) => {
        await db.query(`${AUTH}
          create table notes (id bigint primary key, user_id uuid not null);
          alter table notes enable row level security;
          create policy own on notes for select to authenticated using (${using});
          grant select on notes to authenticated;
          alter publication supabase_realtime add table notes`);
        const ids = (await db.query(`select gen_random_uuid()::text as id from generate_series(1, ${users})`)).rows.map((r) => r.id);
        const owner = (i) => ids[(i * 7919) % users];
        log(`${users} users (${form})`);
        const measured = await passesAndBaseline(database, db, ids, 'notes', 1,
          (p, id) => p.query('insert into notes values ($1, $2)', [id, owner(id)]));
        rows.push(...measured.map((r) => ({ users, form, ...r })));
      });
    }
  }
  console.log('\n### 5. RLS, per-user rows: S users each subscribed to INSERT, each row visible to exactly one\n');
  console.log('| S | policy | design | changes | deliveries | RLS queries so far | seconds | deliveries/s |');
  console.log('|---:|---|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.users} | \`${r.form}\` | ${r.design} | ${r.changes} | ${r.deliveries} | ${r.queries} | ${fmt(r.secs, 2)} | ${Math.round(r.deliveries / r.secs)} |`);
  }
}

/**
 * The policy forms people write (issue #24), one row each: S users, each subscribed to INSERTs on
 * `notes`, each row visible to its owner only, whatever the spelling — directly, through a cast,
 * a SECURITY DEFINER helper, a membership table (one room per user), an OR with an (empty) admin
 * role, an array column, a membership two levels deep (a room's seats held by profiles of users). The per-change-per-subscriber baseline once per S, with the first form.
 */
async function forms() {
  const CLAIM = `current_setting('request.jwt.claims', true)::jsonb ->> 'sub'`;
  const FORMS = {
    'auth.uid() = user_id': 'auth.uid() = user_id',
    [`user_id = (${CLAIM})::uuid`]: `user_id = (${CLAIM})::uuid`,
    '(select auth.uid()) = user_id': '(select auth.uid()) = user_id',
    [`user_id::text = (select ${CLAIM})`]: `user_id::text = (select ${CLAIM})`,
    [`user_id::text = (${CLAIM})`]: `user_id::text = (${CLAIM})`,
    "(auth.jwt() ->> 'sub') = user_id::text": "(auth.jwt() ->> 'sub') = user_id::text",
    'public.is_owner(user_id) (SECURITY DEFINER)': 'public.is_owner(user_id)',
    'auth.uid() = user_id OR exists (admins)': 'auth.uid() = user_id or exists (select 1 from public.admins a where a.user_id = auth.uid())',
    'is_room_participant(room_id) (SECURITY DEFINER)': 'public.is_room_participant(room_id)',
    "auth.uid() = user_id OR has_role(auth.uid(), 'admin')": "auth.uid() = user_id or public.has_role(auth.uid(), 'admin')",
    'auth.uid() = ANY(readers)': 'auth.uid() = any (readers)',
    'two levels: exists (seats join profiles)': 'exists (select 1 from public.seats m join public.profiles u on u.id = m.profile_id where m.room_id = notes.room_id and u.auth_id = auth.uid())',
  };
  const rows = [];
  for (const users of (opts.users ?? '1000,10000').split(',').map(Number)) {
    let first = true;
    for (const [form, using] of Object.entries(FORMS).filter(([label]) => !opts.form || label.includes(opts.form))) {
      await withDatabase(`forms-${users}`, async (database, db) => {
        await db.query(`${AUTH}
          create function auth.jwt() returns jsonb language sql stable as $$
            select nullif(current_setting('request.jwt.claims', true), '')::jsonb $$;
          create table notes (id bigint primary key, user_id uuid not null, room_id int not null, readers uuid[] not null);
          create table admins (user_id uuid primary key);
          create table user_roles (user_id uuid not null, role text not null);
          create table room_participants (room_id int not null, user_id uuid not null, primary key (room_id, user_id));
          create table profiles (id int primary key, auth_id uuid not null unique);
          create table seats (room_id int not null, profile_id int not null, primary key (room_id, profile_id));
          create function public.is_owner(owner uuid) returns boolean language sql security definer as $$ select $1 = auth.uid() $$;
          create function public.is_room_participant(_room_id int) returns boolean language sql security definer stable as $$
            select exists (select 1 from public.room_participants where room_id = _room_id and user_id = auth.uid()) $$;
          create function public.has_role(uid uuid, wanted text) returns boolean language sql security definer as $$
            select exists (select 1 from public.user_roles r where r.user_id = $1 and r.role = $2) $$;
          alter table notes enable row level security;
          create policy own on notes for select to authenticated using (${using});
          grant select on notes, admins, seats, profiles to authenticated;
          grant usage on schema auth to authenticated;
          alter publication supabase_realtime add table notes`);
        const ids = (await db.query(`select gen_random_uuid()::text as id from generate_series(1, ${users})`)).rows.map((r) => r.id);
        await db.query('insert into room_participants select i, u from unnest($1::uuid[]) with ordinality as x(u, i)', [ids]);
        await db.query('insert into profiles select i, u from unnest($1::uuid[]) with ordinality as x(u, i)', [ids]);
        await db.query('insert into seats select i, i from generate_series(1, $1::int) as i', [users]);
        // One admin and one editor who subscribe to nothing: the admin check is decided, never true.
        await db.query('insert into admins values (gen_random_uuid())');
        await db.query(`insert into user_roles values (gen_random_uuid(), 'admin'), ($1, 'editor')`, [ids[0]]);
        const ownerIndex = (i) => (i * 7919) % users;
        log(`${users} users (${form})`);
        const measured = await passesAndBaseline(database, db, ids, 'notes', 1,
          (p, id) => {
            const n = ownerIndex(id);
            return p.query('insert into notes values ($1, $2, $3, array[$2::uuid])', [id, ids[n], n + 1]);
          }, { baseline: first });
        rows.push(...measured.map((r) => ({ users, form, ...r })));
        first = false;
      });
    }
  }
  console.log('\n### 8. RLS, the policy forms people write: S users, each row visible to its owner only\n');
  console.log('| S | policy `using (…)` | design | changes | deliveries | RLS queries so far | seconds | deliveries/s |');
  console.log('|---:|---|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.users} | \`${r.form}\` | ${r.design} | ${r.changes} | ${r.deliveries} | ${r.queries} | ${fmt(r.secs, 2)} | ${Math.round(r.deliveries / r.secs)} |`);
  }
}

/**
 * Chat rooms (membership through another table): S users in rooms of 10, each subscribed to
 * INSERTs on `chat`, whose policy lets room members read; each message is visible to its room.
 */
async function rooms() {
  const rows = [];
  const MEMBERS = 10;
  for (const users of (opts.users ?? '1000,10000').split(',').map(Number)) {
    await withDatabase(`rooms-${users}`, async (database, db) => {
      const rooms = users / MEMBERS;
      await db.query(`${AUTH}
        create table room_members (room int not null, user_id uuid not null, primary key (room, user_id));
        create table chat (id bigint primary key, room int not null, body text);
        alter table chat enable row level security;
        create policy members_read on chat for select to authenticated
          using (exists (select 1 from room_members m where m.room = chat.room and m.user_id = (select auth.uid())));
        grant select on chat, room_members to authenticated;
        alter publication supabase_realtime add table chat`);
      const ids = (await db.query(`select gen_random_uuid()::text as id from generate_series(1, ${users})`)).rows.map((r) => r.id);
      await db.query('insert into room_members select (n - 1) % $2, id::uuid from unnest($1::text[]) with ordinality as u(id, n)', [ids, rooms]);
      log(`${users} users in ${rooms} rooms`);
      const measured = await passesAndBaseline(database, db, ids, 'chat', MEMBERS,
        (p, id) => p.query('insert into chat values ($1, $2, $3)', [id, (id * 7919) % rooms, 'hi']));
      rows.push(...measured.map((r) => ({ users, ...r })));
    });
  }
  console.log(`\n### 6. RLS, chat rooms: S users in rooms of ${MEMBERS} (a membership table), each message visible to its room\n`);
  console.log('| S | design | changes | deliveries | RLS queries so far | seconds | deliveries/s |');
  console.log('|---:|---|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.users} | ${r.design} | ${r.changes} | ${r.deliveries} | ${r.queries} | ${fmt(r.secs, 2)} | ${Math.round(r.deliveries / r.secs)} |`);
  }
}

/**
 * Latency under RLS at a steady rate: S = 1,000 users (per-user rows, `(select auth.uid())`),
 * 100 single-row commits/s, each stamped with its commit-time clock, each visible to one user.
 * Measured twice: commit to the moment the batch reaches a stand-in hub (the replicator's share),
 * and commit to the supabase-js callback through the whole local stack (1,000 clients, one per
 * user, on `wrangler dev`).
 */
async function steady() {
  const USERS = 1000;
  const RATE = 100;
  const seconds = Number(opts.seconds) * 2;
  const rows = [];
  const schema = `${AUTH}
    create table notes (id bigint primary key, user_id uuid not null, t double precision not null);
    alter table notes enable row level security;
    create policy own on notes for select to authenticated using (user_id = (select auth.uid()));
    grant select on notes to authenticated;
    alter publication supabase_realtime add table notes`;
  /** Commits at RATE/s for `seconds`, each row owned by one of `ids`; returns how many. */
  const commitSteadily = async (db, ids) => {
    let id = 100;
    const started = now();
    while (now() - started < seconds * 1000) {
      const tick = now();
      id++;
      await db.query('insert into notes values ($1, $2, $3)', [id, ids[(id * 7919) % ids.length], now()]);
      const wait = 1000 / RATE - (now() - tick);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    return id - 100;
  };
  const summary = (what, latencies) => {
    latencies.sort((a, b) => a - b);
    rows.push({ what, n: latencies.length, p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), p99: percentile(latencies, 0.99), max: latencies.at(-1) });
  };

  await withDatabase('steady', async (database, db) => {
    await db.query(schema);
    const ids = (await db.query(`select gen_random_uuid()::text as id from generate_series(1, ${USERS})`)).rows.map((r) => r.id);
    const latencies = [];
    let measuring = false;
    const sink = await nullSink((p) => {
      if (measuring) for (let k = 0; k < p.to.length; k++) latencies.push(now() - p.data.record.t);
    });
    const replicator = await startReplicator({ root: ROOT, databaseUrl: database.url, port: await freePort(), gatewayUrl: sink.url });
    try {
      await registerUsers(replicator.url, ids, 'notes');
      // Warm up (every user's claim value computed), then measure.
      await db.query('insert into notes select g, $1::uuid, 0 from generate_series(1, 10) g', [ids[0]]);
      await timeUntil(() => sink.counts.deliveries, 10, now(), 'the warm-up');
      measuring = true;
      const sent = await commitSteadily(db, ids);
      await timeUntil(() => latencies.length, sent, now(), 'the last changes');
    } finally {
      await replicator.stop();
      await sink.stop();
    }
    summary('commit → hub (stand-in)', latencies);
  });

  const limits = { '*': { max_concurrent_users: 2 * USERS, max_joins_per_second: 2 * USERS } };
  const stack = await startStack({ name: 'bench-steady', gateway: 'wrangler', vars: { TENANT_LIMITS: JSON.stringify(limits) }, log: () => {} });
  const clients = [];
  try {
    await stack.pg.createRoles('authenticated');
    await stack.pg.sql(schema);
    const ids = (await stack.pg.sql(`select gen_random_uuid()::text as id from generate_series(1, ${USERS})`)).map((r) => r.id);
    const latencies = [];
    let measuring = false;
    let warm = 0;
    log(`joining ${USERS} supabase-js clients`);
    for (let u = 0; u < USERS; u += 25) {
      await Promise.all(ids.slice(u, u + 25).map(async (sub) => {
        const client = supabase(stack.url, tokenFor('authenticated', { sub }));
        clients.push(client);
        const inbox = { push: (p) => (measuring ? latencies.push(now() - p.new.t) : warm++) };
        await pgChannel(client, `notes-${sub}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'notes' }, inbox }]);
      }));
    }
    const db = new pg.Client(stack.pg.clientConfig());
    await db.connect();
    try {
      await db.query('insert into notes select g, $1::uuid, 0 from generate_series(1, 10) g', [ids[0]]);
      await timeUntil(() => warm, 10, now(), 'the warm-up');
      measuring = true;
      const sent = await commitSteadily(db, ids);
      await timeUntil(() => latencies.length, sent, now(), 'the last changes');
    } finally {
      await db.end();
    }
    summary(`commit → supabase-js callback (${USERS} clients, wrangler dev)`, latencies);
  } finally {
    for (const c of clients) c.realtime.disconnect();
    await stack.stop();
  }
  console.log(`\n### 7. RLS at a steady ${RATE} changes/s, S = ${USERS} users (per-user rows), ${seconds} s each\n`);
  console.log('| measured | deliveries | p50 ms | p95 ms | p99 ms | max ms |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.what} | ${r.n} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ${fmt(r.max)} |`);
}

if (only.has('throughput')) { console.error('==> throughput'); await throughput(); }
if (only.has('rls')) { console.error('==> rls'); await rls(); }
if (only.has('latency')) { console.error('==> latency'); await latency(); }
if (only.has('joins')) { console.error('==> joins'); await joins(); }
if (only.has('owners')) { console.error('==> owners'); await owners(); }
if (only.has('rooms')) { console.error('==> rooms'); await rooms(); }
if (only.has('steady')) { console.error('==> steady'); await steady(); }
if (only.has('forms')) { console.error('==> forms'); await forms(); }
