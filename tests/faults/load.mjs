// The steady mixed load the fault matrix runs through a stack, and its ledger: what was committed
// (rows, database broadcasts, acknowledged client broadcasts) and what each subscriber received.
//
// Streams, each numbered in commit order by one writer:
//   plain   INSERTs into a table without RLS: every subscriber receives every row
//   owned   INSERTs into a table with `owner = auth.uid()`: each row goes to its owner only
//   db      `realtime.send` broadcasts to a public channel: every subscriber
//   c<i>    subscriber i's own broadcasts (acknowledged by the server): every other subscriber
// Each subscriber is an unmodified supabase-js client (both protocol versions) signed in as a user
// of its own, on three channels (Postgres Changes; database broadcasts; a room with client
// broadcasts and presence). The ledger also keeps when each subscriber was out (its channel
// errored or closed, until the server said "Subscribed to PostgreSQL" again) and the `system`
// notices it got, which is what decides whether a missing change was lost or missed by design.
import pg from 'pg';
import { Inbox, supabase } from '../e2e/clients.mjs';
import { tokenFor } from '../stack/keys.mjs';

export const SCHEMA = `
  create schema if not exists auth;
  create or replace function auth.uid() returns uuid language sql stable as $$
    select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
  grant usage on schema auth to authenticated;
  create table public.plain (id bigint primary key);
  create table public.owned (id bigint primary key, owner uuid not null);
  alter table public.owned enable row level security;
  create policy own on public.owned for select to authenticated using (owner = auth.uid());
  grant select on public.plain, public.owned to authenticated;
  alter publication supabase_realtime add table public.plain, public.owned;`;

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const userOf = (i) => `00000000-0000-4000-8000-${String(i + 1).padStart(12, '0')}`;

/** One stream's commits: n → { at (ms), to (subscriber indexes, or null for all but `from`) }. */
class Stream {
  constructor(name, from = null) {
    Object.assign(this, { name, from, commits: new Map() });
  }
  commit(n, at, to = null) {
    this.commits.set(n, { at, to });
  }
  /** Whether subscriber `i` should receive commit `c`. */
  for(i, c) {
    return c.to ? c.to.includes(i) : i !== this.from;
  }
}

/**
 * A writer of one stream: a connection of its own that commits `write(client, n)` in a loop at
 * `perSecond`. When a commit's outcome is unknown (the connection broke), it reconnects and asks
 * `exists(client, n)` before trying that number again, so the ledger holds exactly what committed.
 */
class Writer {
  constructor(pgConfig, stream, { perSecond, write, exists, to }) {
    Object.assign(this, { pgConfig, stream, perSecond, write, exists, to, next: 1, running: false, errors: 0 });
  }
  async connect() {
    for (;;) {
      const client = new pg.Client(this.pgConfig);
      client.on('error', () => {});
      try {
        await client.connect();
        return client;
      } catch {
        client.end().catch(() => {});
        await sleep(200);
      }
    }
  }
  start() {
    this.running = true;
    this.done = (async () => {
      let client = await this.connect();
      let unsure = false;
      while (this.running) {
        const n = this.next;
        const started = now();
        try {
          if (!unsure || !(await this.exists(client, n))) await this.write(client, n);
          this.stream.commit(n, unsure ? started : now(), this.to?.(n) ?? null);
          this.next++;
          unsure = false;
        } catch {
          this.errors++;
          unsure = true;
          client.end().catch(() => {});
          await sleep(200);
          client = await this.connect();
          continue;
        }
        await sleep(Math.max(0, 1000 / this.perSecond - (now() - started)));
      }
      await client.end().catch(() => {});
    })();
  }
  async stop() {
    this.running = false;
    await this.done;
  }
}

