// Tenants with databases of their own: tenant `alpha` (host 127.0.0.1) is served by the stack's
// replicator and Postgres (the deployment's REPLICATOR_URL and INTERNAL_SECRET); tenant `beta`
// (host localhost) by a second Postgres cluster and a replicator of its own, registered through
// the management API with its URL and its own secret. Each tenant's clients get their own
// Postgres Changes; beta's replicator cannot deliver to alpha's hubs (nor alpha's to beta's); and
// beta's database stopping does not hold up alpha's changes. Tenant `gamma` is registered by its
// replicator itself, configured only with upstream's environment variable names. Tenants `delta`,
// `epsilon` and `zeta` are databases of one cluster served by one replicator process. Tenant `eta`
// is created through the API with only its database settings (password included), and served by
// the deployment's replicator.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { DEV_API_SECRET, DEV_INTERNAL_SECRET, signJwt, signedRequest, tokenFor } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, waitFor } from '../stack/process.mjs';
import { replicatorBinary, startReplicator } from '../stack/replicator.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';
import { done, Inbox, pgChannel, rawSocket, refusedUpgrade, supabase, until } from './clients.mjs';

const SECRETS = Object.fromEntries(['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta'].map((t) => [t, `${t}-project-jwt-secret-with-at-least-32-characters`]));
const BETA_REPLICATOR_SECRET = 'beta-replicator-internal-secret-of-at-least-32-chars';
const TABLE = `create table items (id bigint primary key, body text); grant select on items to anon;`;

let stack;
let betaDb;
let betaReplicator;
before(async () => {
  stack = await startStack({ name: 'e2e-tenant-databases', vars: { TENANT_HOSTS: JSON.stringify({ '127.0.0.1': 'alpha', localhost: 'beta' }) } });
  await stack.pg.createRoles('anon');
  await stack.pg.sql(`${TABLE} alter publication supabase_realtime add table items`);
  betaDb = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-tenant-databases-beta', 'postgres') });
  await betaDb.sql(`create role anon nologin; ${TABLE} create publication supabase_realtime for table items`);
  betaReplicator = await startReplicator({
    root: ROOT, databaseUrl: betaDb.url, port: await freePort(), gatewayUrl: stack.url,
    env: { SLUICE_INTERNAL_SECRET: BETA_REPLICATOR_SECRET, SLUICE_TENANT: 'beta' },
  });
  const admin = signJwt({ role: 'supabase_admin' }, DEV_API_SECRET);
  for (const tenant of [
    { external_id: 'alpha', jwt_secret: SECRETS.alpha },
    { external_id: 'beta', jwt_secret: SECRETS.beta, replicator_url: betaReplicator.url, replicator_secret: BETA_REPLICATOR_SECRET },
  ]) {
    const res = await fetch(`${stack.url}/api/tenants`, { method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify({ tenant }) });
    assert.equal(res.status, 201, await res.text());
  }
});
after(async () => {
  await betaReplicator?.stop();
  await betaDb?.destroy();
  await stack?.stop();
});

const at = (host) => {
  const url = new URL(stack.url);
  url.hostname = host;
  return url.origin;
};

/** A call to the management API with an admin token. */
const api = (method, path, body) => fetch(`${stack.url}${path}`, {
  method, headers: { authorization: `Bearer ${stack.adminKey}`, 'content-type': 'application/json' }, body: body && JSON.stringify(body),
});

async function subscriber(tenant) {
  const client = supabase(at(tenant === 'alpha' ? '127.0.0.1' : 'localhost'), tokenFor('anon', { secret: SECRETS[tenant] }));
  const inbox = new Inbox(`items of ${tenant}`);
  // Served within the settings cache's few seconds after the tenants were created.
  await waitFor(`${tenant} joined`, () => pgChannel(client, 'items', [{ binding: { event: 'INSERT', schema: 'public', table: 'items' }, inbox }]).then(() => true));
  return { client, inbox };
}

