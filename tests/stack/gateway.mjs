// The gateway worker in workerd: under `wrangler dev` for the local stack, under wrangler's test
// harness (Miniflare) for tests, which can also evict its Durable Objects from memory as
// hibernation does, or as self-hosted production runs it (`scripts/serve gateway`).
import { execFileSync } from 'node:child_process';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createTestHarness } from 'wrangler';
import { startProcess, waitFor } from './process.mjs';

/** The newest modification time (ms) of the files at or under `paths` (0 if none exist). */
function newest(paths) {
  let latest = 0;
  const visit = (path) => {
    let stat;
    try {
      stat = statSync(path);
    } catch {
      return;
    }
    if (stat.isDirectory()) for (const entry of readdirSync(path)) visit(join(path, entry));
    else latest = Math.max(latest, stat.mtimeMs);
  };
  paths.forEach(visit);
  return latest;
}

/**
 * The worker bundled as `wrangler deploy` uploads it, in .local/gateway-bundle, made again (which
 * runs wrangler.toml's build, scripts/build-worker) only when a source of the worker or its build
 * is newer. Without it the harness runs the build at every start: about 25 s of CPU each, mostly
 * wasm-opt, for every stack a test starts.
 */
function workerBundle(root) {
  const dir = join(root, '.local', 'gateway-bundle');
  const sources = ['gateway-worker/src', 'gateway-worker/inspector', 'gateway-worker/Cargo.toml', 'gateway-worker/build',
    'shared/src', 'shared/Cargo.toml', 'Cargo.lock', 'wrangler.toml'].map((p) => join(root, p));
  if (newest([dir]) > newest(sources)) return dir;
  rmSync(dir, { recursive: true, force: true });
  execFileSync(join(root, 'node_modules/.bin/node'), [join(root, 'node_modules/wrangler/bin/wrangler.js'), 'deploy', '--dry-run', '--outdir', dir], {
    cwd: root, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, WRANGLER_SEND_METRICS: 'false', FORCE_COLOR: '0' },
  });
  return dir;
}

/** Runs the worker of wrangler.toml in wrangler's test harness, with test-only vars and secrets. */
export async function startGatewayHarness({ root, jwtSecret, vars = {} }) {
  const server = createTestHarness({
    root,
    workers: [{
      configPath: 'wrangler.toml',
      prebuiltWorkerDir: workerBundle(root),
      // Refused joins wait 100 ms, as in upstream's test configuration (production: 5 s).
      vars: { CHANNEL_ERROR_BACKOFF_MS: '100', ...vars },
      secrets: { JWT_SECRET: jwtSecret },
    }],
  });
  const { url } = await server.listen();
  const worker = server.getWorker();
  return {
    url: url.origin,
    /** Lines the worker logged since start (console.log and friends). */
    logLines: () => server.getLogs().map((l) => l.message ?? JSON.stringify(l)),
    /** Evicts a SocketHub from memory, keeping its sockets open (hibernated), as workerd does when idle. */
    evictHub: (name) => worker.evictDurableObject('SocketHub', { name, webSockets: 'hibernate' }),
    /** Evicts a Channel object from memory; its storage stays. */
    evictChannel: (name) => worker.evictDurableObject('Channel', { name }),
    stop: () => server.close(),
  };
}

/** Runs `wrangler dev` (which builds the worker first) on 127.0.0.1:`port`. */
export async function startGatewayWranglerDev({ root, port, jwtSecret, vars = {}, log = () => {} }) {
  let ready;
  const readyLine = new Promise((resolve) => (ready = resolve));
  const proc = startProcess(
    'wrangler',
    join(root, 'node_modules/.bin/node'),
    [join(root, 'node_modules/wrangler/bin/wrangler.js'), 'dev', '--ip', '127.0.0.1', '--port', String(port),
      '--var', `JWT_SECRET:${jwtSecret}`, ...Object.entries(vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
      '--show-interactive-dev-session=false'],
    {
      cwd: root,
      env: { WRANGLER_SEND_METRICS: 'false', FORCE_COLOR: '0' },
      onLine: (line) => {
        log(`[wrangler] ${line}`);
        if (/Ready on http/.test(line)) ready();
      },
    },
  );
  const died = proc.exited.then(({ code }) => {
    throw new Error(`wrangler dev exited (code ${code}) before it was ready; see its output above`);
  });
  await Promise.race([readyLine, died]);
  return { url: `http://127.0.0.1:${port}`, lines: proc.lines, stop: () => proc.stop() };
}

/**
 * Runs the gateway as self-hosted production does: `scripts/serve gateway` (workerd, Durable
 * Objects on disk under `stateDir`). `restart()` stops the process and starts it again on the same
 * port and storage.
 */
export async function startGatewayWorkerd({ root, port, stateDir, jwtSecret, vars = {}, log = () => {} }) {
  const lines = [];
  let proc;
  const start = async () => {
    let ready;
    const readyLine = new Promise((resolve) => (ready = resolve));
    proc = startProcess('workerd', join(root, 'scripts/serve'), ['gateway'], {
      cwd: root,
      env: { SLUICE_GATEWAY_ADDR: `127.0.0.1:${port}`, SLUICE_STATE_DIR: stateDir, JWT_SECRET: jwtSecret, CHANNEL_ERROR_BACKOFF_MS: '100', ...vars },
      onLine: (line) => {
        lines.push(line);
        log(`[workerd] ${line}`);
      },
    });
    const died = proc.exited.then(({ code }) => {
      throw new Error(`workerd exited (code ${code}) before it was ready:\n${proc.lines.slice(-20).join('\n')}`);
    });
    const url = `http://127.0.0.1:${port}`;
    await Promise.race([died, waitFor('workerd to answer', async () => (await fetch(`${url}/healthcheck`)).ok).then(ready)]);
    await readyLine;
    died.catch(() => {});
  };
  await start();
  return {
    url: `http://127.0.0.1:${port}`,
    logLines: () => lines,
    /** The process id of workerd (for memory readings). */
    pid: () => proc.child.pid,
    restart: async () => {
      await proc.stop();
      await start();
    },
    stop: () => proc.stop(),
  };
}
