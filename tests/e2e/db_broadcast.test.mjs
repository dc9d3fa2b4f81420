// Broadcast from the database to public channels: the `realtime` schema installed by the
// replicator, `realtime.send` / `send_binary` delivering through the Channel objects to supabase-js
// (both vsn), and nothing lost while the replicator is down. Private channels are #5's next step.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { done, joinWithInbox, supabase, until, VSNS } from './clients.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';

let stack;
before(async () => {
  stack = await startStack({ name: 'e2e-db-broadcast' });
});
after(async () => {
  await stack?.replicator.stop(); // a test may have replaced it
  await stack?.stop();
});

const sql = (text, params) => stack.pg.sql(text, params);

test('the replicator installs the realtime schema: messages partitioned by day, topic(), send()', async () => {
  const [{ parts }] = await sql(`select count(*)::int as parts from pg_inherits where inhparent = 'realtime.messages'::regclass`);
  assert.equal(parts, 5, 'yesterday to three days ahead');
  const [{ topic }] = await sql(`select set_config('realtime.topic', 'room-x', false), realtime.topic() as topic`);
  assert.equal(topic, 'room-x');
  await sql(`select realtime.send('{"k": 1}', 'e', 'stored', false)`);
  const [row] = await sql(`select topic, event, extension, private, payload from realtime.messages where topic = 'stored'`);
  assert.deepEqual(row, { topic: 'stored', event: 'e', extension: 'broadcast', private: false, payload: { k: 1, id: row.payload.id } });
  assert.match(row.payload.id, /^[0-9a-f-]{36}$/, 'send() adds the row id to the payload');
});

for (const vsn of VSNS) {
  test(`vsn ${vsn}: realtime.send reaches a public channel's members with meta.id`, async () => {
    const client = supabase(stack.url, stack.keys.anon, vsn);
    try {
      const { inbox } = await joinWithInbox(client, `db-room-${vsn}`);
      await sql(`select realtime.send('{"text": "hello"}', 'shout', $1, false)`, [`db-room-${vsn}`]);
      const msg = await inbox.next();
      assert.equal(msg.event, 'shout');
      assert.equal(msg.payload.text, 'hello');
      assert.equal(msg.meta.id, msg.payload.id);
      // Private messages go to the private room, not to this public one.
      await sql(`select realtime.send('{"n": 1}', 'secret', $1)`, [`db-room-${vsn}`]);
      await sql(`select realtime.send('{"n": 2}', 'marker', $1, false)`, [`db-room-${vsn}`]);
      assert.equal((await inbox.next()).event, 'marker');
    } finally {
      await done(client);
    }
  });
}

test('realtime.send_binary reaches V2 members as binary', async () => {
  const client = supabase(stack.url, stack.keys.anon, '2.0.0');
  try {
    const { inbox } = await joinWithInbox(client, 'db-binary');
    await sql(`select realtime.send_binary('\\x01ff'::bytea, 'blob', 'db-binary', false)`);
    const msg = await inbox.next();
    assert.equal(msg.event, 'blob');
    assert.deepEqual([...new Uint8Array(msg.payload)], [1, 255]);
  } finally {
    await done(client);
  }
});

test('messages sent while the replicator is killed arrive, once each, after it restarts', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  try {
    const { inbox } = await joinWithInbox(client, 'db-kill');
    await sql(`select realtime.send('{"n": 0}', 'm', 'db-kill', false)`);
    assert.equal((await inbox.next()).payload.n, 0);
    const port = new URL(stack.replicator.url).port;
    stack.replicator.proc.child.kill('SIGKILL');
    await stack.replicator.proc.exited;
    for (const n of [1, 2, 3]) await sql(`select realtime.send($1::jsonb, 'm', 'db-kill', false)`, [JSON.stringify({ n })]);
    stack.replicator = await startReplicator({ root: ROOT, databaseUrl: stack.pg.replicatorUrl, port, gatewayUrl: stack.gateway.url });
    await sql(`select realtime.send('{"n": 4}', 'm', 'db-kill', false)`);
    const seen = [];
    await until(inbox, (m) => (seen.push(m.payload.n), m.payload.n === 4), 30_000);
    assert.deepEqual(seen, [1, 2, 3, 4]);
  } finally {
    await done(client);
  }
});
