// A supabase-js client driven over stdin, one JSON command per line; what it sees goes to stdout,
// one JSON event per line. The Rust tests use it as the other side of the wire.
import { createClient } from '@supabase/supabase-js';
import readline from 'node:readline';

const { SLUICE_URL: url, SLUICE_KEY: key, SLUICE_VSN: vsn, SLUICE_TOKEN: token } = process.env;
const supabase = createClient(url, key, {
  auth: { persistSession: false, autoRefreshToken: false },
  realtime: { vsn, heartbeatIntervalMs: 5000 },
});
if (token) supabase.realtime.setAuth(token);
const channels = new Map();
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');

function join({ topic, config }) {
  const channel = supabase.channel(topic, { config });
  channel.on('broadcast', { event: '*' }, (m) => {
    const binary = m.payload instanceof ArrayBuffer;
    say({ kind: 'broadcast', topic, event: m.event, payload: binary ? [...new Uint8Array(m.payload)] : m.payload, binary });
  });
  channel.on('presence', { event: 'sync' }, () => say({ kind: 'presence', topic, state: channel.presenceState() }));
  channels.set(topic, channel);
  channel.subscribe((status, err) => say({ kind: 'status', topic, status, error: err?.message }));
}

const commands = {
  join,
  async send({ topic, event, payload, binary }) {
    const body = binary ? new Uint8Array(payload).buffer : payload;
    say({ kind: 'sent', topic, result: await channels.get(topic).send({ type: 'broadcast', event, payload: body }) });
  },
  async track({ topic, payload }) {
    say({ kind: 'tracked', topic, result: await channels.get(topic).track(payload) });
  },
  async untrack({ topic }) {
    say({ kind: 'untracked', topic, result: await channels.get(topic).untrack() });
  },
  async state({ topic }) {
    say({ kind: 'state', topic, state: channels.get(topic).presenceState() });
  },
  async quit() {
    await supabase.removeAllChannels();
    process.exit(0);
  },
};

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line);
  await commands[command.op](command);
});
say({ kind: 'ready' });
