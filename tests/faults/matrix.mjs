// The fault matrix: the steady mixed load of load.mjs through a local stack while faults are
// injected, one row per fault, each row telling committed against delivered per subscriber,
// duplicates, order violations, recovery time and whether presence came back.
//
// Three stacks, in turn:
//   main         the test harness gateway, a proxy between replicator and gateway (cut, slowed,
//                answering 500s, or stopping single deliveries to kill the replicator at them),
//                Postgres restarted, the slot invalidated, hubs and channels evicted
//   self-hosted  the gateway as production runs it (workerd, storage on disk), its process restarted
//   tenants      one replicator serving two tenants' databases (a tenants file), on two clusters:
//                one cluster stopped while the other tenant flows; kills while the tenants start.
//                Both tenants' subscribers are counted: they stay connected throughout
//
// `runMatrix({ short })` runs the short version (the test suite's), else the long one
// (bench/faults.mjs), and resolves with the rows; `table(rows)` prints them.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { DEV_API_SECRET } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, waitFor } from '../stack/process.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';
import { account, caughtUp, recoveryMs, SCHEMA, startLoad } from './load.mjs';

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const between = (lo, hi) => lo + Math.random() * (hi - lo);
const LOST = "Changes were lost: the replication slot was recreated to protect the database's disk; fetch the data again";
// Subscribers rejoin all at once after a gateway restart; the load sends a few events a second.
const LIMITS = JSON.stringify({ '*': { max_joins_per_second: 1000, max_events_per_second: 10000 } });

/**
 * The faults of each stack: [name, { short, long } repetitions, inject(ctx, seconds held) resolving
 * with the time the fault ended, expectations: `notice` (a `system` notice excuses what is missed)
 * or `reconnects` (closed sockets do)].
 */
const MAIN = [
  ['replicator kill -9 at a random moment', { short: 3, long: 30 }, (ctx) => killAt(ctx, 'random')],
  ['replicator kill -9 before a delivery reaches the gateway', { short: 1, long: 4 }, (ctx) => killAt(ctx, 'before delivery')],
  ['replicator kill -9 inside a delivery (the hub has it, the receipt is lost)', { short: 1, long: 4 }, (ctx) => killAt(ctx, 'inside delivery')],
  ['replicator kill -9 between delivery and confirmation', { short: 1, long: 4 }, (ctx) => killAt(ctx, 'after delivery')],
  ['replicator SIGTERM, started again', { short: 1, long: 3 }, (ctx) => stopAndStart(ctx, 'SIGTERM')],
  ['Postgres fast restart', { short: 1, long: 2 }, (ctx) => restartPostgres(ctx, false)],
  ['Postgres immediate restart (crash recovery)', { short: 1, long: 2 }, (ctx) => restartPostgres(ctx, true)],
  ['link replicator → gateway cut', { short: 1, long: 1 }, (ctx, seconds) => cutLink(ctx, seconds)],
  ['link replicator → gateway slowed (each chunk held the whole time)', { short: 1, long: 1 }, (ctx, seconds) => slowLink(ctx, seconds)],
  ['gateway answering 500', { short: 1, long: 1 }, (ctx, seconds) => failLink(ctx, seconds)],
  ['hubs evicted (hibernated, sockets kept)', { short: 1, long: 3 }, (ctx) => evict(ctx, 'hubs')],
  ['channel objects evicted', { short: 1, long: 3 }, (ctx) => evict(ctx, 'channels')],
  ['slot invalidated by Postgres (max_slot_wal_keep_size)', { short: 1, long: 1 }, (ctx) => invalidateSlot(ctx, false), { notice: true }],
  ['replicator kill -9 during a slot reset', { short: 1, long: 4 }, (ctx) => invalidateSlot(ctx, true), { notice: true }],
];
const SELF_HOSTED = [
  ['gateway process restarted (self-hosted)', { short: 1, long: 3 }, (ctx) => restartGateway(ctx), { reconnects: true }],
];
const TENANTS = [
  ["one of two tenants' Postgres stopped and started (both tenants' loads)", { short: 1, long: 2 }, (ctx) => stopOtherCluster(ctx)],
  ["replicator kill -9 during the tenants' start (tenants file)", { short: 1, long: 4 }, (ctx) => killDuringStart(ctx)],
];
/** How long the faults that last (cut, slowed, 500s) last, in seconds. */
const HOLD = { short: 5, long: 30 };

// ---- the faults ----

