// WAL safety: a slot the gateway cannot drain must not fill the database's disk. With the gateway
// cut off from the replicator (a proxy), writes past the limit make the replicator recreate its
// slot, the database's retained WAL drops back, and every subscribed channel is told changes
// were lost before any later change reaches it. A slot Postgres invalidated
// (max_slot_wal_keep_size) is handled the same way.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { waitFor } from '../stack/process.mjs';
import { startStack } from '../stack/stack.mjs';
import { done, Inbox, pgChannel, supabase, until } from './clients.mjs';

const LOST = "Changes were lost: the replication slot was recreated to protect the database's disk; fetch the data again";
const MB = 1024 * 1024;

async function prepare(stack) {
  await stack.pg.createRoles('anon');
  // Storage external: each row's megabyte goes to the WAL uncompressed.
  await stack.pg.sql(`create table public.big (id int primary key, body text);
    alter table public.big alter column body set storage external;
    grant select on public.big to anon;
    alter publication supabase_realtime add table public.big`);
}

const writeMegabytes = (stack, from, count) => stack.pg.sql(
  `insert into public.big select i, repeat('x', ${MB}) from generate_series($1::int, $2::int) i`, [from, from + count - 1]);

async function slot(stack) {
  const [row] = await stack.pg.sql(`select (pg_current_wal_lsn() - restart_lsn)::bigint as retained, wal_status
    from pg_replication_slots where slot_name = 'sluice_changes'`);
  return row;
}

async function metric(stack, name) {
  const text = await (await fetch(`${stack.replicator.url}/metrics`)).text();
  return Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);
}

async function subscriber(stack, vsn) {
  const client = supabase(stack.url, stack.keys.anon, vsn);
  const inbox = new Inbox(`big on ${vsn}`);
  const { system } = await pgChannel(client, `wal-${vsn}`, [{ binding: { event: 'INSERT', schema: 'public', table: 'big' }, inbox }]);
  return { client, inbox, system };
}

/** With the gateway back: each channel gets the notice, then the next change, and nothing of the gap. */
async function toldThenFlowing(stack, subscribers) {
  stack.proxy.resume();
  for (const { system } of subscribers) {
    const notice = await until(system, (m) => m.extension === 'postgres_changes', 30_000);
    assert.deepEqual({ status: notice.status, message: notice.message }, { status: 'error', message: LOST });
  }
  await stack.pg.sql(`insert into public.big values (100000, 'after')`);
  for (const { inbox } of subscribers) assert.equal((await inbox.next(15_000)).new.id, 100000);
}

describe('a slot past SLUICE_SLOT_MAX_SIZE', () => {
  let stack;
  before(async () => {
    stack = await startStack({ name: 'e2e-wal-limit', gatewayProxy: true,
      replicatorEnv: { SLUICE_SLOT_WARN_SIZE: '2MB', SLUICE_SLOT_MAX_SIZE: '24MB' } });
    await prepare(stack);
  });
  after(() => stack?.stop());

  test('gateway unreachable: degraded past the warning, then the slot recreated, WAL released, channels told', async () => {
    const subscribers = [await subscriber(stack, '1.0.0'), await subscriber(stack, '2.0.0')];
    try {
      stack.proxy.pause();
      await writeMegabytes(stack, 1, 4);
      const health = await waitFor('/healthz to report the slot', async () => {
        const body = await (await fetch(`${stack.replicator.url}/healthz`)).json();
        return body.slot && body;
      });
      assert.equal(health.status, 'degraded');
      assert.match(health.slot, /^the slot retains \d+ (kB|MB) of WAL \(warning at 2048 kB/);
      assert.equal(await metric(stack, 'sluice_slot_resets_total'), 0);
      for (let i = 0; i < 4; i++) await writeMegabytes(stack, 5 + 8 * i, 8);
      await waitFor('the slot to be recreated', async () => (await metric(stack, 'sluice_slot_resets_total')) === 1);
      const { retained } = await slot(stack);
      assert.ok(Number(retained) < 24 * MB, `the slot still retains ${retained} bytes`);
      await toldThenFlowing(stack, subscribers);
      const healthy = await (await fetch(`${stack.replicator.url}/healthz`)).json();
      assert.equal(healthy.slot, undefined);
    } finally {
      stack.proxy.resume();
      await done(...subscribers.map((s) => s.client));
    }
  });
});

describe('a slot Postgres invalidates (max_slot_wal_keep_size)', () => {
  let stack;
  before(async () => {
    stack = await startStack({ name: 'e2e-wal-lost', gatewayProxy: true,
      pgSettings: { max_slot_wal_keep_size: '8MB' }, replicatorEnv: { SLUICE_SLOT_MAX_SIZE: 'off' } });
    await prepare(stack);
  });
  after(() => stack?.stop());

  test('is recreated and the channels told, as past the limit', async () => {
    const subscribers = [await subscriber(stack, '2.0.0')];
    try {
      stack.proxy.pause();
      for (let i = 0; i < 5; i++) {
        await writeMegabytes(stack, 1 + 8 * i, 8);
        await stack.pg.sql('select pg_switch_wal()');
      }
      await stack.pg.sql('checkpoint');
      await waitFor('the slot to be recreated', async () => (await metric(stack, 'sluice_slot_resets_total')) === 1);
      const { retained, wal_status } = await slot(stack);
      assert.notEqual(wal_status, 'lost');
      assert.ok(Number(retained) < 8 * MB, `the slot retains ${retained} bytes`);
      await toldThenFlowing(stack, subscribers);
    } finally {
      stack.proxy.resume();
      await done(...subscribers.map((s) => s.client));
    }
  });
});
