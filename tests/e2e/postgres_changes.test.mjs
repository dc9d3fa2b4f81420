// Postgres Changes end to end: supabase-js (both protocol versions) → gateway hubs → replicator →
// Postgres, and back. Payloads, every filter operator, RLS, error rows, and no change lost or
// doubled across replicator, Postgres and hub restarts.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { done, Inbox, pgChannel, subscribe, supabase, until, VSNS } from './clients.mjs';
import { createClient } from '@supabase/supabase-js';
import { tokenFor } from '../stack/keys.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';
import { waitFor } from '../stack/process.mjs';

let stack;
before(async () => {
  // `limited` (a role that cannot select a table's key) signs tokens here too: allowed for clients.
  const allowed_roles = ['anon', 'authenticated', 'service_role', 'limited'];
  stack = await startStack({ name: 'e2e-postgres-changes', vars: { TENANT_LIMITS: JSON.stringify({ '*': { allowed_roles } }) } });
  await stack.pg.createRoles('anon', 'authenticated', 'limited');
  await stack.pg.sql(`
    create table public.items (id bigint primary key, n int, name text, flag bool, price numeric, meta jsonb,
      tags text[], at timestamptz, day date, raw bytea);
    create table public.notes (id int primary key, owner text not null, body text);
    alter table public.notes enable row level security;
    create policy own on public.notes for select using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
    create table public.secrets (id int primary key, body text);
    create table public.full_identity (id int primary key, body text);
    alter table public.full_identity replica identity full;
    create table public.nokey (body text);
    grant select on all tables in schema public to anon, authenticated;
    grant select (body) on public.secrets to limited;
    create table public.types (id int primary key, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric, b bool,
      t text, vc varchar(10), ch char(3), u uuid, j json, jb jsonb, tz timestamptz, ts timestamp, d date, tm time, iv interval,
      ia int[], ta text[], ba bool[], ja jsonb[], na numeric[], ip inet, by bytea);
    grant select on public.types to anon;
    create table public.exact (id int primary key, n numeric, na numeric[], doc jsonb);
    grant select on public.exact to anon;
    alter publication supabase_realtime add table public.items, public.notes, public.secrets, public.full_identity, public.nokey, public.types, public.exact;
    alter database postgres set timezone = 'UTC';
  `);
});
after(async () => {
  await stack?.replicator.stop(); // a test may have replaced it
  await stack?.stop();
});

let nextId = 1000;
const sql = (text, params) => stack.pg.sql(text, params);