/** Kills the replicator with SIGKILL at `point`, starts it again; resolves with the kill's time. */
async function killAt(ctx, point) {
  const { replicator } = ctx;
  let killedAt = null;
  const kill = () => {
    if (killedAt) return;
    killedAt = now();
    replicator.proc.child.kill('SIGKILL');
  };
  if (point === 'random') {
    await sleep(between(200, 2500));
    kill();
  } else {
    // Which connections carry a delivery (POST /internal/v1/changes/{hub}) awaiting its answer.
    const delivering = new Set();
    ctx.proxy.onChunk = (direction, chunk, connection) => {
      if (killedAt) return true;
      const head = chunk.toString('latin1', 0, 32);
      if (direction === 'request' && head.startsWith('POST /internal/v1/changes/')) {
        if (point === 'before delivery') return kill(), false;
        delivering.add(connection);
      } else if (direction === 'response' && head.startsWith('HTTP/1.1 ') && delivering.delete(connection)) {
        if (point === 'inside delivery') return kill(), false;
        setImmediate(kill); // after delivery: the receipt is on its way, the confirmation is not
      }
      return true;
    };
    await waitFor(`a delivery to kill the replicator at (${point})`, () => killedAt, { timeoutMs: 20_000, intervalMs: 20 });
  }
  await replicator.proc.exited;
  ctx.proxy.onChunk = null;
  await replicator.start();
  return killedAt;
}

async function stopAndStart(ctx, signal) {
  const at = now();
  const { code } = await ctx.replicator.proc.stop(signal, 30_000);
  if (code !== 0) throw new Error(`the replicator exited with ${code} on ${signal}`);
  await ctx.replicator.start();
  return at;
}

async function restartPostgres(ctx, immediate) {
  const at = now();
  await ctx.pg.restart({ immediate });
  return at;
}

async function cutLink(ctx, seconds) {
  ctx.proxy.pause();
  await sleep(seconds * 1000);
  ctx.proxy.resume();
  return now();
}

async function slowLink(ctx, seconds) {
  ctx.proxy.delayMs = seconds * 1000;
  await sleep(seconds * 1000);
  ctx.proxy.delayMs = 0;
  return now();
}

async function failLink(ctx, seconds) {
  ctx.proxy.failWith(500);
  await sleep(seconds * 1000);
  ctx.proxy.failWith(null);
  return now();
}

async function evict(ctx, what) {
  const hubs = [...new Set(ctx.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).filter(Boolean))];
  if (!hubs.length) throw new Error('no hub has accepted a socket: nothing to evict');
  const at = now();
  if (what === 'hubs') for (const hub of hubs) await ctx.gateway.evictHub(hub);
  else {
    const tenant = hubs[0].split(':')[1];
    let evicted = 0;
    for (const topic of ['faults-changes', 'faults-db', 'faults-room']) {
      // Only topics with members on several hubs have a running Channel object.
      evicted += await ctx.gateway.evictChannel(`ch:${tenant}:public:${topic}`).then(() => 1, (e) => {
        if (/not currently running/.test(e.message)) return 0;
        throw e;
      });
    }
    if (!evicted) throw new Error('no Channel object was running: nothing was evicted');
  }
  return at;
}

/**
 * With the link cut, lowers max_slot_wal_keep_size and writes WAL past it: Postgres invalidates the
 * slot and the replicator recreates it (killed at that moment with `kill`, and started again).
 * Resolves when the link is back; the subscribers must then be told changes were lost.
 */
async function invalidateSlot(ctx, kill) {
  const { pg, proxy, replicator } = ctx;
  proxy.pause();
  await pg.sql(`alter system set max_slot_wal_keep_size = '8MB'`);
  await pg.sql('select pg_reload_conf()');
  let killed = null;
  if (kill) {
    ctx.onLine = (line) => {
      if (!killed && line.includes('recreating the slot')) {
        killed = now();
        replicator.proc.child.kill('SIGKILL');
      }
    };
  }
  const resets = await metric(ctx, 'sluice_slot_resets_total');
  for (let i = 0; i < 5; i++) {
    await pg.sql(`insert into public.ballast select repeat('x', 1024 * 1024) from generate_series(1, 8)`);
    await pg.sql('select pg_switch_wal()');
  }
  await pg.sql('checkpoint');
  if (kill) {
    await waitFor('the slot reset to begin', () => killed, { timeoutMs: 60_000 });
    await replicator.proc.exited;
    ctx.onLine = null;
    await replicator.start();
  } else {
    await waitFor('the slot to be recreated', async () => (await metric(ctx, 'sluice_slot_resets_total')) > resets, { timeoutMs: 60_000 });
  }
  await waitFor('a usable slot', async () => {
    const rows = await pg.sql(`select wal_status from pg_replication_slots where slot_name = 'sluice_changes'`);
    return rows[0] && rows[0].wal_status !== 'lost';
  }, { timeoutMs: 60_000 });
  await pg.sql('alter system reset max_slot_wal_keep_size');
  await pg.sql('select pg_reload_conf()');
  await pg.sql('truncate public.ballast');
  proxy.resume();
  return now();
}