test('each tenant gets the changes of its own database, on channels of the same name', async () => {
  const [alpha, beta] = [await subscriber('alpha'), await subscriber('beta')];
  try {
    await stack.pg.sql(`insert into items values (1, 'alpha one')`);
    await betaDb.sql(`insert into items values (1, 'beta one')`);
    await stack.pg.sql(`insert into items values (2, 'alpha two')`);
    assert.deepEqual([(await alpha.inbox.next()).new.body, (await alpha.inbox.next()).new.body], ['alpha one', 'alpha two']);
    await betaDb.sql(`insert into items values (2, 'beta two')`);
    assert.deepEqual([(await beta.inbox.next()).new.body, (await beta.inbox.next()).new.body], ['beta one', 'beta two']);
  } finally {
    await done(alpha.client, beta.client);
  }
});

test("a replicator's credential reaches its own tenant's hubs only", async () => {
  const batch = { stream: 'test', changes: [] };
  const post = (hub, secret) => {
    const url = `${stack.url}/internal/v1/changes/${encodeURIComponent(hub)}`;
    return fetch(url, signedRequest('POST', url, batch, { secret })).then((r) => r.status);
  };
  assert.equal(await post('hub:beta:default:0', BETA_REPLICATOR_SECRET), 200);
  assert.equal(await post('hub:beta:default:0', DEV_INTERNAL_SECRET), 401, "the deployment's secret does not reach beta");
  assert.equal(await post('hub:alpha:default:0', BETA_REPLICATOR_SECRET), 401, "beta's secret does not reach alpha");
  assert.equal(await post('hub:alpha:default:0', DEV_INTERNAL_SECRET), 200);
  const ping = (tenant, secret) => {
    const url = `${stack.url}/internal/v1/ping/${tenant}`;
    return fetch(url, signedRequest('GET', url, undefined, { secret })).then((r) => r.status);
  };
  assert.deepEqual([await ping('beta', BETA_REPLICATOR_SECRET), await ping('beta', DEV_INTERNAL_SECRET)], [204, 401]);
});

test("one tenant's database stopping does not hold up another's changes", async () => {
  const alpha = await subscriber('alpha');
  try {
    await betaDb.stop();
    await stack.pg.sql(`insert into items values (3, 'alpha while beta is down')`);
    assert.equal((await alpha.inbox.next()).new.body, 'alpha while beta is down');
  } finally {
    await done(alpha.client);
    await betaDb.start();
  }
});

test('a channel that joined while its database was down is subscribed once the database is back (tried again every 5 to 10 s, as upstream)', async () => {
  await betaDb.stop();
  let ws;
  let down = true;
  try {
    const apikey = tokenFor('anon', { secret: SECRETS.beta });
    const raw = await rawSocket(stack.url, { apikey, vsn: '1.0.0', headers: { host: 'beta.example.com' } });
    ws = raw.ws;
    ws.send(JSON.stringify({ topic: 'realtime:items', event: 'phx_join', ref: '1', join_ref: '1',
      payload: { access_token: apikey, config: { postgres_changes: [{ event: 'INSERT', schema: 'public', table: 'items' }] } } }));
    assert.equal((await until(raw.inbox, (m) => m.event === 'phx_reply')).payload.status, 'ok');
    const pgSystem = (m) => m.event === 'system' && m.payload.extension === 'postgres_changes';
    const failed = await until(raw.inbox, pgSystem);
    assert.equal(failed.payload.status, 'error', JSON.stringify(failed));
    await betaDb.start();
    down = false;
    const subscribed = await until(raw.inbox, (m) => pgSystem(m) && m.payload.status === 'ok', 30_000);
    assert.match(subscribed.payload.message, /Subscribed to PostgreSQL/);
    await betaDb.sql(`insert into items values (20, 'beta once it is back')`);
    const change = await until(raw.inbox, (m) => m.event === 'postgres_changes');
    assert.equal(change.payload.data.record.body, 'beta once it is back');
  } finally {
    ws?.close();
    if (down) await betaDb.start();
  }
});

test("deleting a tenant tells its replicator: subscriptions forgotten, slot dropped, the replicator stops", async () => {
  const beta = await subscriber('beta');
  try {
    assert.equal((await betaDb.sql('select count(*)::int as n from sluice.subscriptions'))[0].n, 1);
    assert.equal((await betaDb.sql('select count(*)::int as n from pg_replication_slots'))[0].n, 1);
    const admin = signJwt({ role: 'supabase_admin' }, DEV_API_SECRET);
    const res = await fetch(`${stack.url}/api/tenants/beta`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } });
    assert.equal(res.status, 204);
    const { code } = await betaReplicator.proc.exited;
    assert.equal(code, 0, 'the retired replicator exits cleanly');
    assert.deepEqual(await betaDb.sql('select slot_name from pg_replication_slots'), []);
    assert.deepEqual(await betaDb.sql('select hub from sluice.subscriptions'), []);
    assert.ok(betaReplicator.proc.lines.some((l) => l.includes('the tenant was deleted')));
  } finally {
    await done(beta.client);
  }
});

