// A TCP proxy on loopback that a test can cut: `pause()` drops open connections and refuses new
// ones, `resume()` lets them through again. Put between the replicator and the gateway, it makes
// the gateway unreachable for the replicator only, as a network outage would. With `tls`
// (`{ cert, key }` files) it terminates TLS, as Cloudflare's edge does in front of a Worker.
import { readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { freePort } from './process.mjs';

export async function startProxy(targetUrl, { tls } = {}) {
  const target = new URL(targetUrl);
  const port = await freePort();
  const open = new Set();
  let paused = false;
  const onClient = (client) => {
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
  };
  const server = tls
    ? createTlsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, onClient)
    : createServer(onClient);
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`,
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