async function metric(ctx, name) {
  const text = await (await fetch(`${ctx.replicator.url}/metrics`)).text();
  return Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1] ?? 0);
}

async function restartGateway(ctx) {
  const at = now();
  await ctx.gateway.restart();
  return at;
}

/** Stops the second tenant's cluster for a while (3 s short, 10 s long) and starts it again. */
async function stopOtherCluster(ctx) {
  await ctx.other.pg.stop();
  await sleep(ctx.short ? 3000 : 10_000);
  await ctx.other.pg.start();
  return now();
}

/** Kills the tenants-file replicator within its first 1.5 s, while it starts both tenants. */
async function killDuringStart(ctx) {
  const { replicator } = ctx;
  replicator.proc.child.kill('SIGKILL');
  await replicator.proc.exited;
  await replicator.start({ ready: false });
  await sleep(between(50, 1500));
  const killed = now();
  replicator.proc.child.kill('SIGKILL');
  await replicator.proc.exited;
  await replicator.start();
  return killed;
}

// ---- running a row ----

/**
 * Runs one fault `times` times under the loads (one per tenant), then lets them finish and reads
 * their ledgers. The row holds the totals, each subscriber's figures, the recovery times (from
 * each fault's end to the first change committed after it reaching every subscriber of every
 * load) and whether presence is whole again.
 */
async function runRow(ctx, loads, [name, reps, inject, expect = {}], options) {
  const { short, log } = options;
  const times = reps[short ? 'short' : 'long'];
  const seconds = HOLD[short ? 'short' : 'long'];
  const subscribers = loads.flatMap((load) => load.subscribers);
  /** Recovery from `end`: until the first change committed after it reached every subscriber. */
  const recovery = (end) => {
    const each = loads.map((load) => recoveryMs(load, end));
    return each.includes(null) ? null : Math.max(...each);
  };
  log(`fault: ${name} (${times}×)`);
  for (const load of loads) load.run();
  await sleep(1000);
  const from = now();
  const starts = [];
  const ends = [];
  let error = null;
  try {
    for (let k = 0; k < times; k++) {
      starts.push(now());
      const end = await inject(ctx, seconds);
      ends.push(end);
      // Each repetition meets a recovered stack, so each recovery is measured on its own.
      await waitFor('the load to flow again', () => recovery(end) !== null, { timeoutMs: 60_000, intervalMs: 50 }).catch(() => {});
      await sleep(between(500, 1500));
    }
  } catch (e) {
    error = e.message;
  }
  await sleep(2000);
  const to = now();
  await Promise.all(loads.map((load) => load.pause()));
  const window = { from, to, faults: expect.reconnects ? starts : [] };
  const settled = await waitFor('every change delivered', () => loads.every((load) => caughtUp(load, window)), { timeoutMs: expect.notice ? 60_000 : 90_000 })
    .then(() => true, () => false);
  const presence = await waitFor('presence whole again', () => subscribers.every((s) => s.presenceComplete()), { timeoutMs: 20_000 })
    .then(() => true, () => false);
  const accounts = loads.map((load) => account(load, window));
  const sum = (key) => accounts.reduce((total, acc) => total + acc[key], 0);
  const perSubscriber = accounts.flatMap((acc) => acc.rows);
  const recoveries = ends.map(recovery).filter((r) => r !== null).sort((a, b) => a - b);
  const told = expect.notice ? subscribers.every((s) => s.notices.some((n) => n.at >= from && n.message === LOST)) : null;
  const row = {
    fault: name, times, ...Object.fromEntries(['expected', 'delivered', 'lost', 'byDesign', 'duplicates', 'outOfOrder'].map((k) => [k, sum(k)])),
    recoveryP50: recoveries[Math.floor(recoveries.length / 2)] ?? null, recoveryMax: recoveries.at(-1) ?? null,
    presence, told, settled, error,
    subscribers: perSubscriber.map((r) => pick(r, ['subscriber', 'vsn', 'expected', 'delivered', 'lost', 'byDesign', 'duplicates', 'outOfOrder'])),
    lostExamples: perSubscriber.flatMap((r) => r.lostExamples.map((e) => `s${r.subscriber}:${e}`)).slice(0, 8),
    // What explains a failure: the notices the subscribers got, when they were out, who they see.
    notices: [...new Set(subscribers.flatMap((s) => s.notices.filter((n) => n.at >= from).map((n) => n.message)))],
    outages: subscribers.map((s) => s.outages.filter((o) => o.start >= from).map((o) => [Math.round(o.start - from), o.end && Math.round(o.end - from), o.why])),
    present: subscribers.map((s) => Object.keys(s.room.presenceState()).sort().join(',')),
  };
  // By design only where the fault's outcome says so: a notice given, or the socket was closed.
  row.ok = !error && row.lost === 0 && row.duplicates === 0 && row.outOfOrder === 0 && presence && told !== false
    && (row.byDesign === 0 || expect.notice || expect.reconnects) && row.delivered > 0;
  log(`  ${row.ok ? 'ok' : 'FAILED'}: ${JSON.stringify(row)}`);
  if (!row.ok && options.verbose && ctx.gateway?.logLines) for (const line of ctx.gateway.logLines().filter((l) => !/accepted socket|TenantNotFound/.test(l)).slice(-60)) log(`[gateway] ${line}`);
  return row;
}