/**
 * A client of `tenant` through its own Host (`<tenant>.example.com`), speaking the protocol raw
 * (supabase-js cannot set a Host), subscribed to INSERTs on `items`; `next()` is the next row's body.
 */
async function rawSubscriber(tenant) {
  const apikey = tokenFor('anon', { secret: SECRETS[tenant] });
  const { ws, inbox } = await waitFor(`${tenant} served`, () => rawSocket(stack.url, { apikey, vsn: '1.0.0', headers: { host: `${tenant}.example.com` } }).catch(() => null));
  ws.send(JSON.stringify({ topic: 'realtime:items', event: 'phx_join', ref: '1', join_ref: '1',
    payload: { access_token: apikey, config: { postgres_changes: [{ event: 'INSERT', schema: 'public', table: 'items' }] } } }));
  assert.equal((await until(inbox, (m) => m.event === 'phx_reply')).payload.status, 'ok');
  await until(inbox, (m) => m.event === 'system' && /Subscribed to PostgreSQL/.test(m.payload.message ?? ''));
  return { next: async () => (await until(inbox, (m) => m.event === 'postgres_changes')).payload.data.record.body, close: () => ws.close() };
}

test("a replicator configured with upstream's variable names registers its tenant and serves it", async () => {
  const gammaDb = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-tenant-databases-gamma', 'postgres') });
  let replicator;
  try {
    await gammaDb.sql(`create role anon nologin; ${TABLE} create publication supabase_realtime for table items`);
    const url = new URL(gammaDb.url);
    replicator = await startReplicator({
      root: ROOT, databaseUrl: '', port: await freePort(), gatewayUrl: stack.url,
      env: {
        SLUICE_INTERNAL_SECRET: '',
        DB_HOST: url.hostname, DB_PORT: url.port, DB_NAME: 'postgres', DB_USER: url.username, DB_PASSWORD: '', DB_SSL: 'false',
        SLOT_NAME: 'supabase_realtime_replication_slot', PUBLICATIONS: '["supabase_realtime"]', TEMPORARY_SLOT: 'true', SECURE_CHANNELS: 'true',
        API_JWT_SECRET: DEV_API_SECRET, JWT_SECRET: SECRETS.gamma, SELF_HOST_TENANT_NAME: 'gamma',
      },
    });
    const admin = signJwt({ role: 'supabase_admin' }, DEV_API_SECRET);
    const registered = await waitFor('gamma registered', async () => {
      const res = await fetch(`${stack.url}/api/tenants/gamma`, { headers: { authorization: `Bearer ${admin}` } });
      return res.status === 200 && res.json();
    });
    assert.equal(registered.data.replicator_url, replicator.url);
    assert.ok(replicator.proc.lines.some((l) => l.includes('TEMPORARY_SLOT=true: sluice keeps a permanent slot')), 'what sluice does instead is logged');
    assert.equal((await gammaDb.sql(`select slot_name, temporary from pg_replication_slots`))[0]?.slot_name, 'supabase_realtime_replication_slot');

    // A client of gamma (its own Host) gets gamma's changes.
    const gamma = await rawSubscriber('gamma');
    try {
      await gammaDb.sql(`insert into items values (1, 'gamma one')`);
      assert.equal(await gamma.next(), 'gamma one');
    } finally {
      gamma.close();
    }
  } finally {
    await replicator?.stop();
    await gammaDb.destroy();
  }
});

