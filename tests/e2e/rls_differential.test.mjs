// RLS, differentially: random sets of permissive and restrictive policies (the families people
// write: a column equal to a claim, with and without `(select ...)`, the column cast to text,
// an OR of such parts, membership through another
// table in both forms (and with the membership table's own RLS on or off), helper functions
// (SECURITY DEFINER, set-returning, of the subscriber alone), membership two levels deep
// through a join, conditions of the claims alone, role-only, `using (true)`, arbitrary SQL), random subscribers (roles, claims) and
// random changes. What the replicator delivers must be, set for set, what Postgres says when asked for
// each (change, subscriber) pair on its own. Against the replicator directly (a stand-in gateway
// records the batches), so that many rounds fit in seconds.
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { signedRequest } from '../stack/keys.mjs';
import { Postgres } from '../stack/postgres.mjs';
import { freePort, waitFor } from '../stack/process.mjs';
import { startReplicator } from '../stack/replicator.mjs';
import { ROOT } from '../stack/stack.mjs';

/** A small seeded generator (mulberry32), so a failing round can be replayed. */
function random(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n), pick: (list) => list[Math.floor(next() * list.length)] };
}

const USERS = ['0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e01', '0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e02', '0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e03',
  '0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e04', '0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e05', '0b3c7a52-8f9d-4f3e-9d5c-1a2b3c4d5e06'];

/** Policy families: [name, SQL after `on docs`]. */
const PERMISSIVE = [
  ['owner', `as permissive for select to authenticated using (owner = auth.uid())`],
  ['owner_select', `as permissive for select to authenticated using (owner = (select auth.uid()))`],
  ['owner_text', `as permissive for select using (label = (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'))`],
  ['team_claim', `as permissive for select using (team = ((auth.jwt() ->> 'team'))::int)`],
  // A cast on the column side, either way round (uuid and int compared by their text).
  ['owner_cast', `as permissive for select to authenticated using (owner::text = auth.jwt() ->> 'sub')`],
  ['owner_cast_rev', `as permissive for select using ((auth.jwt() ->> 'sub') = cast(owner as text))`],
  ['team_cast', `as permissive for select using (team::text = (current_setting('request.jwt.claims', true)::jsonb ->> 'team'))`],
  // OR of recognised parts: the union of their audiences.
  ['owner_or_team', `as permissive for select to authenticated using (owner = auth.uid() or team = ((auth.jwt() ->> 'team'))::int)`],
  ['label_or_member', `as permissive for select using (label::text = (select auth.jwt() ->> 'sub') or team in (select m.team from members m where m.user_id = auth.uid()))`],
  ['role_or_team_cast', `as permissive for select using ((auth.jwt() ->> 'role') = 'anon' or team::text = (auth.jwt() ->> 'team'))`],
  // The subscriber among an array's elements (some arrays empty, some NULL, some with NULLs).
  ['reader', `as permissive for select to authenticated using (auth.uid() = any (readers))`],
  ['member', `as permissive for select to authenticated using (exists (select 1 from members m where m.team = docs.team and m.user_id = auth.uid()))`],
  ['member_in', `as permissive for select to authenticated using (team in (select m.team from members m where m.user_id = (select auth.uid())))`],
  // Helper functions put in place: a SECURITY DEFINER membership check, an owner OR a role read
  // through one, a set-returning one, and a condition of the subscriber alone.
  ['helper_member', `as permissive for select to authenticated using (is_team_member(team))`],
  ['owner_or_admin', `as permissive for select to authenticated using (owner = auth.uid() or has_role_in(auth.uid(), 'admin'))`],
  ['teams_of', `as permissive for select using (team in (select teams_of('lead')))`],
  ['editors', `as permissive for select using (exists (select 1 from roles r where r.user_id = auth.uid() and r.role = 'editor'))`],
  // Membership two levels deep: a seat of the row's team held by the subscriber's profile, through
  // a join (and through a comma with the join in the WHERE, with a filter on the second table).
  ['seat_holder', `as permissive for select to authenticated using (exists (select 1 from seats s join profiles p on p.id = s.profile where s.team = docs.team and p.auth_id = auth.uid()))`],
  ['staff_seat', `as permissive for select using (team in (select s.team from profiles p, seats s where s.profile = p.id and p.auth_id = (select auth.uid()) and p.kind = 'staff'))`],
  // Lists of the claims (nested too) and constant lists.
  ['team_in_claims', `as permissive for select using (team in (select jsonb_array_elements_text(auth.jwt() -> 'teams')::int))`],
  ['team_any_claims', `as permissive for select using (team = any (array(select jsonb_array_elements_text(auth.jwt() -> 'app_metadata' -> 'teams'))::int[]))`],
  ['label_in_list', `as permissive for select using (label in ('${USERS[0]}', '${USERS[1]}'))`],
  ['claims_role', `as permissive for select using ((auth.jwt() ->> 'role') = 'authenticated')`],
  ['open_anon', `as permissive for select to anon using (true)`],
  ['public_rows', `as permissive for select using (public)`],
  ['any_sql', `as permissive for select using (id % 3 = 0 and body like 'b%')`],
  // Fails (division by zero) for subscribers of team 0: the rows stay hidden from them only.
  ['fails_for_some', `as permissive for select using (id / ((auth.jwt() ->> 'team'))::int > 1000000)`],
];
/** The permissive families on the indexed path. */
const RECOGNISED = new Set(['owner', 'owner_select', 'owner_text', 'team_claim', 'owner_cast', 'owner_cast_rev', 'team_cast',
  'owner_or_team', 'label_or_member', 'role_or_team_cast', 'reader', 'member', 'member_in', 'claims_role', 'open_anon',
  'helper_member', 'owner_or_admin', 'teams_of', 'editors', 'seat_holder', 'staff_seat', 'team_in_claims', 'team_any_claims', 'label_in_list']);