for (const vsn of VSNS) {
  test(`vsn ${vsn}: INSERT, UPDATE and DELETE arrive with upstream's payloads`, async () => {
    const client = supabase(stack.url, stack.keys.anon, vsn);
    const all = new Inbox('*');
    const inserts = new Inbox('INSERT');
    const deletes = new Inbox('DELETE');
    try {
      await pgChannel(client, `items-${vsn}`, [
        { binding: { event: '*', schema: 'public', table: 'items' }, inbox: all },
        { binding: { event: 'INSERT', schema: 'public', table: 'items' }, inbox: inserts },
        { binding: { event: 'DELETE', schema: 'public', table: 'items' }, inbox: deletes },
      ]);
      const id = nextId++;
      await sql(`insert into items values ($1, 7, 'seven', true, 12.50, '{"a": {"b": [1, 2]}}', '{x,y}',
        '2026-01-02 03:04:05.678+00', '2026-01-02', '\\x0102ff')`, [id]);
      const insert = await all.next();
      assert.equal(insert.eventType, 'INSERT');
      assert.equal(insert.schema, 'public');
      assert.equal(insert.table, 'items');
      assert.match(insert.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.deepEqual(insert.new, {
        id, n: 7, name: 'seven', flag: true, price: 12.5, meta: { a: { b: [1, 2] } }, tags: ['x', 'y'],
        at: '2026-01-02T03:04:05.678+00:00', day: '2026-01-02', raw: '0102ff',
      });
      assert.deepEqual(insert.old, {});
      assert.equal(insert.errors, null);
      assert.deepEqual((await inserts.next()).new.id, id, 'the INSERT binding fires too');

      await sql('update items set n = 8, meta = null where id = $1', [id]);
      const update = await all.next();
      assert.equal(update.eventType, 'UPDATE');
      assert.equal(update.new.n, 8);
      assert.equal(update.new.meta, null);
      assert.deepEqual(update.old, { id }, 'REPLICA IDENTITY DEFAULT: the key');

      await sql('delete from items where id = $1', [id]);
      const del = await all.next();
      assert.equal(del.eventType, 'DELETE');
      assert.deepEqual(del.old, { id });
      assert.deepEqual(del.new, {});
      assert.deepEqual((await deletes.next()).old, { id });
      assert.equal(inserts.items.length, 0, 'the INSERT binding saw neither the UPDATE nor the DELETE');
    } finally {
      await done(client);
    }
  });
}

for (const vsn of VSNS) {
  test(`vsn ${vsn}: every filter operator, negation and AND select the right rows; one message per change carries the ids`, async () => {
    const client = supabase(stack.url, stack.keys.anon, vsn);
    const filters = {
      eq: 'n=eq.5', neq: 'n=neq.5', lt: 'n=lt.5', lte: 'n=lte.5', gt: 'n=gt.5', gte: 'n=gte.5',
      in: 'name=in.(a,"b,c",d)', like: 'name=like.a%', ilike: 'name=ilike.A%', is: 'flag=is.null', istrue: 'flag=is.true',
      match: 'name=match.^[ab]', imatch: 'name=imatch.^B', isdistinct: 'n=isdistinct.5', not: 'n=not.eq.5',
      and: 'n=gte.3,name=like.a%', price: 'price=gt.9.5', at: 'at=lt.2026-01-01T12:00:00Z',
    };
    const rows = [
      { n: 5, name: 'a', flag: null, price: 10, at: '2026-01-01 11:00+00' },
      { n: 3, name: 'Abc', flag: true, price: 9.5, at: '2026-01-01 13:00+00' },
      { n: 9, name: 'b,c', flag: false, price: 100, at: '2025-12-31 00:00+00' },
      { n: null, name: 'ax', flag: true, price: null, at: null },
      { n: 2, name: 'd', flag: null, price: 9.49, at: '2026-01-01 12:00+00' },
    ];
    const expected = {
      eq: [0], neq: [1, 2, 4], lt: [1, 4], lte: [0, 1, 4], gt: [2], gte: [0, 2], in: [0, 2, 4], like: [0, 3], ilike: [0, 1, 3],
      is: [0, 4], istrue: [1, 3], match: [0, 2, 3], imatch: [2], isdistinct: [1, 2, 3, 4], not: [1, 2, 4], and: [0], price: [0, 2],
      at: [0, 2],
    };
    const inboxes = Object.fromEntries(Object.keys(filters).map((k) => [k, new Inbox(k)]));
    const all = new Inbox('all');
    try {
      await pgChannel(client, `filters-${vsn}`, [
        { binding: { event: 'INSERT', schema: 'public', table: 'items' }, inbox: all },
        ...Object.entries(filters).map(([k, filter]) => ({ binding: { event: 'INSERT', schema: 'public', table: 'items', filter }, inbox: inboxes[k] })),
      ]);
      const base = nextId;
      nextId += rows.length;
      for (const [i, r] of rows.entries()) {
        await sql('insert into items (id, n, name, flag, price, at) values ($1, $2, $3, $4, $5, $6)', [base + i, r.n, r.name, r.flag, r.price, r.at]);
      }
      // Every binding's callback runs on the one message per change, so once the unfiltered
      // binding has the last row, every filtered one has had its chance.
      await until(all, (p) => p.new.id === base + rows.length - 1);
      for (const [k, want] of Object.entries(expected)) {
        assert.deepEqual(inboxes[k].items.map((p) => p.new.id - base), want, `filter ${filters[k]}`);
      }
    } finally {
      await done(client);
    }
  });
}

test('values are rendered as to_jsonb renders them (bytea as hex without \\x, as upstream)', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const inbox = new Inbox('types');
  try {
    await pgChannel(client, 'types', [{ binding: { event: 'INSERT', schema: 'public', table: 'types' }, inbox }]);
    await sql(`insert into types values (1, -2, 2147483647, 9007199254740991, 1.5, -0.000123, 12.50, false,
      'tëxt "q"', 'vc', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, "x"]}', '{"b": {"c": null}}',
      '2026-01-02 03:04:05.678+02', '2026-01-02 03:04:05', '2026-01-02', '12:34:56', '1 day 2 hours',
      '{1,2,NULL}', '{"a b",c}', '{t,f}', array['{"x":1}'::jsonb], '{1.5,2}', '10.0.0.1/8', '\\x01ff')`);
    const { new: record } = await inbox.next();
    const [{ row }] = await sql('select to_jsonb(r) as row from types r where id = 1');
    assert.equal(record.by, '01ff');
    assert.equal(row.by, '\\x01ff');
    delete record.by;
    delete row.by;
    assert.deepEqual(record, row);
  } finally {
    await done(client);
  }
});

