// A TCP proxy on loopback that a test can cut: `pause()` drops open connections and refuses new
// ones, `resume()` lets them through again. Put between the replicator and the gateway, it makes
// the gateway unreachable for the replicator only, as a network outage would.
import { createServer, connect } from 'node:net';
import { freePort } from './process.mjs';

export async function startProxy(targetUrl) {
  const target = new URL(targetUrl);
  const port = await freePort();
  const open = new Set();
  let paused = false;
  const server = createServer((client) => {
    if (paused) return client.destroy();
    const upstream = connect(Number(target.port), target.hostname);
    const pair = [client, upstream];
    open.add(pair);
    const close = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of pair) socket.on('error', close).on('close', close);
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${port}`,
    pause() {
      paused = true;
      for (const pair of open) for (const socket of pair) socket.destroy();
    },
    resume() {
      paused = false;
    },
    stop: () => new Promise((resolve) => {
      for (const pair of open) for (const socket of pair) socket.destroy();
      server.close(() => resolve());
    }),
  };
}
