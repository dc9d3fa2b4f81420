// The fault matrix, long version: the steady mixed load of tests/faults/load.mjs (Postgres Changes
// with and without RLS, database broadcasts, client broadcasts, presence; supabase-js on both
// protocol versions) through the local stack while each fault of tests/faults/matrix.mjs is
// injected: 50 replicator kills at chosen points, SIGTERM, Postgres restarts, the link to the
// gateway cut, slowed and answering 500s for 30 s, hubs and channels evicted, the slot
// invalidated, the self-hosted gateway restarted, one of two tenants' Postgres stopped. Prints one
// row per fault (Markdown) and exits 1 if any row failed. The test suite runs the short version
// (tests/e2e/faults.test.mjs).
//
//   cargo build -p sluice-replicator && scripts/build-worker
//   node_modules/.bin/node bench/faults.mjs [--short] [--only <text in a fault's name>]
//     [--subscribers 4] [--rate 20] [--verbose]
//
// About 25 minutes on a 2-core machine. A program, not a test: the recovery times depend on the
// machine, which also runs the load.
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { runMatrix, table } from '../tests/faults/matrix.mjs';

const { values: opts } = parseArgs({ options: {
  short: { type: 'boolean', default: false },
  only: { type: 'string' },
  subscribers: { type: 'string', default: '4' },
  rate: { type: 'string', default: '20' },
  verbose: { type: 'boolean', default: false },
} });
const started = Date.now();
const rows = await runMatrix({
  short: opts.short, only: opts.only, subscribers: Number(opts.subscribers), rate: Number(opts.rate),
  verbose: opts.verbose, log: (line) => console.error(`    ${line}`),
});
console.log(`\nFault matrix (${opts.short ? 'short' : 'long'}): ${opts.subscribers} subscribers, ${opts.rate} commits/s per stream, `
  + `${Math.round((Date.now() - started) / 60000)} min, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
console.log(table(rows));
const failed = rows.filter((r) => !r.ok);
for (const r of failed) console.log(`\n${r.fault}: ${r.error ?? ''} lost ${r.lostExamples.join(', ')}`);
process.exit(failed.length ? 1 : 0);
