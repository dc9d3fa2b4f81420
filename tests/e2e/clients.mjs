// Clients for the end-to-end suites: the real @supabase/supabase-js, and a raw WebSocket for
// what supabase-js cannot send (malformed frames, bad tokens).
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import assert from 'node:assert/strict';

export const VSNS = ['1.0.0', '2.0.0'];

/**
 * An unmodified supabase-js client speaking protocol `vsn`, with further `realtime` options if
 * given (a `transport`, say). With `accessToken`, the client sends that user token, as an app
 * with its own auth does (supabase-js's `accessToken` option; `await client.realtime.setAuth()`
 * before the first join, or it joins without the token). Close it with `done(client)`.
 */
export function supabase(url, key, vsn = '2.0.0', realtime = {}, { accessToken } = {}) {
  return createClient(url, key, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { vsn, heartbeatIntervalMs: 5000, ...realtime },
    // Not `realtime.setAuth(token)`: supabase-js always gives realtime-js its own token callback,
    // so realtime-js takes that token for a fetched one and, on the join's reply and on every
    // heartbeat, asks the callback again, which answers the anon key when nobody signed in.
    ...(accessToken ? { accessToken: async () => accessToken } : {}),
  });
}

export async function done(...clients) {
  for (const c of clients) {
    await c.removeAllChannels();
    c.realtime.disconnect();
  }
}

/** Subscribes `channel`; resolves on SUBSCRIBED, rejects on any other status with its error. */
export function subscribe(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve(channel);
      else reject(new Error(`channel ${channel.topic}: ${status}${err ? `: ${err.message}` : ''}`));
    });
  });
}

/** A queue of events: `push` from callbacks, `next()` awaits the next one (rejects after `timeoutMs`). */
export class Inbox {
  constructor(name = 'inbox') {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push = (item) => {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  };
  next(timeoutMs = 10_000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(wrapped), 1);
        reject(new Error(`${this.name}: nothing arrived within ${timeoutMs} ms`));
      }, timeoutMs);
      const wrapped = (item) => {
        clearTimeout(timer);
        resolve(item);
      };
      this.waiters.push(wrapped);
    });
  }
}

/** A channel with an inbox for broadcasts of every event, subscribed. */
export async function joinWithInbox(client, topic, config = {}) {
  const inbox = new Inbox(`${topic} on ${client.realtime.vsn}`);
  const channel = client.channel(topic, { config });
  channel.on('broadcast', { event: '*' }, inbox.push);
  await subscribe(channel);
  return { channel, inbox };
}

/**
 * A raw WebSocket. Resolves with `{ ws, inbox }` once open (inbox gets every frame: parsed JSON
 * for text, Buffer for binary), or rejects with `{ status, body }` when the upgrade is refused.
 */
export function rawSocket(url, { apikey, vsn, headers } = {}) {
  const wsUrl = new URL('/realtime/v1/websocket', url.replace(/^http/, 'ws'));
  if (apikey !== undefined) wsUrl.searchParams.set('apikey', apikey);
  if (vsn) wsUrl.searchParams.set('vsn', vsn);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { headers });
    const inbox = new Inbox('raw socket');
    ws.on('message', (data, isBinary) => inbox.push(isBinary ? data : JSON.parse(data.toString())));
    ws.on('open', () => resolve({ ws, inbox }));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => reject({ status: res.statusCode, body: JSON.parse(body) }));
    });
    ws.on('error', reject);
  });
}

/** How many distinct hubs accepted sockets so far, from the worker's log. */
export function hubsUsed(stack) {
  return new Set(stack.gateway.logLines().map((l) => l.match(/^(hub:\S+): accepted socket/)?.[1]).filter(Boolean)).size;
}

/** Takes items from `inbox` until one satisfies `predicate`, and returns it. */
export async function until(inbox, predicate, timeoutMs = 10_000) {
  for (;;) {
    const item = await inbox.next(timeoutMs);
    if (predicate(item)) return item;
  }
}

/** Opens a raw socket that must be refused; resolves with the refusal's `{ status, body }`. */
export async function refusedUpgrade(url, opts) {
  let socket;
  try {
    socket = await rawSocket(url, opts);
  } catch (e) {
    if (e.status) return e;
    throw e;
  }
  socket.ws.close();
  throw new Error('the upgrade was accepted');
}

/** Subscribes `topic` with inboxes for its `system` messages and its subscribe statuses. */
export async function watchedChannel(client, topic, config = {}) {
  const channel = client.channel(topic, { config });
  const system = new Inbox(`${topic} system`);
  const statuses = new Inbox(`${topic} status`);
  channel.on('system', {}, system.push);
  await new Promise((resolve, reject) => channel.subscribe((status, err) => {
    statuses.push(status);
    if (status === 'SUBSCRIBED') resolve();
    else if (status !== 'CLOSED') reject(err ?? new Error(status));
  }));
  return { channel, system, statuses };
}

/**
 * A channel with `postgres_changes` bindings, each `{ binding, inbox }`, subscribed: resolves once
 * the server said "Subscribed to PostgreSQL" (or rejects with its `system` error), with the
 * channel and its `system` inbox.
 */
export async function pgChannel(client, topic, bindings, config = {}) {
  const channel = client.channel(topic, { config });
  const system = new Inbox(`${topic} system`);
  for (const { binding, inbox } of bindings) channel.on('postgres_changes', binding, inbox.push);
  channel.on('system', {}, system.push);
  await subscribe(channel);
  const first = await until(system, (m) => m.extension === 'postgres_changes');
  if (first.status !== 'ok') throw Object.assign(new Error(first.message), { system: first });
  assert.equal(first.message, 'Subscribed to PostgreSQL');
  return { channel, system };
}
