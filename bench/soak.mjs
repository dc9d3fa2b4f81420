// Soak: thousands of realtime-js sockets (its default 25 s heartbeat) held on the local stack for
// minutes with light broadcast, presence and Postgres Changes traffic. Counts unexpected closes
// and missed heartbeats, samples the gateway's and the replicator's memory every 30 s, prints the
// samples as a table and draws them as an SVG (docs/figures/soak-memory.svg by default).
//
//   cargo build -p sluice-replicator && scripts/build-worker
//   node_modules/.bin/node bench/soak.mjs [--sockets 5000] [--minutes 10] [--rooms 100]
//     [--svg docs/figures/soak-memory.svg]
//
// The gateway runs as self-hosted production runs it (workerd, `scripts/serve gateway`), so its
// memory is one process tree's. Every socket is one RealtimeClient (half on each protocol version)
// joined to one room (of --rooms) with a presence key; each second a few sockets broadcast to
// their room and a few change their presence, and one row is inserted into a table one socket in
// a hundred watches. A program, not a test: it runs on the machine that also runs the load.
import { writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { RealtimeClient } from '@supabase/supabase-js';
import { treeMiB } from '../tests/stack/process.mjs';
import { ROOT, startStack } from '../tests/stack/stack.mjs';

const { values: opts } = parseArgs({ options: {
  sockets: { type: 'string', default: '5000' },
  minutes: { type: 'string', default: '10' },
  rooms: { type: 'string', default: '100' },
  svg: { type: 'string', default: 'docs/figures/soak-memory.svg' },
} });
const SOCKETS = Number(opts.sockets);
const ROOMS = Number(opts.rooms);
const SAMPLE_MS = 30_000;
const log = (line) => console.error(`    ${line}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();

const limits = { '*': { max_concurrent_users: SOCKETS * 2, max_joins_per_second: 5000, max_events_per_second: 1_000_000, max_presence_events_per_second: 100_000, max_client_presence_events_per_window: 1_000_000 } };
log(`starting the stack (self-hosted gateway, ${Math.ceil(SOCKETS / 1000)} hubs)`);
const stack = await startStack({ name: 'soak', gateway: 'workerd', vars: { TENANT_LIMITS: JSON.stringify(limits), HUB_SHARDS: String(Math.ceil(SOCKETS / 1000)) } });
await stack.pg.createRoles('anon');
await stack.pg.sql('create table public.soak (id bigint primary key); grant select on public.soak to anon; alter publication supabase_realtime add table public.soak');

let closing = false;
const counts = { heartbeatsOk: 0, heartbeatsMissed: 0, unexpected: 0, sent: 0, expected: 0, received: 0, changes: 0, presenceCalls: 0 };
const sockets = [];
const wsUrl = `${stack.url.replace(/^http/, 'ws')}/realtime/v1`;

/** One RealtimeClient joined to its room; resolves once SUBSCRIBED. */
function open(i) {
  const client = new RealtimeClient(wsUrl, {
    params: { apikey: stack.keys.anon },
    vsn: i % 2 ? '1.0.0' : '2.0.0',
    heartbeatCallback: (status) => {
      if (status === 'ok') counts.heartbeatsOk++;
      else if (status === 'timeout' || status === 'error') counts.heartbeatsMissed++;
    },
  });
  const room = client.channel(`room-${i % ROOMS}`, { config: { presence: { key: `u${i}` } } });
  room.on('broadcast', { event: 'b' }, () => counts.received++);
  room.on('presence', { event: 'sync' }, () => {});
  if (i % 100 === 0) room.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'soak' }, () => counts.changes++);
  return new Promise((resolve, reject) => {
    let joined = false;
    room.subscribe((status, err) => {
      if (status === 'SUBSCRIBED' && !joined) {
        joined = true;
        sockets.push({ i, client, room, tracked: false });
        resolve();
      } else if (joined) {
        if (closing) return;
        counts.unexpected++;
        log(`socket ${i}: ${status}${err ? `: ${err.message}` : ''}`);
      } else reject(new Error(`socket ${i}: ${status}${err ? `: ${err.message}` : ''}`));
    });
  });
}

const openedAt = now();
for (let i = 0; i < SOCKETS; i += 100) {
  await Promise.all(Array.from({ length: Math.min(100, SOCKETS - i) }, (_, k) => open(i + k)));
  if ((i + 100) % 1000 === 0) log(`${sockets.length} sockets joined`);
}
log(`${sockets.length} sockets joined in ${((now() - openedAt) / 1000).toFixed(0)} s; holding them for ${opts.minutes} min`);

// Light traffic, each second: 5 broadcasts (each to the other members of its room), 5 presence
// changes (track or untrack), 1 row inserted.
const perRoom = SOCKETS / ROOMS;
let running = true;
let row = 0;
const pick = () => sockets[Math.floor(Math.random() * sockets.length)];
const traffic = (async () => {
  while (running) {
    const started = now();
    for (let k = 0; k < 5; k++) {
      pick().room.send({ type: 'broadcast', event: 'b', payload: { at: Date.now() } });
      counts.sent++;
      counts.expected += perRoom - 1;
    }
    for (let k = 0; k < 5; k++) {
      const s = pick();
      s.tracked = !s.tracked;
      s.room[s.tracked ? 'track' : 'untrack'](s.tracked ? { i: s.i } : undefined);
      counts.presenceCalls++;
    }
    await stack.pg.sql('insert into public.soak values ($1)', [++row]);
    await sleep(Math.max(0, 1000 - (now() - started)));
  }
})();

const samples = [];
const sample = () => {
  const s = {
    minute: (now() - openedAt) / 60_000,
    gateway: treeMiB(stack.gateway.pid()),
    replicator: treeMiB(stack.replicator.proc.child.pid),
    loadGenerator: process.memoryUsage().rss / 2 ** 20,
    load: loadavg()[0],
    ...counts,
  };
  samples.push(s);
  log(`${s.minute.toFixed(1)} min: gateway ${s.gateway.toFixed(0)} MiB, replicator ${s.replicator.toFixed(0)} MiB, `
    + `heartbeats ok ${s.heartbeatsOk} missed ${s.heartbeatsMissed}, unexpected closes ${s.unexpected}, load ${s.load.toFixed(1)}`);
};
sample();
const end = now() + Number(opts.minutes) * 60_000;
while (now() < end) {
  await sleep(Math.min(SAMPLE_MS, end - now()));
  sample();
}
running = false;
await traffic;
await sleep(3000); // the last broadcasts in flight
const last = { ...samples.at(-1), ...counts };
samples[samples.length - 1] = last;

console.log(`\nSoak: ${SOCKETS} sockets (realtime-js 2.119, heartbeat every 25 s, vsn 1.0.0 and 2.0.0), ${ROOMS} rooms, ${opts.minutes} min, 2-core machine shared with the load generator\n`);
console.log('| minute | gateway MiB | replicator MiB | load generator MiB | load avg | heartbeats ok | missed | unexpected closes |');
console.log('|--:|--:|--:|--:|--:|--:|--:|--:|');
for (const s of samples) {
  console.log(`| ${s.minute.toFixed(1)} | ${s.gateway.toFixed(0)} | ${s.replicator.toFixed(0)} | ${s.loadGenerator.toFixed(0)} | ${s.load.toFixed(1)} | ${s.heartbeatsOk} | ${s.heartbeatsMissed} | ${s.unexpected} |`);
}
const growth = (key) => `${samples[0][key].toFixed(0)} → ${last[key].toFixed(0)} MiB (${(100 * (last[key] / samples[0][key] - 1)).toFixed(1)} %)`;
console.log(`\nGateway ${growth('gateway')}, replicator ${growth('replicator')} from the first sample to the last.`);
console.log(`Broadcasts: ${counts.sent} sent, ${counts.received} of ${counts.expected} deliveries arrived; `
  + `${counts.presenceCalls} presence changes; ${counts.changes} of ${row * Math.ceil(SOCKETS / 100)} Postgres Changes deliveries.`);

const svgPath = join(ROOT, opts.svg);
mkdirSync(dirname(svgPath), { recursive: true });
writeFileSync(svgPath, chart(samples, `${SOCKETS} sockets for ${opts.minutes} min: resident memory (MiB)`));
console.log(`Memory curve: ${opts.svg}`);

closing = true;
for (const s of sockets) s.client.disconnect();
await stack.stop();
process.exit(counts.unexpected || counts.heartbeatsMissed ? 1 : 0);

/** A line chart of the gateway's and the replicator's memory over the minutes, as SVG text. */
function chart(points, title) {
  const W = 640, H = 320, L = 56, R = 16, T = 36, B = 40;
  const maxX = Math.max(...points.map((p) => p.minute), 1);
  const maxY = Math.ceil(Math.max(...points.map((p) => Math.max(p.gateway, p.replicator))) / 100) * 100 || 100;
  const x = (v) => L + (v / maxX) * (W - L - R);
  const y = (v) => H - B - (v / maxY) * (H - T - B);
  const line = (key, color) => `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p) => `${x(p.minute).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ')}"/>`;
  const yTicks = [0, 0.25, 0.5, 0.75, 1].map((f) => `<line x1="${L}" x2="${W - R}" y1="${y(f * maxY)}" y2="${y(f * maxY)}" stroke="#ddd"/><text x="${L - 6}" y="${y(f * maxY) + 4}" text-anchor="end">${Math.round(f * maxY)}</text>`);
  const xTicks = Array.from({ length: Math.floor(maxX) + 1 }, (_, m) => `<text x="${x(m)}" y="${H - B + 16}" text-anchor="middle">${m}</text>`);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${L}" y="20" font-size="14">${title}</text>
${yTicks.join('\n')}
${xTicks.join('\n')}
<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">minutes since the sockets were opened</text>
${line('gateway', '#1f77b4')}
${line('replicator', '#d62728')}
<text x="${W - R - 150}" y="${H - B - 44}" fill="#1f77b4">gateway (workerd)</text>
<text x="${W - R - 150}" y="${H - B - 28}" fill="#d62728">replicator</text>
</svg>
`;
}