/** A supabase-js subscriber: what it received per stream, when it was out, the notices it got. */
class Subscriber {
  constructor(i, url, vsn, { secret, transport }) {
    Object.assign(this, { i, vsn, user: userOf(i), received: new Map(), outages: [], notices: [], sendNext: 1 });
    const token = tokenFor('authenticated', { sub: userOf(i), ttlSecs: 24 * 3600, ...(secret ? { secret } : {}) });
    this.client = supabase(url, token, vsn, transport ? { transport } : {});
  }
  got(stream, n) {
    if (!this.received.has(stream)) this.received.set(stream, []);
    this.received.get(stream).push({ n, at: now() });
  }
  /** The channel went out (error, close, timeout): an outage begins unless one is open. */
  out(why) {
    if (!this.outages.length || this.outages.at(-1).end) this.outages.push({ start: now(), end: null, why });
  }
  back() {
    const last = this.outages.at(-1);
    if (last && !last.end) last.end = now();
  }
  /** Subscribes `channel`: resolves on its first SUBSCRIBED; any other status later is an outage. */
  subscribed(channel) {
    return new Promise((resolve, reject) => {
      let joined = false;
      channel.subscribe((status, err) => {
        if (status === 'SUBSCRIBED') {
          joined = true;
          resolve();
        } else if (joined) this.out(`${channel.topic}: ${status}${err ? `: ${err.message}` : ''}`);
        else reject(new Error(`channel ${channel.topic}: ${status}${err ? `: ${err.message}` : ''}`));
      });
    });
  }
  async join(count) {
    this.changes = this.client.channel('faults-changes');
    const ready = new Inbox(`subscriber ${this.i} ready`);
    this.changes
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'plain' }, (m) => this.got('plain', Number(m.new.id)))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'owned' }, (m) => this.got('owned', Number(m.new.id)))
      .on('system', {}, (m) => {
        if (m.extension !== 'postgres_changes') return;
        if (m.status === 'ok') {
          this.back();
          ready.push(m);
        } else this.notices.push({ at: now(), message: m.message });
      });
    this.db = this.client.channel('faults-db');
    this.db.on('broadcast', { event: 'db' }, (m) => this.got('db', Number(m.payload.n)));
    this.room = this.client.channel('faults-room', { config: { broadcast: { ack: true }, presence: { key: `s${this.i}` } } });
    this.room.on('broadcast', { event: 'c' }, (m) => this.got(`c${m.payload.from}`, Number(m.payload.n)));
    this.room.on('presence', { event: 'sync' }, () => {});
    await Promise.all([this.subscribed(this.changes), ready.next(20_000), this.subscribed(this.db), this.subscribed(this.room)]);
    await this.room.track({ i: this.i });
    this.expectedPresence = count;
  }
  /** Whether this subscriber's room shows every subscriber present. */
  presenceComplete() {
    return Object.keys(this.room.presenceState()).length === this.expectedPresence;
  }
}

/**
 * Starts `count` subscribers on `url` (half on each protocol version; tokens signed with `secret`,
 * sockets opened with `transport` when given) and the writers against `pgConfig`. `perSecond` is
 * each stream's rate. Returns the load: `run()` / `pause()` the writers and senders, `subscribers`,
 * `streams`, `stop()`. Rejects (leaving nothing open) when a subscriber cannot join.
 */
export async function startLoad({ url, pgConfig, count = 4, perSecond = 20, secret, transport }) {
  const subscribers = Array.from({ length: count }, (_, i) => new Subscriber(i, url, i % 2 ? '1.0.0' : '2.0.0', { secret, transport }));
  try {
    for (const s of subscribers) await s.join(count);
  } catch (e) {
    for (const s of subscribers) s.client.realtime.disconnect();
    throw e;
  }
  const streams = {
    plain: new Stream('plain'),
    owned: new Stream('owned'),
    db: new Stream('db'),
    ...Object.fromEntries(subscribers.map((s) => [`c${s.i}`, new Stream(`c${s.i}`, s.i)])),
  };
  const writers = [
    new Writer(pgConfig, streams.plain, { perSecond,
      write: (c, n) => c.query('insert into public.plain values ($1)', [n]),
      exists: async (c, n) => (await c.query('select 1 from public.plain where id = $1', [n])).rowCount > 0 }),
    new Writer(pgConfig, streams.owned, { perSecond, to: (n) => [n % count],
      write: (c, n) => c.query('insert into public.owned values ($1, $2)', [n, userOf(n % count)]),
      exists: async (c, n) => (await c.query('select 1 from public.owned where id = $1', [n])).rowCount > 0 }),
    new Writer(pgConfig, streams.db, { perSecond,
      write: (c, n) => c.query(`select realtime.send(jsonb_build_object('n', $1::int), 'db', 'faults-db', false)`, [n]),
      exists: async (c, n) => (await c.query(`select 1 from realtime.messages where topic = 'faults-db' and payload ->> 'n' = $1::text`, [n])).rowCount > 0 }),
  ];
  // Client broadcasts: each subscriber sends at a fifth of the rate; only acknowledged ones count.
  let sending = false;
  let senders = [];
  const sendLoop = async (s) => {
    while (sending) {
      const n = s.sendNext;
      const at = now();
      const status = await s.room.send({ type: 'broadcast', event: 'c', payload: { from: s.i, n } });
      if (status === 'ok') {
        streams[`c${s.i}`].commit(n, at);
        s.sendNext++;
      }
      await sleep(Math.max(0, 5000 / perSecond - (now() - at)));
    }
  };
  return {
    subscribers,
    streams,
    writers,
    run() {
      for (const w of writers) w.start();
      sending = true;
      senders = subscribers.map(sendLoop);
    },
    async pause() {
      sending = false;
      await Promise.all([...writers.map((w) => w.stop()), ...senders]);
    },
    async stop() {
      await this.pause();
      for (const s of subscribers) {
        await s.client.removeAllChannels();
        s.client.realtime.disconnect();
      }
    },
  };
}

