// The replicator binary (built by scripts/test or scripts/dev), started against a database.
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
