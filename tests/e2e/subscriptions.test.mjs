// The replicator's subscription API (hub → replicator): bindings validated against the database
// with upstream's error texts, ids as the join reply needs them, rows kept across restarts.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { join } from 'node:path';
import { Postgres } from '../stack/postgres.mjs';
import { freePort } from '../stack/process.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';
import { DEV_INTERNAL_SECRET, signedRequest } from '../stack/keys.mjs';

let pg, replicator;
before(async () => {
  pg = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-subscriptions', 'postgres') });
  await pg.sql('create publication supabase_realtime');
  await pg.sql('create role authenticated nologin');
  await pg.sql('create table public.todos (id int primary key, task text, done bool, meta jsonb)');
  await pg.sql('create table public.private_notes (id int primary key)');
  await pg.sql('alter publication supabase_realtime add table public.todos');
  replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
});
after(async () => {
  await replicator?.stop();
  await pg?.destroy();
});

const channel = { hub: 'hub:t:default:0', socket: 's1', topic: 'realtime:room1', claims: { role: 'authenticated', sub: 'u1', exp: 9999999999 } };

async function register(bindings, { secret = DEV_INTERNAL_SECRET, time, ...overrides } = {}) {
  const url = `${replicator.url}/v1/subscriptions`;
  const res = await fetch(url, signedRequest('POST', url, { ...channel, ...overrides, bindings }, { secret, time }));
  return { status: res.status, body: await res.json() };
}

const rows = async () => (await pg.sql("select count(*)::int as n from sluice.subscriptions where socket = 's1'"))[0].n;

test('internal calls need a recent signature made with the shared secret, accepted once', async () => {
  const bindings = [{ schema: 'public', table: 'todos' }];
  const wrong = await register(bindings, { secret: 'wrong-secret-wrong-secret-wrong-secret' });
  assert.deepEqual([wrong.status, wrong.body.why], [401, "the signature does not match: the replicator's SLUICE_INTERNAL_SECRET must equal the gateway's INTERNAL_SECRET"]);
  const old = await register(bindings, { time: Math.floor(Date.now() / 1000) - 60 });
  assert.equal(old.status, 401);
  assert.match(old.body.why, /older than 30 s \(a replay\)/);
  const url = `${replicator.url}/v1/subscriptions`;
  const unsigned = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${DEV_INTERNAL_SECRET}`, 'content-type': 'application/json' }, body: '{}' });
  assert.equal(unsigned.status, 401, 'the bearer secret alone is no longer accepted');
  // A captured request replayed within the window.
  const request = signedRequest('DELETE', url, { hub: channel.hub, socket: 'nobody' });
  assert.equal((await fetch(url, request)).status, 200);
  assert.equal((await fetch(url, request)).status, 401);
});

test('valid bindings get numeric ids, shared by identical bindings, and are stored', async () => {
  const all = { event: '*', schema: 'public', table: 'todos' };
  const filtered = { event: 'INSERT', schema: 'public', table: 'todos', filter: 'id=in.(1,2,3),done=not.is.true' };
  const res = await register([all, filtered, { ...all }]);
  assert.equal(res.status, 200);
  const [a, b, c] = res.body.ids;
  assert.equal(typeof a, 'number');
  assert.equal(a, c);
  assert.notEqual(a, b);
  assert.equal(await rows(), 3);
  // Registering again replaces the channel's subscriptions.
  assert.equal((await register([all])).status, 200);
  assert.equal(await rows(), 1);
});

test('refusals carry the system texts', async () => {
  const err = async (binding) => {
    const res = await register([binding]);
    assert.equal(res.status, 422);
    return res.body.error;
  };
  assert.equal(await err({ schema: 'public', table: 'todos', filter: 'task=foo.hey' }), 'Error parsing `filter` params: ["foo", "hey"]');
  assert.equal(
    await err({ event: '*', schema: 'public', table: 'private_notes' }),
    'Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: *, schema: public, table: private_notes, filters: [], select: nil]',
  );
  assert.match(await err({ schema: 'public', table: 'todos', filter: 'nope=eq.1' }), /An exception happened so please check your connect parameters: \[.*\]\. Exception: invalid column for filter nope$/);
  assert.match(await err({ schema: 'public', table: 'todos', filter: 'id=eq.abc' }), /Exception: invalid input syntax for type integer: "abc"$/);
  // sluice's own: a filter it could not evaluate as Postgres does is refused, not approximated.
  assert.match(await err({ schema: 'public', table: 'todos', filter: 'meta=eq.{"n": 1}' }), /Exception: `eq` on column meta of type jsonb is not supported by this server \(it would not compare as Postgres does\)/);
  assert.match(await err({ schema: 'public', table: 'todos', filter: 'id=like.1%' }), /Exception: `like` on column id of type integer is not supported/);
  const many = Array.from({ length: 101 }, (_, i) => i).join(',');
  assert.match(await err({ schema: 'public', table: 'todos', filter: `id=in.(${many})` }), /too many values for `in` filter on id: 101 \(at most 100\)/);
  assert.match(await err({ schema: 'public', table: 'todos', select: ['id', 'ghost'] }), /invalid column for filter ghost/);
  assert.match((await register([{ schema: 'public', table: 'todos' }], { claims: { role: 'nobody', exp: 9999999999 } })).body.error, /Exception: role "nobody" does not exist$/);
  // A refused registration leaves the channel's previous subscriptions untouched.
  assert.equal(await rows(), 1);
});

test('subscriptions survive a replicator restart and can be removed', async () => {
  await replicator.stop();
  replicator = await startReplicator({ root: ROOT, databaseUrl: pg.url, port: await freePort() });
  assert.equal(await rows(), 1);
  const url = `${replicator.url}/v1/subscriptions`;
  const res = await fetch(url, signedRequest('DELETE', url, { hub: channel.hub, socket: channel.socket }));
  assert.deepEqual([res.status, await res.json()], [200, { removed: 1 }]);
  assert.equal(await rows(), 0);
});