for (const vsn of VSNS) {
  test(`vsn ${vsn}: numeric values keep every digit, as to_jsonb renders them`, async () => {
    // Every number parsed to its source text, so that digits JavaScript numbers would round are
    // compared; the record is taken as it arrives, before realtime-js converts numeric columns.
    const exactly = (text) => JSON.parse(text, (_key, value, ctx) => (typeof value === 'number' ? ctx.source : value));
    const arrived = new Inbox('exact records');
    const decode = (raw, callback) => {
      let msg = exactly(raw);
      if (Array.isArray(msg)) {
        const [join_ref, ref, topic, event, payload] = msg;
        msg = { join_ref, ref, topic, event, payload };
      }
      if (msg.event === 'postgres_changes') arrived.push(msg.payload.data.record);
      return callback(msg);
    };
    const client = createClient(stack.url, stack.keys.anon, {
      auth: { persistSession: false, autoRefreshToken: false },
      realtime: { vsn, decode },
    });
    const inbox = new Inbox('exact');
    try {
      await pgChannel(client, `exact-${vsn}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'exact' }, inbox }]);
      const id = nextId++;
      await sql(`insert into exact values ($1, 12345678901234567890.123, '{98765432109876543210.000001,12.50,NaN}',
        '{"big": 123456789012345678901234567890, "small": 0.10000000000000000000001}')`, [id]);
      await inbox.next();
      const record = await arrived.next();
      const [{ row }] = await sql('select to_jsonb(r)::text as row from exact r where id = $1', [id]);
      assert.equal(record.n, '12345678901234567890.123');
      assert.deepEqual(record, exactly(row));
    } finally {
      await done(client);
    }
  });
}

for (const vsn of VSNS) {
  test(`vsn ${vsn}: wildcard subscriptions take tables published after the join, and stop for removed ones`, async () => {
    const schema = `later_${vsn.replaceAll('.', '_')}`;
    await sql(`create schema ${schema}; grant usage on schema ${schema} to anon;
      create table ${schema}.first (id int primary key); create table ${schema}.second (id int primary key);
      grant select on all tables in schema ${schema} to anon;
      alter publication supabase_realtime add table ${schema}.first`);
    const client = supabase(stack.url, stack.keys.anon, vsn);
    const schemaWide = new Inbox('schema-wide');
    const everything = new Inbox('everything');
    try {
      await pgChannel(client, `later-${vsn}`, [
        { binding: { event: 'INSERT', schema }, inbox: schemaWide },
        { binding: { event: 'INSERT', schema: '*', table: '*' }, inbox: everything },
      ]);
      await sql(`alter publication supabase_realtime add table ${schema}.second`);
      // Picked up within seconds, without a rejoin: insert until a row of the new table arrives.
      let id = 0;
      const inserting = setInterval(() => sql(`insert into ${schema}.second values (${++id})`).catch(() => {}), 200);
      let first;
      try {
        first = await until(schemaWide, (c) => c.table === 'second', 10_000);
      } finally {
        clearInterval(inserting);
      }
      assert.equal(first.schema, schema);
      assert.equal((await until(everything, (c) => c.table === 'second' && c.schema === schema)).new.id, first.new.id);
      // Removed: its changes stop, while the table still published keeps delivering.
      await sql(`alter publication supabase_realtime drop table ${schema}.second`);
      await sql(`insert into ${schema}.second values (1000)`);
      await sql(`insert into ${schema}.first values (1)`);
      const next = await until(schemaWide, (c) => c.new.id === 1000 || c.table === 'first');
      assert.equal(next.table, 'first', 'a change of the removed table arrived');
    } finally {
      await done(client);
    }
  });
}

test('a bad filter gets the exact system error and the channel stays joined', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  try {
    const err = await pgChannel(client, 'bad-filter', [
      { binding: { event: '*', schema: 'public', table: 'items', filter: 'name=foo.hey' }, inbox: new Inbox() },
    ]).catch((e) => e);
    assert.deepEqual(err.system, {
      extension: 'postgres_changes', status: 'error', channel: 'bad-filter',
      message: 'Error parsing `filter` params: ["foo", "hey"]',
    });
    const err2 = await pgChannel(client, 'bad-value', [
      { binding: { event: '*', schema: 'public', table: 'items', filter: 'n=eq.abc' }, inbox: new Inbox() },
    ]).catch((e) => e);
    assert.match(err2.message, /Exception: invalid input syntax for type integer: "abc"$/);
    assert.equal(client.getChannels().find((c) => c.subTopic === 'bad-filter').state, 'joined');
  } finally {
    await done(client);
  }
});

test('RLS: each user sees only the rows its policy allows; deletes show the key only', async () => {
  const alice = supabase(stack.url, tokenFor('authenticated', { sub: 'alice' }));
  const bob = supabase(stack.url, tokenFor('authenticated', { sub: 'bob' }));
  const a = new Inbox('alice');
  const b = new Inbox('bob');
  try {
    await pgChannel(alice, 'notes', [{ binding: { event: '*', schema: 'public', table: 'notes' }, inbox: a }]);
    const { system: bobSystem } = await pgChannel(bob, 'notes', [{ binding: { event: '*', schema: 'public', table: 'notes' }, inbox: b }]);
    await sql("insert into notes values (1, 'alice', 'a1'), (2, 'bob', 'b1')");
    await sql("insert into notes values (3, 'bob', 'b2'), (4, 'alice', 'a2')");
    assert.deepEqual([(await a.next()).new, (await a.next()).new], [{ id: 1, owner: 'alice', body: 'a1' }, { id: 4, owner: 'alice', body: 'a2' }]);
    assert.deepEqual([(await b.next()).new.id, (await b.next()).new.id], [2, 3]);
    await sql('delete from notes where id = 1');
    // Deletes are not checked against policies (upstream): both see it, with the key only.
    assert.deepEqual((await a.next()).old, { id: 1 });
    assert.deepEqual((await b.next()).old, { id: 1 });
    // A new access_token re-subscribes with its claims: bob's channel now sees as alice.
    await bob.realtime.setAuth(tokenFor('authenticated', { sub: 'alice' }));
    const resubscribed = await until(bobSystem, (m) => m.extension === 'postgres_changes');
    assert.deepEqual([resubscribed.status, resubscribed.message], ['ok', 'Subscribed to PostgreSQL']);
    await sql("insert into notes values (5, 'alice', 'a3')");
    assert.equal((await b.next()).new.id, 5);
  } finally {
    await done(alice, bob);
  }
});

test('a role that cannot select the key gets Error 401; a table without a key Error 400', async () => {
  const client = supabase(stack.url, tokenFor('limited'));
  const anon = supabase(stack.url, stack.keys.anon);
  const secrets = new Inbox('secrets');
  const nokey = new Inbox('nokey');
  try {
    await pgChannel(client, 'secrets', [{ binding: { event: '*', schema: 'public', table: 'secrets' }, inbox: secrets }]);
    await pgChannel(anon, 'nokey', [{ binding: { event: '*', schema: 'public', table: 'nokey' }, inbox: nokey }]);
    await sql("insert into secrets values (1, 's')");
    await sql("insert into nokey values ('x')");
    const denied = await secrets.next();
    assert.deepEqual([denied.errors, denied.new, denied.commit_timestamp], [['Error 401: Unauthorized'], {}, null]);
    assert.deepEqual((await nokey.next()).errors, ['Error 400: Bad Request, no primary key']);
  } finally {
    await done(client, anon);
  }
});

test('REPLICA IDENTITY FULL: updates and deletes carry the whole old row', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const inbox = new Inbox('full');
  try {
    await pgChannel(client, 'full', [{ binding: { event: '*', schema: 'public', table: 'full_identity' }, inbox }]);
    await sql("insert into full_identity values (1, 'before')");
    await sql("update full_identity set body = 'after' where id = 1");
    await sql('delete from full_identity where id = 1');
    await inbox.next();
    const update = await inbox.next();
    assert.deepEqual([update.old, update.new], [{ id: 1, body: 'before' }, { id: 1, body: 'after' }]);
    assert.deepEqual((await inbox.next()).old, { id: 1, body: 'after' });
  } finally {
    await done(client);
  }
});

test('a row over 1 MiB arrives with its small fields and Error 413', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  const inbox = new Inbox('big');
  try {
    await pgChannel(client, 'big', [{ binding: { event: 'INSERT', schema: 'public', table: 'items' }, inbox }]);
    const id = nextId++;
    await sql("insert into items (id, n, name) values ($1, 1, repeat('x', 1100000))", [id]);
    const big = await inbox.next();
    assert.deepEqual(big.errors, ['Error 413: Payload Too Large']);
    assert.equal(big.new.id, id);
    assert.equal(big.new.n, 1);
    assert.equal('name' in big.new, false);
  } finally {
    await done(client);
  }
});

test('the replicator reports its work in /metrics', async () => {
  const text = await (await fetch(`${stack.replicator.url}/metrics`)).text();
  const value = (name) => Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);
  assert.ok(value('sluice_deliveries_total') > 0);
  assert.ok(value('sluice_rls_queries_total') > 0);
  assert.equal(value('sluice_replication_connected'), 1);
  await waitFor('no slot lag', async () => {
    const t = await (await fetch(`${stack.replicator.url}/metrics`)).text();
    return Number(t.match(/^sluice_slot_lag_bytes (\S+)$/m)?.[1]) === 0;
  });
});

test('a change committed right after "Subscribed to PostgreSQL" always arrives', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  try {
    for (let round = 0; round < 5; round++) {
      const inbox = new Inbox(`round ${round}`);
      const id = nextId++;
      await pgChannel(client, `right-after-${round}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'items', filter: `id=eq.${id}` }, inbox }]);
      await sql('insert into items (id) values ($1)', [id]);
      assert.equal((await inbox.next()).new.id, id);
    }
  } finally {
    await done(client);
  }
});