const pick = (o, keys) => Object.fromEntries(keys.map((k) => [k, o[k]]));
const chosen = (faults, only) => faults.filter(([name]) => !only || only.split(',').some((part) => name.includes(part)));

/** The replicator's lines go to `ctx.onLine` (a kill waiting for one), and to `log` when verbose. */
function lineTap(ctx, log, verbose) {
  return (line) => {
    ctx.onLine?.(line);
    if (verbose) log(line);
  };
}

/**
 * Runs `faults` on a stack of one load: started with `stackOptions` (`name`, gateway, vars, ...),
 * prepared by `setup(stack)` beyond the load's schema, stopped at the end.
 */
async function oneLoadStack(rows, options, faults, stackOptions, setup = async () => {}) {
  faults = chosen(faults, options.only);
  if (!faults.length) return;
  const ctx = { short: options.short };
  const stack = await startStack({ ...stackOptions, log: lineTap(ctx, options.log, options.verbose) });
  Object.assign(ctx, { pg: stack.pg, proxy: stack.proxy, replicator: stack.replicator, gateway: stack.gateway });
  let load;
  try {
    await prepare(stack.pg);
    await setup(stack);
    load = await startLoad({ url: stack.url, pgConfig: stack.pg.clientConfig(), count: options.subscribers, perSecond: options.rate });
    for (const fault of faults) rows.push(await runRow(ctx, [load], fault, options));
  } finally {
    await load?.stop();
    await stack.stop();
  }
}

/**
 * The main stack: two hubs, so the subscribers' sockets are spread over them and broadcasts and
 * presence go through the Channel objects too; a table whose rows only fill the WAL (`ballast`).
 */
const mainStack = (rows, options) => oneLoadStack(rows, options, MAIN,
  { name: 'faults', gatewayProxy: true, vars: { TENANT_LIMITS: LIMITS, HUB_SHARDS: '2' } },
  (stack) => stack.pg.sql(`create table public.ballast (body text); alter table public.ballast alter column body set storage external`));

const selfHostedStack = (rows, options) => oneLoadStack(rows, options, SELF_HOSTED,
  { name: 'faults-self-hosted', gateway: 'workerd', vars: { TENANT_LIMITS: LIMITS } });

/**
 * Two tenants, `north` and `south`, each with a cluster of its own, served by one replicator
 * reading a tenants file; their clients reach the gateway as `<tenant>.example.com`.
 */
