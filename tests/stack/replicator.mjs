// The replicator binary (built by scripts/test or scripts/dev), started against a database.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { DEV_INTERNAL_SECRET } from './keys.mjs';
import { startProcess, waitFor } from './process.mjs';

/** The debug build, or the release build when SLUICE_REPLICATOR_PROFILE=release (benchmarks). */
export function replicatorBinary(root) {
  return join(root, 'target', process.env.SLUICE_REPLICATOR_PROFILE === 'release' ? 'release' : 'debug', 'sluice-replicator');
}

/**
 * Starts the replicator and resolves once its /healthz answers 200. `gatewayUrl` is where it
 * pushes changes (by default a closed port: changes then wait, as when the gateway is down).
 */
export async function startReplicator({ root, databaseUrl, port, gatewayUrl = 'http://127.0.0.1:9', env = {}, log = () => {} }) {
  const proc = startProcess('replicator', replicatorBinary(root), [], {
    env: {
      SLUICE_DATABASE_URL: databaseUrl,
      SLUICE_HTTP_ADDR: `127.0.0.1:${port}`,
      SLUICE_INTERNAL_SECRET: DEV_INTERNAL_SECRET,
      SLUICE_GATEWAY_URL: gatewayUrl,
      RUST_LOG: 'info',
      NO_COLOR: '1',
      ...env,
    },
    onLine: (line) => log(`[replicator] ${line}`),
  });
  const url = `http://127.0.0.1:${port}`;
  const died = proc.exited.then(({ code }) => {
    throw new Error(`the replicator exited (code ${code}) at start:\n${proc.lines.join('\n')}`);
  });
  await Promise.race([
    died,
    waitFor('the replicator /healthz', async () => (await fetch(`${url}/healthz`)).ok),
  ]);
  died.catch(() => {});
  return { url, proc, stop: () => proc.stop() };
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
