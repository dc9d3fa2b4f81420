// A TCP proxy on loopback that a test can cut: `pause()` drops open connections and refuses new
// ones, `resume()` lets them through again. Put between the replicator and the gateway, it makes
// the gateway unreachable for the replicator only, as a network outage would. With `tls`
// (`{ cert, key }` files) it terminates TLS, as Cloudflare's edge does in front of a Worker.
// The fault matrix (tests/faults/) also slows the link (`delayMs`), makes it answer every request
// with an HTTP error (`failWith(500)`), and watches or stops single chunks (`onChunk`).
import { readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { freePort } from './process.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function startProxy(targetUrl, { tls } = {}) {
  const target = new URL(targetUrl);
  const port = await freePort();
  const open = new Set();
  let paused = false;
  let failStatus = null;
  const dropAll = () => {
    for (const pair of open) for (const socket of pair) socket.destroy();
  };
  const proxy = {
    url: tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`,
    /** Every chunk waits this long before it is passed on (both ways, order kept). */
    delayMs: 0,
    /**
     * Called with ('request' | 'response', chunk, connection) before a chunk is passed on; it may
     * return a promise to hold the chunk, or `false` (or a promise of it) to drop the connection.
     */
    onChunk: null,
    pause() {
      paused = true;
      dropAll();
    },
    resume() {
      paused = false;
    },
    /** Answers every request with HTTP `status` (null: pass through again); open connections drop. */
    failWith(status) {
      failStatus = status;
      dropAll();
    },
    stop: () => new Promise((resolve) => {
      dropAll();
      server.close(() => resolve());
    }),
  };

  /** Passes `from`'s chunks to `to` one after another, through the delay and the hook. */
  const forward = (from, to, direction, close, connection) => {
    let chain = Promise.resolve();
    from.on('data', (chunk) => {
      chain = chain.then(async () => {
        if (proxy.delayMs) await sleep(proxy.delayMs);
        if (proxy.onChunk && (await proxy.onChunk(direction, chunk, connection)) === false) return close();
        if (!to.destroyed) to.write(chunk);
      });
    });
  };
  /** An HTTP error for each request on this connection, then the connection closes. */
  const answerWith = (client, status) => {
    client.once('data', () => client.end(`HTTP/1.1 ${status} Injected\r\ncontent-type: text/plain\r\ncontent-length: 8\r\nconnection: close\r\n\r\ninjected`));
    client.on('error', () => {});
  };
  const onClient = (client) => {
    if (paused) return client.destroy();
    if (failStatus) return answerWith(client, failStatus);
    const upstream = connect(Number(target.port), target.hostname);
    const pair = [client, upstream];
    open.add(pair);
    const close = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of pair) socket.on('error', close).on('close', close);
    forward(client, upstream, 'request', close, pair);
    forward(upstream, client, 'response', close, pair);
  };
  const server = tls
    ? createTlsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, onClient)
    : createServer(onClient);
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return proxy;
}