test('with postgres_changes_options.wait, SUBSCRIBED itself means changes flow', async () => {
  const client = supabase(stack.url, stack.keys.anon);
  try {
    for (let round = 0; round < 3; round++) {
      const inbox = new Inbox(`wait ${round}`);
      const id = nextId++;
      const channel = client.channel(`wait-${round}`, { config: { postgres_changes_options: { wait: true } } });
      channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'items', filter: `id=eq.${id}` }, inbox.push);
      await subscribe(channel);
      await sql('insert into items (id) values ($1)', [id]);
      assert.equal((await inbox.next()).new.id, id);
    }
  } finally {
    await done(client);
  }
});

/** Inserts `count` rows while `disrupt` runs, then a sentinel; asserts each arrived exactly once. */
async function exactlyOnceThrough(name, disrupt, { count = 6 } = {}) {
  const client = supabase(stack.url, stack.keys.anon);
  const inbox = new Inbox(name);
  try {
    await pgChannel(client, name, [{ binding: { event: 'INSERT', schema: 'public', table: 'items' }, inbox }]);
    const ids = Array.from({ length: count }, () => nextId++);
    await sql('insert into items (id) values ($1)', [ids[0]]);
    await disrupt(async () => {
      for (const id of ids.slice(1)) await sql('insert into items (id) values ($1)', [id]);
    });
    const sentinel = nextId++;
    await sql('insert into items (id) values ($1)', [sentinel]);
    const seen = [];
    await until(inbox, (p) => (seen.push(p.new.id), p.new.id === sentinel), 60_000);
    assert.deepEqual(seen, [...ids, sentinel], 'each change once, in order');
  } finally {
    await done(client);
  }
}

