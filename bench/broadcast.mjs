// Broadcast benchmark: N raw V2 sockets over M channels against `wrangler dev` on loopback, one
// sender per channel at a set rate, every other member receiving. Prints delivered messages/s and
// send-to-receive latency percentiles, for 1 hub and for 4 hubs, at several N.
//
//   node_modules/.bin/node bench/broadcast.mjs [--seconds 5] [--rate 20] [--sizes 40,200,600] [--per-channel 10] [--rust]
//
// A program, not a test: numbers depend on the machine. Sender and receivers share this process's
// clock, so latency is exact; the load generator itself costs CPU on the same machine, reported as
// generator CPU ms per 1000 deliveries. With --rust, the Rust generator (bench/broadcast_client.rs,
// built on sluice-client) runs the same load against the same gateway right after, for a second row.
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { startGatewayWranglerDev } from '../tests/stack/gateway.mjs';
import { join, open, push } from './sockets.mjs';
import { devKeys, DEV_JWT_SECRET } from '../tests/stack/keys.mjs';
import { freePort } from '../tests/stack/process.mjs';
import { ROOT } from '../tests/stack/stack.mjs';

const { values: opts } = parseArgs({ options: {
  seconds: { type: 'string', default: '5' },
  rate: { type: 'string', default: '20' },
  sizes: { type: 'string', default: '40,200,600' },
  'per-channel': { type: 'string', default: '10' },
  hubs: { type: 'string', default: '1,4' },
  rust: { type: 'boolean', default: false },
} });
const seconds = Number(opts.seconds);
const rate = Number(opts.rate); // messages per second per channel
const perChannel = Number(opts['per-channel']);
const limits = JSON.stringify({ '*': { max_concurrent_users: 1e6, max_joins_per_second: 1e6, max_events_per_second: 1e9, max_bytes_per_second: 4e9, max_channels_per_client: 100 } });

/** Decodes a kind-4 frame's JSON payload. */
function userBroadcast(buf) {
  if (buf[0] !== 4) return null;
  const [topicLen, eventLen, metaLen] = [buf[1], buf[2], buf[3]];
  return JSON.parse(buf.subarray(5 + topicLen + eventLen + metaLen).toString());
}

const percentile = (sorted, p) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN;

async function run(url, sockets) {
  const channels = Math.max(1, Math.floor(sockets / perChannel));
  const conns = [];
  for (let i = 0; i < sockets; i += 50) {
    conns.push(...(await Promise.all(Array.from({ length: Math.min(50, sockets - i) }, () => open(url, devKeys().anon)))));
  }
  await Promise.all(conns.map((ws, i) => join(ws, `realtime:bench-${sockets}-${i % channels}`)));
  const latencies = [];
  let measuring = false;
  for (const ws of conns) {
    ws.on('message', (data, binary) => {
      if (!binary || !measuring) return;
      const msg = userBroadcast(data);
      if (msg) latencies.push(performance.now() - msg.t);
    });
  }
  const senders = conns.slice(0, channels); // socket i is on channel i
  let sent = 0;
  let seq = 0;
  const tick = 1000 / rate;
  measuring = true;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      if (performance.now() - started >= seconds * 1000) {
        clearInterval(timer);
        return resolve();
      }
      senders.forEach((ws, c) => {
        ws.send(push('j', String(++seq), `realtime:bench-${sockets}-${c}`, 'tick', { t: performance.now() }));
        sent++;
      });
    }, tick);
  });
  // Let in-flight messages land (bounded), then stop counting.
  const expected = sent * (perChannel - 1);
  const drainUntil = performance.now() + 3000;
  while (latencies.length < expected && performance.now() < drainUntil) await new Promise((r) => setTimeout(r, 20));
  measuring = false;
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const cpuMsPer1000 = ((cpu.user + cpu.system) / 1000) * 1000 / Math.max(1, latencies.length);
  for (const ws of conns) ws.terminate();
  latencies.sort((a, b) => a - b);
  return {
    sockets, channels, offered: Math.round(sent / seconds), expected, delivered: latencies.length,
    perSecond: Math.round(latencies.length / elapsed),
    p50: percentile(latencies, 0.5), p95: percentile(latencies, 0.95), p99: percentile(latencies, 0.99),
    cpuMsPer1000,
  };
}

/** The same load from the Rust generator, against the same gateway. */
function runRust(url, sockets) {
  const out = execFileSync(`${ROOT}/target/release/examples/broadcast_client`, [
    '--url', url, '--key', devKeys().anon, '--sockets', String(sockets), '--per-channel', String(perChannel),
    '--rate', String(rate), '--seconds', String(seconds), '--prefix', `bench-rust-${Date.now()}`,
  ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out.trim().split('\n').pop());
}

if (opts.rust) {
  console.error('==> building the Rust load generator (cargo build --release --example broadcast_client)');
  execFileSync('cargo', ['build', '--release', '-q', '-p', 'sluice-client', '--example', 'broadcast_client'], { cwd: ROOT, stdio: 'inherit' });
}

const rows = [];
for (const hubs of opts.hubs.split(',').map(Number)) {
  console.error(`==> starting wrangler dev with ${hubs} hub(s)`);
  const gw = await startGatewayWranglerDev({ root: ROOT, port: await freePort(), jwtSecret: DEV_JWT_SECRET, vars: { HUB_SHARDS: String(hubs), TENANT_LIMITS: limits } });
  try {
    for (const sockets of opts.sizes.split(',').map(Number)) {
      console.error(`    ${sockets} sockets...`);
      rows.push({ hubs, generator: 'node', ...(await run(gw.url, sockets)) });
      if (opts.rust) rows.push({ hubs, generator: 'rust', ...runRust(gw.url, sockets) });
    }
  } finally {
    await gw.stop();
  }
}

const fmt = (n) => (Number.isFinite(n) ? n.toFixed(1) : '-');
console.log(`\nbroadcast through wrangler dev on loopback: ${perChannel} sockets per channel, 1 sender per channel at ${rate} msg/s, ${seconds} s\n`);
console.log('| hubs | generator | sockets | channels | sent msg/s | deliveries expected | delivered | delivered msg/s | p50 ms | p95 ms | p99 ms | generator CPU ms / 1k deliveries |');
console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(`| ${r.hubs} | ${r.generator} | ${r.sockets} | ${r.channels} | ${r.offered} | ${r.expected} | ${r.delivered} | ${r.perSecond} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ${fmt(r.cpuMsPer1000)} |`);
}
