// The replicator binary (built by scripts/test or scripts/dev), started against a database.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { DEV_DB_ENC_KEY, DEV_INTERNAL_SECRET } from './keys.mjs';
import { startProcess, waitFor } from './process.mjs';

/** GET `url`, over HTTPS trusting the CA file `ca` if given; resolves with `{ status, body }`. */
export function get(url, ca, headers = {}) {
  const client = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    client.get(url, { headers, ...(ca ? { ca: readFileSync(ca) } : {}) }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c)).on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

/** The debug build, or the release build when SLUICE_REPLICATOR_PROFILE=release (benchmarks). */
export function replicatorBinary(root) {
  return join(root, 'target', process.env.SLUICE_REPLICATOR_PROFILE === 'release' ? 'release' : 'debug', 'sluice-replicator');
}

/**
 * Starts the replicator and resolves once its /healthz answers 200. `gatewayUrl` is where it
 * pushes changes (by default a closed port: changes then wait, as when the gateway is down).
 * `start()` runs it again with the same settings after it exited (or was killed through `proc`);
 * `start({ ready: false })` does not wait for /healthz (a kill during start).
 */
export async function startReplicator({ root, databaseUrl, port, gatewayUrl = 'http://127.0.0.1:9', tls, env = {}, log = () => {} }) {
  const url = tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
  const replicator = { url, proc: null, stop: () => replicator.proc.stop() };
  replicator.start = async ({ ready = true } = {}) => {
    const proc = startProcess('replicator', replicatorBinary(root), [], {
      env: {
        SLUICE_DATABASE_URL: databaseUrl,
        SLUICE_HTTP_ADDR: `127.0.0.1:${port}`,
        SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET,
        DB_ENC_KEY: DEV_DB_ENC_KEY,
        SLUICE_GATEWAY_URL: gatewayUrl,
        // `tls`: { cert, key, ca } files: the API over HTTPS, the gateway's certificate checked against `ca`.
        ...(tls ? { SLUICE_TLS_CERT: tls.cert, SLUICE_TLS_KEY: tls.key, SLUICE_GATEWAY_CA: tls.ca } : {}),
        RUST_LOG: 'info',
        NO_COLOR: '1',
        ...env,
      },
      onLine: (line) => log(`[replicator] ${line}`),
    });
    replicator.proc = proc;
    if (!ready) return;
    const died = proc.exited.then(({ code }) => {
      throw new Error(`the replicator exited (code ${code}) at start:\n${proc.lines.join('\n')}`);
    });
    await Promise.race([
      died,
      waitFor('the replicator /healthz', async () => (await get(`${url}/healthz`, tls?.ca)).status === 200),
    ]);
    died.catch(() => {});
  };
  await replicator.start();
  return replicator;
}

/**
 * Gives the replicator a role of its own, as an administrator of a managed database would: runs
 * the SQL `sluice-replicator setup-sql` prints, then points `pg.replicatorUrl` at that role (with
 * `sslmode=verify-full` and the test CA when the cluster requires TLS).
 */
export async function prepareReplicatorRole(root, pg, { role = 'sluice', password = 'sluice-test-password' } = {}) {
  const tls = pg.ca ? `?sslmode=verify-full&sslrootcert=${encodeURIComponent(pg.ca)}` : '';
  const url = `postgres://${role}:${password}@localhost:${pg.port}/postgres${tls}`;
  const setup = execFileSync(replicatorBinary(root), ['setup-sql'], { env: { ...process.env, SLUICE_DATABASE_URL: url } }).toString();
  await pg.sql(setup);
  Object.assign(pg, { replicatorUrl: url, replicatorRole: role });
  return setup;
}