test('one replicator process serves many tenant databases: each its own, one failing holds up no other, tenants added and removed while it runs', async () => {
  const cluster = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-tenant-databases-many', 'postgres') });
  const folder = join(ROOT, '.local', 'e2e-tenant-databases-many', 'replicator');
  mkdirSync(folder, { recursive: true });
  const file = join(folder, 'tenants.json');
  let replicator;
  const clients = [];
  try {
    await cluster.sql('create role anon nologin');
    const ports = {};
    const entry = async (tenant) => {
      await cluster.sql(`create database ${tenant}`);
      const db = new URL(cluster.url);
      db.pathname = `/${tenant}`;
      await cluster.sql(`${TABLE} create publication supabase_realtime for table items`, [], tenant);
      ports[tenant] = await freePort();
      return { SLUICE_DATABASE_URL: db.toString(), SLUICE_HTTP_ADDR: `127.0.0.1:${ports[tenant]}`, JWT_SECRET: SECRETS[tenant] };
    };
    const tenants = { delta: await entry('delta'), epsilon: await entry('epsilon') };
    writeFileSync(file, JSON.stringify({ tenants }));
    replicator = await startReplicator({
      root: ROOT, databaseUrl: cluster.url, port: ports.delta, gatewayUrl: stack.url,
      env: { SLUICE_TENANTS_FILE: file, SLUICE_INTERNAL_SECRET: '', API_JWT_SECRET: DEV_API_SECRET },
    });
    const delta = await rawSubscriber('delta');
    const epsilon = await rawSubscriber('epsilon');
    clients.push(delta, epsilon);
    await cluster.sql(`insert into items values (1, 'delta one')`, [], 'delta');
    await cluster.sql(`insert into items values (1, 'epsilon one')`, [], 'epsilon');
    assert.equal(await delta.next(), 'delta one');
    assert.equal(await epsilon.next(), 'epsilon one');

    // Epsilon's database refuses connections: delta's changes keep flowing.
    await cluster.sql(`alter database epsilon allow_connections false`);
    await cluster.sql(`select pg_terminate_backend(pid) from pg_stat_activity where datname = 'epsilon'`);
    await cluster.sql(`insert into items values (2, 'delta while epsilon is down')`, [], 'delta');
    assert.equal(await delta.next(), 'delta while epsilon is down');
    await cluster.sql(`alter database epsilon allow_connections true`);

    // A tenant added to the file is registered and served within seconds; one removed stops.
    tenants.zeta = await entry('zeta');
    delete tenants.epsilon;
    writeFileSync(file, JSON.stringify({ tenants }));
    const zeta = await rawSubscriber('zeta');
    clients.push(zeta);
    await cluster.sql(`insert into items values (1, 'zeta one')`, [], 'zeta');
    assert.equal(await zeta.next(), 'zeta one');
    await waitFor("epsilon's API closed", () => fetch(`http://127.0.0.1:${ports.epsilon}/healthz`).then(() => false, () => true));
  } finally {
    for (const c of clients) c.close();
    await replicator?.stop();
    await cluster.destroy();
  }
});