const RESTRICTIVE = [
  ['no_secret', `as restrictive for select using (body <> 'secret')`],
  ['small_team', `as restrictive for select using (team < 4)`],
  ['owned', `as restrictive for select to authenticated using (owner is not null)`],
];

let database;
let db;
let replicator;
let gateway;

/** A stand-in gateway: records every (socket, row id) delivered. */
async function recordingGateway() {
  const delivered = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c)).on('end', () => {
      // The deployment's replicator asks which tenant databases to serve: none here.
      if (req.url === '/internal/v1/databases') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"tenants":{}}');
      if (req.url.startsWith('/internal/v1/changes/')) {
        for (const change of JSON.parse(body).changes) {
          for (const payload of change.payloads) {
            for (const to of payload.to) delivered.push({ socket: to.socket, id: payload.data.record?.id, errors: payload.data.errors });
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"gone":[]}');
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, delivered, stop: () => new Promise((r) => server.close(r)) };
}

before(async () => {
  database = await Postgres.create({ dir: join(ROOT, '.local', 'e2e-rls-differential', 'postgres') });
  db = new pg.Client(database.clientConfig());
  await db.connect();
  await db.query(`
    create role anon nologin; create role authenticated nologin;
    create schema auth;
    create function auth.jwt() returns jsonb language sql stable as $$
      select nullif(current_setting('request.jwt.claims', true), '')::jsonb $$;
    create function auth.uid() returns uuid language sql stable as $$
      select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
    grant usage on schema auth to anon, authenticated;
    create table docs (id int primary key, owner uuid, label text, team int not null, public bool not null, body text not null, readers uuid[]);
    alter table docs enable row level security;
    create table members (team int not null, user_id uuid not null, kind text not null);
    create policy own_memberships on members for select using ((user_id = auth.uid() and team <> 3) or team = 2);
    create table roles (user_id uuid not null, role text not null);
    create policy own_roles on roles for select using (user_id = auth.uid() and role <> 'editor');
    create table profiles (id int primary key, auth_id uuid, kind text not null);
    create policy own_profile on profiles for select using (auth_id = auth.uid() and kind = 'staff');
    create table seats (team int not null, profile int not null);
    create policy seats_but_team_4 on seats for select using (team <> 4);
    grant select on docs, members, roles, profiles, seats to anon, authenticated;
    create function is_team_member(t int) returns boolean language sql security definer stable as $$
      select exists (select 1 from members where team = t and user_id = auth.uid()) $$;
    create function has_role_in(uid uuid, wanted text) returns boolean language sql security definer as $$
      select exists (select 1 from roles where roles.user_id = $1 and roles.role = $2) $$;
    create function teams_of(k text) returns setof int language sql stable as $$
      select m.team from members m where m.user_id = auth.uid() and m.kind = k $$;
    create table marks (id int primary key);
    grant select on marks to anon, authenticated;
    create publication supabase_realtime for table docs, marks`);
  gateway = await recordingGateway();
  replicator = await startReplicator({ root: ROOT, databaseUrl: database.url, port: await freePort(), gatewayUrl: gateway.url });
});

after(async () => {
  await replicator?.stop();
  await gateway?.stop();
  await db?.end();
  await database?.destroy();
});

async function register(socket, claims, table) {
  const url = `${replicator.url}/v1/subscriptions`;
  const res = await fetch(url, signedRequest('POST', url, { hub: 'hub:t:na:0', socket, topic: `realtime:${socket}`, claims, bindings: [{ event: 'INSERT', schema: 'public', table }] }));
  assert.equal(res.status, 200, await res.text());
}

/** What Postgres says: can this subscriber see row `id`? Asked on its own; a policy that fails for it hides the row. */
async function sees({ role, claims }, id) {
  await db.query('begin');
  try {
    await db.query(`select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)`, [role, JSON.stringify(claims)]);
    return (await db.query('select exists (select 1 from docs where id = $1) as seen', [id])).rows[0].seen;
  } catch (e) {
    if (e.code !== '22012') throw e; // division_by_zero, from `fails_for_some`
    return false;
  } finally {
    await db.query('rollback');
  }
}

test('deliveries equal what Postgres allows each subscriber, for random policies, subscribers and changes', async () => {
  // Subscribers, registered once: roles and claims drawn at random.
  const setup = random(7);
  const subscribers = [];
  for (let n = 0; n < 24; n++) {
    const role = setup.next() < 0.3 ? 'anon' : 'authenticated';
    const claims = { role, exp: 9999999999, ...(role === 'authenticated' && setup.next() < 0.9 ? { sub: setup.pick(USERS) } : {}), ...(setup.next() < 0.7 ? { team: setup.int(6) } : {}),
      ...(setup.next() < 0.6 ? { teams: Array.from({ length: setup.int(3) }, () => setup.int(6)) } : {}),
      ...(setup.next() < 0.5 ? { app_metadata: { teams: Array.from({ length: setup.int(3) }, () => setup.int(6)) } } : {}) };
    subscribers.push({ socket: `s${n}`, role, claims });
    await register(`s${n}`, claims, 'docs');
  }
  await register('sentinel', { role: 'anon', exp: 9999999999 }, 'marks');

  for (let round = 0; round < 40; round++) {
    const rng = random(1000 + round);
    // One policy sluice does not analyse sends the whole table to the batched check: the last
    // rounds draw only from the families it recognises, so that the indexed path decides.
    const pool = round < 30 ? PERMISSIVE : PERMISSIVE.filter(([name]) => RECOGNISED.has(name));
    const policies = [
      ...pool.filter(() => rng.next() < 0.35),
      ...RESTRICTIVE.filter(() => rng.next() < 0.3),
    ];
    await db.query(`do $$ declare p record; begin
      for p in select policyname from pg_policies where tablename = 'docs' loop execute format('drop policy %I on docs', p.policyname); end loop; end $$`);
    for (const [name, sql] of policies) await db.query(`create policy ${name} on docs ${sql}`);
    // The membership tables' own policies apply inside a subscriber's: in some rounds they hide
    // some of a user's own rows (then the membership read alone would find too many).
    await db.query(`alter table members ${rng.next() < 0.4 ? 'enable' : 'disable'} row level security`);
    for (const table of ['roles', 'profiles', 'seats']) {
      await db.query(`alter table ${table} ${rng.next() < 0.4 ? 'enable' : 'disable'} row level security`);
    }
    await db.query('delete from members; delete from roles; delete from profiles; delete from seats');
    for (let m = 0; m < 6; m++) await db.query('insert into members values ($1, $2, $3)', [rng.int(6), rng.pick(USERS), rng.pick(['lead', 'member'])]);
    for (let m = 0; m < 3; m++) await db.query('insert into roles values ($1, $2)', [rng.pick(USERS), rng.pick(['admin', 'editor', 'viewer'])]);
    // Profiles 1-8, some without a user, some users with two; seats of random teams.
    for (let p = 1; p <= 8; p++) await db.query('insert into profiles values ($1, $2, $3)', [p, rng.next() < 0.8 ? rng.pick(USERS) : null, rng.pick(['staff', 'guest'])]);
    for (let m = 0; m < 6; m++) await db.query('insert into seats values ($1, $2)', [rng.int(6), 1 + rng.int(9)]);

    const first = round * 100 + 1;
    const ids = [];
    for (let t = 0; t < 4; t++) {
      const rows = Array.from({ length: 5 }, (_, k) => {
        const id = first + t * 5 + k;
        ids.push(id);
        const owner = rng.next() < 0.85 ? rng.pick(USERS) : null;
        const readers = rng.next() < 0.15 ? null : Array.from({ length: rng.int(4) }, () => (rng.next() < 0.1 ? null : rng.pick(USERS)));
        return { id, owner, label: rng.next() < 0.5 ? owner : rng.pick(USERS), team: rng.int(6), public: rng.next() < 0.3,
          body: rng.pick(['body', 'b-note', 'secret']), readers };
      });
      await db.query(`insert into docs select * from jsonb_to_recordset($1) as x(id int, owner uuid, label text, team int, public bool, body text, readers uuid[])`,
        [JSON.stringify(rows)]);
    }
    // Every change above is dispatched before the mark (batches go in commit order).
    await db.query('insert into marks values ($1)', [round]);
    await waitFor(`round ${round}'s mark`, () => gateway.delivered.some((d) => d.socket === 'sentinel' && d.id === round));

    const got = new Set(gateway.delivered.filter((d) => ids.includes(d.id)).map((d) => `${d.socket}:${d.id}`));
    const want = new Set();
    for (const s of subscribers) for (const id of ids) if (await sees(s, id)) want.add(`${s.socket}:${id}`);
    const missing = [...want].filter((k) => !got.has(k));
    const extra = [...got].filter((k) => !want.has(k));
    assert.deepEqual({ missing, extra }, { missing: [], extra: [] },
      `round ${round} with policies ${policies.map(([n]) => n).join(', ') || '(none)'}: ${want.size} allowed`);
  }
});