/**
 * What a window of the load shows: for commits made from `from` to `to` (ms), per subscriber and
 * in total, how many it should have received, got, missed, got twice and got out of order. A
 * change missed while the subscriber was out, or before a `system` notice that changes were lost,
 * is missed by design and counted apart. Out means from the fault that closed its socket (one of
 * `faults`, start times, up to 10 s before), else from 2 s before its channel went out, until it
 * was subscribed again. Order is per stream: a number received after a higher one is a violation.
 */
export function account(load, { from, to, faults = [] }) {
  const outFrom = (o) => Math.min(o.start - 2000, ...faults.filter((f) => f <= o.start && f >= o.start - 10_000));
  const rows = load.subscribers.map((s) => {
    const row = { subscriber: s.i, vsn: s.vsn, expected: 0, delivered: 0, lost: 0, byDesign: 0, duplicates: 0, outOfOrder: 0, lostExamples: [] };
    const excused = (at) => s.outages.some((o) => at >= outFrom(o) && at <= (o.end ?? Infinity))
      || s.notices.some((notice) => at >= from && at <= notice.at);
    for (const stream of Object.values(load.streams)) {
      const got = s.received.get(stream.name) ?? [];
      const counts = new Map();
      let highest = -Infinity;
      for (const { n } of got) {
        const c = stream.commits.get(n);
        if (!c || c.at < from || c.at > to) continue;
        counts.set(n, (counts.get(n) ?? 0) + 1);
        if (n < highest) row.outOfOrder++;
        highest = Math.max(highest, n);
      }
      for (const [n, c] of stream.commits) {
        if (c.at < from || c.at > to || !stream.for(s.i, c)) continue;
        const times = counts.get(n) ?? 0;
        if (times) {
          row.expected++;
          row.delivered++;
          row.duplicates += times - 1;
        } else if (excused(c.at)) row.byDesign++;
        else {
          row.expected++;
          row.lost++;
          if (row.lostExamples.length < 5) row.lostExamples.push(`${stream.name}#${n}@${Math.round(c.at - from)}ms`);
        }
      }
    }
    return row;
  });
  const total = (key) => rows.reduce((sum, r) => sum + r[key], 0);
  return { rows, expected: total('expected'), delivered: total('delivered'), lost: total('lost'), byDesign: total('byDesign'), duplicates: total('duplicates'), outOfOrder: total('outOfOrder') };
}

/** Whether every subscriber got everything committed until `to` it should get (or was excused). */
export function caughtUp(load, window) {
  return account(load, window).lost === 0;
}

/**
 * Time from `since` until the first `plain` change committed after it that reached every
 * subscriber had reached them all, in ms (null if none did).
 */
export function recoveryMs(load, since) {
  for (const [n, c] of load.streams.plain.commits) {
    if (c.at < since) continue;
    const times = load.subscribers.map((s) => (s.received.get('plain') ?? []).find((r) => r.n === n)?.at);
    if (times.every((t) => t !== undefined)) return Math.max(...times) - since;
  }
  return null;
}
