// Deploying the gateway: `wrangler deploy --dry-run` from this checkout builds the bundle and
// checks wrangler.toml (bindings, Durable Object migrations) without an account, and the bundle
// fits Cloudflare's Worker size limits (after gzip: 3 MiB on the Free plan, 10 MiB on Paid).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT } from '../stack/stack.mjs';

const LIMITS_KIB = { free: 3 * 1024, paid: 10 * 1024 };

function wrangler(args) {
  return new Promise((resolve) => execFile(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'node_modules/wrangler/bin/wrangler.js'), ...args],
    { cwd: ROOT, env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: '1' }, maxBuffer: 16 << 20, timeout: 300_000 },
    (error, stdout, stderr) => resolve({ code: error ? error.code : 0, output: stdout + stderr })));
}

test('wrangler deploy --dry-run builds a bundle within the size limits, with every Durable Object exported', async () => {
  const outdir = join(ROOT, '.local', 'deploy-dry-run');
  const { code, output } = await wrangler(['deploy', '--dry-run', '--outdir', outdir]);
  assert.equal(code, 0, output);
  assert.match(output, /--dry-run: exiting now\./);
  const [, total, gzip] = output.match(/Total Upload: ([\d.]+) KiB \/ gzip: ([\d.]+) KiB/) ?? [];
  assert.ok(gzip, output);
  console.log([
    'gateway bundle      size (KiB)   Free limit   Paid limit',
    `uncompressed        ${Number(total).toFixed(0).padStart(10)}`,
    `gzip (what counts)  ${Number(gzip).toFixed(0).padStart(10)}   ${String(LIMITS_KIB.free).padStart(10)}   ${String(LIMITS_KIB.paid).padStart(10)}`,
  ].join('\n'));
  assert.ok(Number(gzip) < LIMITS_KIB.free, `the bundle (${gzip} KiB gzip) must fit the Free plan's ${LIMITS_KIB.free} KiB`);

  const toml = readFileSync(join(ROOT, 'wrangler.toml'), 'utf8');
  const bound = [...toml.matchAll(/class_name = "(\w+)"/g)].map((m) => m[1]);
  const migrated = [...toml.matchAll(/new_sqlite_classes = \[([^\]]*)\]/g)].flatMap((m) => [...m[1].matchAll(/"(\w+)"/g)].map((c) => c[1]));
  const bundle = readFileSync(join(outdir, 'index.js'), 'utf8');
  const exported = [...(bundle.match(/export \{([^}]*)\}/)?.[1] ?? '').matchAll(/as (\w+)/g)].map((m) => m[1]);
  assert.deepEqual([...bound].sort(), [...migrated].sort(), 'every bound Durable Object class has a migration, and no more');
  for (const name of bound) {
    assert.ok(exported.includes(name), `the bundle exports ${name}`);
    assert.match(output, new RegExp(`env\\.\\w+ \\(${name}\\)\\s+Durable Object`));
  }
});