test("a tenant created through the API with its database settings is served by the deployment's replicator within seconds, reconnects on shutdown, and stops being served when deleted", async () => {
  // Its database: on the stack's managed-like server (TLS and passwords only), a role of its own.
  const role = 'eta_sluice';
  const password = "eta's password, sealed";
  await stack.pg.sql('create database eta');
  await stack.pg.sql(`create table items (id bigint primary key, body text)`, [], 'eta');
  const setup = execFileSync(replicatorBinary(ROOT), ['setup-sql'], {
    env: { ...process.env, SLUICE_DATABASE_URL: `postgres://${role}:${encodeURIComponent(password)}@localhost:${stack.pg.port}/eta` },
  }).toString();
  await stack.pg.sql(setup, [], 'eta');
  await stack.pg.sql('grant select on items to anon; alter publication supabase_realtime add table items', [], 'eta');

  const settings = { db_host: 'localhost', db_port: String(stack.pg.port), db_name: 'eta', db_user: role, db_password: password, ssl_enforced: true, region: 'local' };
  const created = await api('POST', '/api/tenants', { tenant: { external_id: 'eta', jwt_secret: SECRETS.eta, extensions: [{ type: 'postgres_cdc_rls', settings }] } });
  const createdText = await created.text();
  assert.equal(created.status, 201, createdText);
  const shown = await (await api('GET', '/api/tenants/eta')).text();
  for (const text of [createdText, shown]) {
    assert.ok(!text.includes(password) && !text.includes('db_password'), `no password, sealed or not, in ${text}`);
  }
  assert.equal(JSON.parse(shown).data.extensions[0].settings.db_host, 'localhost');

  // Served within seconds: its health says so once the deployment's replicator streams its database.
  await waitFor('eta served', async () => (await (await api('GET', '/api/tenants/eta/health')).json()).data.replication_connected === true);
  const eta = await rawSubscriber('eta');
  try {
    await stack.pg.sql(`insert into items values (1, 'eta one')`, [], 'eta');
    assert.equal(await eta.next(), 'eta one');
    const walsender = async () => (await stack.pg.sql(`select active_pid from pg_replication_slots where slot_name = 'sluice_changes_eta' and database = 'eta'`))[0]?.active_pid;
    const before = await walsender();
    assert.ok(before, "eta's slot is streamed");

    // Shutdown, as upstream: its database connections are made again; clients stay and miss nothing.
    assert.equal((await api('POST', '/api/tenants/eta/shutdown')).status, 204);
    await waitFor('eta reconnected', async () => ![before, null, undefined].includes(await walsender()));
    await stack.pg.sql(`insert into items values (2, 'eta after shutdown')`, [], 'eta');
    assert.equal(await eta.next(), 'eta after shutdown');

    // Its replicator signs with a credential of eta's own: the deployment's secret does not reach eta's hubs.
    const post = (secret) => {
      const url = `${stack.url}/internal/v1/changes/${encodeURIComponent('hub:eta:default:0')}`;
      return fetch(url, signedRequest('POST', url, { stream: 'test', changes: [] }, { secret })).then((r) => r.status);
    };
    const etaSecret = createHmac('sha256', DEV_INTERNAL_SECRET).update('sluice deployment replicator, tenant eta').digest('hex');
    assert.deepEqual([await post(etaSecret), await post(DEV_INTERNAL_SECRET), await post(BETA_REPLICATOR_SECRET)], [200, 401, 401]);

    assert.equal((await api('DELETE', '/api/tenants/eta')).status, 204);
    await waitFor("eta's slot dropped", async () => (await stack.pg.sql(`select count(*)::int as n from pg_replication_slots where slot_name = 'sluice_changes_eta'`))[0].n === 0);
    assert.deepEqual(await stack.pg.sql('select hub from sluice.subscriptions', [], 'eta'), []);
  } finally {
    eta.close();
  }
});

test("a deleted tenant's subscriptions left in the deployment's replicator are forgotten, and hold up no other tenant's changes", async () => {
  // Theta has no database of its own: its channels subscribe to the deployment's (alpha's). A
  // subscription of theta's that outlived the tenant (its hub could not say goodbye) is made here
  // directly, as theta's hub would have registered it.
  assert.equal((await api('POST', '/api/tenants', { tenant: { external_id: 'theta', jwt_secret: 'theta-project-jwt-secret-with-at-least-32-characters' } })).status, 201);
  assert.equal((await api('DELETE', '/api/tenants/theta')).status, 204);
  // Once the gateway's tenant cache (a few seconds) knows theta is gone.
  const thetaKey = tokenFor('anon', { secret: 'theta-project-jwt-secret-with-at-least-32-characters' });
  await waitFor('theta gone', async () => (await refusedUpgrade(stack.url, { apikey: thetaKey, vsn: '2.0.0', headers: { host: 'theta.example.com' } }).catch(() => null))?.status === 404);
  const url = `${stack.replicator.url}/v1/subscriptions`;
  const left = await fetch(url, signedRequest('POST', url, { hub: 'hub:theta:default:0', socket: 'left-behind', topic: 'realtime:items', claims: { role: 'anon', exp: 9999999999 }, bindings: [{ event: 'INSERT', schema: 'public', table: 'items' }] }));
  assert.equal(left.status, 200, await left.text());

  const alpha = await subscriber('alpha');
  try {
    // Each insert its own transaction, so its own batch: none may wait behind a refused delivery to theta.
    for (const id of [10, 11, 12]) {
      await stack.pg.sql(`insert into items values (${id}, 'alpha after theta was deleted')`);
      assert.equal((await alpha.inbox.next()).new.id, id);
    }
    const thetaHubs = `select count(*)::int as n from sluice.subscriptions where hub like 'hub:theta:%'`;
    await waitFor("theta's subscriptions forgotten", async () => (await stack.pg.sql(thetaHubs))[0].n === 0);
  } finally {
    await done(alpha.client);
  }
});
