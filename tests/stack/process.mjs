// Small helpers to run the stack's processes: free ports, child processes that die with us,
// and waiting for a condition without fixed sleeps.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** A TCP port that was free a moment ago on 127.0.0.1. */
/** Ports handed out by this process, so that two callers never get the same one. */
const handedOut = new Set();

/**
 * A port free on 127.0.0.1, picked below the kernel's ephemeral range (32768 and up): ports the
 * OS assigns (listen(0), and every outgoing connection) come from that range, so one picked there
 * could be taken by someone's connection before the process meant to bind it starts.
 */
export async function freePort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (handedOut.has(port)) continue;
    const free = await new Promise((resolve) => {
      const srv = createServer();
      srv.unref();
      srv.on('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) {
      handedOut.add(port);
      return port;
    }
  }
}

/**
 * Polls `check` until it returns a truthy value (returned) or `timeoutMs` passes (throws with
 * `what` in the message). For conditions no event announces, such as a server starting to listen.
 */
export async function waitFor(what, check, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`);
}

/**
 * Spawns a long-running process (as `uid`/`gid` if given). Its output lines go to `onLine(line)` (and are kept in
 * `.lines`); `stop(signal, graceMs)` ends it with SIGTERM (SIGKILL after 5 s) and resolves when it has exited.
 */
export function startProcess(name, cmd, args, { env = {}, cwd, uid, gid, onLine = () => {} } = {}) {
  const child = spawn(cmd, args, { cwd, uid, gid, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  for (const stream of [child.stdout, child.stderr]) {
    let buf = '';
    stream.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        onLine(line);
      }
    });
  }
  return {
    name,
    child,
    lines,
    exited,
    async stop(signal = 'SIGTERM', graceMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** Resident memory of `pid` and its descendants, in MiB (from /proc). */
export function treeMiB(pid) {
  let kb = 0;
  const visit = (p) => {
    try {
      kb += Number(readFileSync(`/proc/${p}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0);
      for (const task of readdirSync(`/proc/${p}/task`)) {
        for (const child of readFileSync(`/proc/${p}/task/${task}/children`, 'utf8').split(' ').filter(Boolean)) visit(child);
      }
    } catch { /* gone meanwhile */ }
  };
  visit(pid);
  return kb / 1024;
}