async function tenantsStack(rows, options) {
  const faults = chosen(TENANTS, options.only);
  if (!faults.length) return;
  const ctx = { short: options.short };
  const stack = await startStack({ name: 'faults-tenants', vars: { TENANT_LIMITS: LIMITS } });
  const parts = [];
  try {
    const tenants = {};
    for (const tenant of ['north', 'south']) {
      const pg = await Postgres.create({ dir: join(ROOT, '.local', `faults-tenants-${tenant}`, 'postgres') });
      parts.push({ tenant, pg });
      await pg.sql('create publication supabase_realtime');
      await prepare(pg);
      tenants[tenant] = { SLUICE_DATABASE_URL: pg.url, SLUICE_HTTP_ADDR: `127.0.0.1:${await freePort()}`, JWT_SECRET: secretOf(tenant) };
    }
    const folder = join(ROOT, '.local', 'faults-tenants', 'replicator');
    mkdirSync(folder, { recursive: true });
    const file = join(folder, 'tenants.json');
    writeFileSync(file, JSON.stringify({ tenants }));
    const port = Number(tenants.north.SLUICE_HTTP_ADDR.split(':')[1]);
    const replicator = await startReplicator({
      root: ROOT, databaseUrl: parts[0].pg.url, port, gatewayUrl: stack.url,
      env: { SLUICE_TENANTS_FILE: file, SLUICE_INTERNAL_SECRET: '', API_JWT_SECRET: DEV_API_SECRET },
      log: lineTap(ctx, options.log, options.verbose),
    });
    parts.push({ stop: () => replicator.stop() });
    // The replicator registered both tenants with upstream's default limits; the load (and the
    // backlog delivered after a kill) needs more than 100 events/s.
    for (const tenant of ['north', 'south']) {
      await waitFor(`tenant ${tenant} registered and given room`, async () => (await fetch(`${stack.url}/api/tenants/${tenant}`, {
        method: 'PUT', headers: { authorization: `Bearer ${stack.adminKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ tenant: { max_events_per_second: 10000, max_joins_per_second: 1000 } }),
      })).ok, { timeoutMs: 30_000 });
    }
    for (const part of parts.filter((p) => p.tenant)) {
      part.load = await waitFor(`tenant ${part.tenant} served`, () => startLoad({
        url: stack.url, pgConfig: part.pg.clientConfig(), count: options.subscribers, perSecond: options.rate,
        secret: secretOf(part.tenant), transport: hostTransport(`${part.tenant}.example.com`),
      }).catch(() => null), { timeoutMs: 60_000 });
    }
    const [north, south] = parts;
    Object.assign(ctx, { replicator, other: south, gateway: stack.gateway });
    // Both tenants' subscribers stay connected through every fault here: nothing may be missed.
    for (const fault of faults) rows.push(await runRow(ctx, [north.load, south.load], fault, options));
  } finally {
    for (const part of parts.reverse()) {
      await part.load?.stop().catch(() => {});
      await (part.pg ? part.pg.destroy() : part.stop()).catch(() => {});
    }
    await stack.stop();
  }
}

const secretOf = (tenant) => `${tenant}-project-jwt-secret-with-at-least-32-characters`;

/** A WebSocket class for realtime-js that reaches the gateway with `Host: host` (a tenant's name). */
function hostTransport(host) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { host } });
    }
  };
}

async function prepare(pg) {
  await pg.createRoles('anon', 'authenticated');
  await pg.sql(SCHEMA);
}

/**
 * Runs the matrix. `short`: the test suite's version (each fault once or a few times, faults that
 * last held 5 s); else the long one (50 kills, faults held 30 s). `only`: faults whose name holds
 * this text (or any of several, comma-separated). `subscribers` and `rate` (commits/s per stream) size the load.
 */
export async function runMatrix({ short = false, only, subscribers = 4, rate = 20, log = () => {}, verbose = false } = {}) {
  const rows = [];
  const options = { short, only, subscribers, rate, log, verbose };
  await mainStack(rows, options);
  await selfHostedStack(rows, options);
  await tenantsStack(rows, options);
  return rows;
}

/**
 * The rows as a Markdown table: totals over the subscribers, and each subscriber's delivered /
 * expected (its vsn: 2 for 2.0.0, 1 for 1.0.0).
 */
export function table(rows) {
  const ms = (v) => (v === null ? '-' : `${(v / 1000).toFixed(1)} s`);
  const lines = [
    '| fault | times | expected | delivered | lost | missed by design | duplicates | out of order | per subscriber (vsn: delivered / expected) | recovery p50 / max | presence | result |',
    '|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|---|',
  ];
  for (const r of rows) {
    const design = r.byDesign ? `${r.byDesign}${r.told ? ' (told)' : ''}` : '0';
    const each = r.subscribers.map((s) => `${s.vsn[0]}: ${s.delivered} / ${s.expected}`).join(' · ');
    lines.push(`| ${r.fault} | ${r.times} | ${r.expected} | ${r.delivered} | ${r.lost} | ${design} | ${r.duplicates} | ${r.outOfOrder} | ${each} | ${ms(r.recoveryP50)} / ${ms(r.recoveryMax)} | ${r.presence ? 'whole' : 'NOT whole'} | ${r.ok ? 'ok' : `FAILED${r.error ? `: ${r.error}` : ''}`} |`);
  }
  return lines.join('\n');
}