test('changes made while the replicator is killed (kill -9) arrive once after it restarts', async () => {
  await exactlyOnceThrough('kill-replicator', async (insertRest) => {
    const port = new URL(stack.replicator.url).port;
    stack.replicator.proc.child.kill('SIGKILL');
    await stack.replicator.proc.exited;
    await insertRest();
    stack.replicator = await startReplicator({ root: ROOT, databaseUrl: stack.pg.replicatorUrl, port, gatewayUrl: stack.gateway.url });
  });
});

test('a replicator stopped with SIGTERM mid-stream exits 0 and, restarted, delivers every change once', async () => {
  await exactlyOnceThrough('sigterm-replicator', async (insertRest) => {
    const port = new URL(stack.replicator.url).port;
    // Changes keep coming while it stops: some are in flight, some after it is gone.
    const writing = insertRest();
    stack.replicator.proc.child.kill('SIGTERM');
    const { code } = await stack.replicator.proc.exited;
    assert.equal(code, 0, 'a graceful stop');
    await writing;
    stack.replicator = await startReplicator({ root: ROOT, databaseUrl: stack.pg.replicatorUrl, port, gatewayUrl: stack.gateway.url });
  }, { count: 40 });
});

test('changes around a Postgres restart arrive once', async () => {
  await exactlyOnceThrough('restart-postgres', async (insertRest) => {
    await insertRest();
    await stack.pg.stop();
    await stack.pg.start();
  });
});

test('changes made while the hub is evicted from memory (a worker restart) arrive once', async (t) => {
  if (!stack.gateway.evictHub) return t.skip('the self-hosted gateway cannot evict an object on request (self_hosted.test.mjs restarts the process instead)');
  await exactlyOnceThrough('evict-hub', async (insertRest) => {
    const hubs = new Set(stack.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).filter(Boolean));
    const evicting = Promise.all([...hubs].map((h) => stack.gateway.evictHub(h)));
    await insertRest();
    await evicting;
  });
});
