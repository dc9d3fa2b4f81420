// The whole local stack: a throwaway Postgres, the replicator and the gateway worker, each on a
// free port. Used by `scripts/dev` (with wrangler dev) and by the end-to-end tests (with wrangler's test harness).
import { rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { devKeys, DEV_API_SECRET, DEV_DB_ENC_PUBLIC_KEY, DEV_INTERNAL_SECRET, DEV_JWT_SECRET, DEV_METRICS_SECRET, tokenFor } from './keys.mjs';
import { Postgres } from './postgres.mjs';
import { freePort } from './process.mjs';
import { startProxy } from './proxy.mjs';
import { prepareReplicatorRole, startReplicator } from './replicator.mjs';
import { startGatewayHarness, startGatewayWorkerd, startGatewayWranglerDev } from './gateway.mjs';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');

/** `dir`, emptied. */
function freshDir(dir) {
  rmSync(dir, { recursive: true, force: true });
  return dir;
}

/**
 * Starts everything. `gateway` is 'harness' (tests; `SLUICE_TEST_GATEWAY=workerd` makes the
 * default the self-hosted server), 'workerd' (`scripts/serve gateway`, storage on disk) or
 * 'wrangler' (scripts/dev); `name` picks
 * the folder under .local/ that holds the cluster. `managed` (the default for tests) sets the
 * database up as a managed one: TLS only, and the replicator a non-superuser role prepared by
 * the SQL it prints, connecting with sslmode=verify-full. Returns the parts, the URL clients use,
 * the keys, and `stop()`, which stops all of it in reverse order. `pgSettings` are server
 * settings, `replicatorEnv` extra variables of the replicator; with `gatewayProxy` the
 * replicator reaches the gateway through a proxy (`stack.proxy`) a test can cut. With
 * `internalTls` (`{ cert, key, ca }` files, e.g. from tls.mjs) the internal API runs over HTTPS
 * both ways: the replicator serves it, and reaches the gateway through a TLS-terminating proxy
 * (the gateway's workerd must trust `ca`: NODE_EXTRA_CA_CERTS before wrangler is imported).
 */
export async function startStack({ name = 'stack', gateway = process.env.SLUICE_TEST_GATEWAY ?? 'harness', gatewayPort, managed = gateway !== 'wrangler', vars = {}, pgSettings = {}, replicatorEnv = {}, gatewayProxy = false, internalTls, log = () => {} } = {}) {
  const started = [];
  const stop = async () => {
    for (const part of started.reverse()) await part.stop().catch((e) => log(`while stopping: ${e.message}`));
  };
  try {
    const pg = await Postgres.create({ dir: join(ROOT, '.local', name, 'postgres'), managed, settings: pgSettings, log });
    started.push({ stop: () => pg.destroy() });
    if (managed) await prepareReplicatorRole(ROOT, pg);
    // The gateway calls the replicator and the replicator pushes to the gateway: the replicator's
    // port is chosen first so the gateway can be told where it will be.
    const replicatorPort = await freePort();
    const replicatorApi = internalTls ? `https://localhost:${replicatorPort}` : `http://127.0.0.1:${replicatorPort}`;
    const gatewayVars = { REPLICATOR_URL: replicatorApi, API_JWT_SECRET: DEV_API_SECRET, INTERNAL_SECRET: DEV_INTERNAL_SECRET, METRICS_JWT_SECRET: DEV_METRICS_SECRET, DB_ENC_PUBLIC_KEY: DEV_DB_ENC_PUBLIC_KEY, ...vars };
    log(`starting the gateway worker (${gateway})`);
    const port = gatewayPort ?? (await freePort());
    const gw = gateway === 'wrangler'
      ? await startGatewayWranglerDev({ root: ROOT, port, jwtSecret: DEV_JWT_SECRET, vars: gatewayVars, log })
      : gateway === 'workerd'
        ? await startGatewayWorkerd({ root: ROOT, port, stateDir: freshDir(join(ROOT, '.local', name, 'serve')), jwtSecret: DEV_JWT_SECRET, vars: gatewayVars, log })
        : await startGatewayHarness({ root: ROOT, jwtSecret: DEV_JWT_SECRET, vars: gatewayVars });
    started.push(gw);
    const proxy = gatewayProxy || internalTls ? await startProxy(gw.url, { tls: internalTls }) : null;
    if (proxy) started.push(proxy);
    log('starting the replicator');
    const replicator = await startReplicator({ root: ROOT, databaseUrl: pg.replicatorUrl, port: replicatorPort, gatewayUrl: proxy?.url ?? gw.url, tls: internalTls, env: replicatorEnv, log });
    started.push(replicator);
    return { pg, replicator, proxy, gateway: gw, url: gw.url, jwtSecret: DEV_JWT_SECRET, keys: devKeys(), adminKey: tokenFor('supabase_admin', { secret: DEV_API_SECRET }), metricsKey: tokenFor('metrics', { secret: DEV_METRICS_SECRET, ttlSecs: 10 * 365 * 24 * 3600 }), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
