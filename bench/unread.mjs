// A client that never reads: what the gateway's memory does while a channel it joined keeps
// receiving broadcasts. One sender socket broadcasts `--size`-byte messages at `--rate` per second
// to a channel with one receiver and a reading bystander, for `--seconds`; the receiver either reads (the baseline) or
// stops reading right after its join (its TCP socket paused) while still sending a heartbeat
// every 5 s, as a client that only pretends to be alive does (a raw TCP client: ws's own
// pause() still drains the kernel's buffer into its own). Prints, per sample, the megabytes
// broadcast so far and the gateway's resident memory (workerd, self-hosted, the process tree).
//
//   node_modules/.bin/node bench/unread.mjs [--seconds 30] [--rate 1000] [--size 1000]
//
// A program, not a test: it shows how much of what is sent to a socket that does not read stays
// in the gateway (workerd queues a WebSocket's outgoing messages without bound and offers no
// bufferedAmount), with the tenant's rate limits raised out of the way.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { treeMiB } from '../tests/stack/process.mjs';
import { startStack } from '../tests/stack/stack.mjs';
import { join, open, push } from './sockets.mjs';

const { values: opts } = parseArgs({ options: {
  seconds: { type: 'string', default: '30' },
  rate: { type: 'string', default: '1000' },
  size: { type: 'string', default: '1000' },
} });
const [seconds, rate, size] = [Number(opts.seconds), Number(opts.rate), Number(opts.size)];
const log = (line) => console.error(`    ${line}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A V2 socket joined to `topic`. */
async function socket(url, apikey, topic) {
  const ws = await open(url, apikey);
  await join(ws, topic);
  return ws;
}

/** A client text frame (masked, as clients must send). */
function textFrame(text) {
  const body = Buffer.from(text);
  const mask = randomBytes(4);
  const len = body.length < 126 ? Buffer.from([0x80 | body.length]) : Buffer.from([0x80 | 126, body.length >> 8, body.length & 255]);
  return Buffer.concat([Buffer.from([0x81]), len, mask, body.map((b, i) => b ^ mask[i % 4])]);
}

/**
 * A receiver that never reads: a raw TCP connection that upgrades, joins `topic`, then stops
 * reading from the socket (the kernel's buffers fill, then TCP's window closes). It can still send.
 */
async function nonReader(url, apikey, topic) {
  const { hostname, port } = new URL(url);
  const sock = net.connect(Number(port), hostname);
  await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  sock.write([`GET /realtime/v1/websocket?apikey=${apikey}&vsn=2.0.0 HTTP/1.1`, `host: ${hostname}:${port}`, 'upgrade: websocket',
    'connection: Upgrade', `sec-websocket-key: ${randomBytes(16).toString('base64')}`, 'sec-websocket-version: 13', '', ''].join('\r\n'));
  let seen = '';
  await new Promise((resolve) => {
    const onData = (d) => {
      seen += d.toString('latin1');
      if (seen.includes('"phx_reply"')) {
        sock.off('data', onData);
        resolve();
      } else if (seen.includes('\r\n\r\n') && !seen.includes('phx_join_sent')) {
        seen += 'phx_join_sent';
        sock.write(textFrame(JSON.stringify(['j', 'j', topic, 'phx_join', { config: { broadcast: { self: false } } }])));
      }
    };
    sock.on('data', onData);
  });
  sock.pause();
  return {
    send: (text) => sock.write(textFrame(text)),
    on: (event, f) => sock.on(event === 'close' ? 'close' : event, f),
    terminate: () => sock.destroy(),
  };
}

const limits = { '*': { max_events_per_second: 1e9, max_bytes_per_second: 4e9, max_payload_size_in_kb: 3000 } };
log('starting the stack (self-hosted gateway: workerd, one hub)');
const stack = await startStack({ name: 'bench-unread', gateway: 'workerd', vars: { TENANT_LIMITS: JSON.stringify(limits) } });
const rows = [];
try {
  for (const reading of [true, false]) {
    const topic = `realtime:unread-${reading}`;
    const receiver = reading ? await socket(stack.url, stack.keys.anon, topic) : await nonReader(stack.url, stack.keys.anon, topic);
    const bystander = await socket(stack.url, stack.keys.anon, topic);
    const sender = await socket(stack.url, stack.keys.anon, topic);
    let received = 0;
    let bystanderReceived = 0;
    bystander.on('message', (data) => (bystanderReceived += data.length));
    let closedBy = null;
    if (reading) receiver.on('message', (data) => (received += data.length));
    receiver.on('close', (code) => (closedBy = code ?? 'closed'));
    const heartbeat = setInterval(() => receiver.send(JSON.stringify([null, 'hb', 'phoenix', 'heartbeat', {}])), 5000);
    const payload = { pad: 'x'.repeat(Math.max(0, size - 20)) };
    const before = treeMiB(stack.gateway.pid());
    log(`${reading ? 'a reading' : 'a non-reading'} receiver: ${rate} broadcasts/s of ${size} bytes for ${seconds} s`);
    let sent = 0;
    const started = performance.now();
    const timer = setInterval(() => {
      for (let i = 0; i < rate / 100; i++) {
        sender.send(push('j', 'p', topic, 'tick', payload));
        sent += size;
      }
    }, 10);
    for (let s = 5; s <= seconds; s += 5) {
      await sleep(started + s * 1000 - performance.now());
      rows.push({ receiver: reading ? 'reads' : 'never reads', s, sentMiB: sent / 2 ** 20, receivedMiB: received / 2 ** 20, bystanderMiB: bystanderReceived / 2 ** 20, gatewayMiB: treeMiB(stack.gateway.pid()) - before, closed: closedBy ?? '' });
    }
    clearInterval(timer);
    clearInterval(heartbeat);
    receiver.terminate();
    bystander.terminate();
    sender.terminate();
    await sleep(3000); // the gateway lets go of the closed socket
  }
} finally {
  await stack.stop();
}

console.log('\n| receiver | s | broadcast (MiB) | received (MiB) | a reading bystander received (MiB) | gateway RSS growth (MiB) | closed by the server |');
console.log('|---|--:|--:|--:|--:|--:|---|');
for (const r of rows) {
  console.log(`| ${r.receiver} | ${r.s} | ${r.sentMiB.toFixed(1)} | ${r.receivedMiB.toFixed(1)} | ${r.bystanderMiB.toFixed(1)} | ${r.gatewayMiB.toFixed(1)} | ${r.closed} |`);
}
