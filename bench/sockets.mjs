// Raw V2 sockets for the benchmarks: open one, join a channel, build realtime-js's broadcast frame.
import WebSocket from 'ws';

/** Kind-3 frame, as realtime-js sends broadcasts. */
export function push(joinRef, ref, topic, event, payload) {
  const fields = [joinRef, ref, topic, event, ''].map((f) => Buffer.from(f));
  const body = Buffer.from(JSON.stringify(payload));
  return Buffer.concat([Buffer.from([3, ...fields.map((f) => f.length), 1]), ...fields, body]);
}

/** A V2 socket to the gateway at `url`, once open. */
export function open(url, apikey) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/realtime/v1/websocket?apikey=${apikey}&vsn=2.0.0`);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** Joins `topic` (ref `j`, no self-broadcast); resolves on the `ok` reply. */
export function join(ws, topic) {
  return new Promise((resolve, reject) => {
    const onMessage = (data, binary) => {
      if (binary) return;
      const [, ref, , event, payload] = JSON.parse(data.toString());
      if (ref === 'j' && event === 'phx_reply') {
        ws.off('message', onMessage);
        payload.status === 'ok' ? resolve() : reject(new Error(JSON.stringify(payload)));
      }
    };
    ws.on('message', onMessage);
    ws.send(JSON.stringify(['j', 'j', topic, 'phx_join', { config: { broadcast: { self: false } } }]));
  });
}
