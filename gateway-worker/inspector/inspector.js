// The sluice inspector: one channel of this server, live. The page's controls and what they
// send; the protocol's pure parts are in wire.js. It holds nothing of the server's: the key is
// pasted by the user.

import { decode, encode, filterProblem, presenceAfter } from './wire.js';

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// The page's state.

const HEARTBEAT_MS = 25_000; // realtime-js's interval
const KEPT = 5_000; // messages kept in the log
const SHOWN = 300; // messages drawn at once

let socket = null; // the WebSocket
let vsn = '2.0.0';
let ref = 0;
let heartbeat = null; // { timer, pending ref }
let channel = null; // { topic, joinRef, joined }
const bindings = []; // Postgres Changes bindings of the next join
const replies = new Map(); // ref → what to do with its reply
let presence = {}; // key → metas

const nextRef = () => String(++ref);
const setText = (id, text) => ($(id).textContent = text);

/** Shows `text` as an error on the page (and keeps the last few). */
function fail(text) {
  const line = document.createElement('p');
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('errors').prepend(line);
  while ($('errors').children.length > 5) $('errors').lastChild.remove();
}
const clearErrors = () => $('errors').replaceChildren();

/** The JSON in textarea `id`, or `undefined` after saying what is wrong with it. */
function json(id, what) {
  try {
    return JSON.parse($(id).value);
  } catch (e) {
    fail(`${what} is not valid JSON: ${e.message}`);
    return undefined;
  }
}

function controls() {
  const open = socket?.readyState === WebSocket.OPEN;
  $('connect').disabled = !!socket;
  $('disconnect').disabled = !socket;
  $('join').disabled = !open || !!channel;
  $('leave').disabled = !open || !channel;
  for (const id of ['send', 'track', 'untrack']) $(id).disabled = !open || !channel?.joined;
}

// ---------------------------------------------------------------------------------------------
// The connection.

function connect() {
  clearErrors();
  const key = $('apikey').value.trim();
  if (!key) return fail('Paste an API key first (the anon key printed by scripts/dev, for one).');
  vsn = $('vsn').value;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/realtime/v1/websocket?apikey=${encodeURIComponent(key)}&vsn=${vsn}&log_level=info`;
  let opened = false;
  socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  setText('state', 'connecting');
  socket.onopen = () => {
    opened = true;
    setText('state', `open (vsn ${vsn})`);
    beat();
    controls();
  };
  socket.onmessage = (frame) => received(frame.data);
  socket.onclose = (e) => {
    setText('state', `closed (code ${e.code}${e.reason ? `, reason: ${e.reason}` : ''})`);
    if (!opened) explainRefusal(key);
    else if (e.code !== 1000) fail(`The server closed the connection (code ${e.code}${e.reason ? `: ${e.reason}` : ''}).`);
    clearTimeout(heartbeat?.timer);
    socket = null;
    heartbeat = null;
    if (channel) channelClosed('the connection closed');
    controls();
  };
  controls();
}

/** A browser does not show why an upgrade was refused: ask the REST API with the same key. */
async function explainRefusal(key) {
  try {
    const res = await fetch('/realtime/v1/api/broadcast', {
      method: 'POST',
      headers: { apikey: key, authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [] }),
    });
    const body = await res.text();
    let reason = body;
    try { reason = JSON.parse(body).error ?? JSON.parse(body).message ?? body; } catch { /* text */ }
    if (res.status === 401 || res.status === 403 || res.status === 404) {
      return fail(`The server refused the key (${res.status}): ${reason}${keyHint(key)}`);
    }
  } catch { /* unreachable: said below */ }
  fail('The connection was refused or the server is unreachable. Check the API key and that the server runs.');
}

/** What the key's own claims say about why it may be refused (they are read, not verified). */
function keyHint(key) {
  let claims;
  try {
    claims = JSON.parse(atob(key.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return '. It is not a JWT: paste the anon or service-role key.';
  }
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) return `. It expired at ${new Date(claims.exp * 1000).toISOString()}.`;
  if (!claims.role) return '. It has no role claim.';
  return `. Its role is ${claims.role}: is it signed with this server's JWT secret (a key of this project)?`;
}

function disconnect() {
  socket?.close(1000, 'closed from the inspector');
}

/** Sends one message (logged as it goes). */
function push(message) {
  if (socket?.readyState !== WebSocket.OPEN) return fail('Not connected: press Connect first.');
  socket.send(encode(vsn, message));
  log('out', message);
}

/** A heartbeat every 25 s; one unanswered by the next closes the socket, as realtime-js does. */
function beat() {
  heartbeat = {
    timer: setTimeout(() => {
      if (heartbeat?.pending) {
        fail('No reply to the last heartbeat: closing the connection.');
        return socket?.close(1000, 'heartbeat timeout');
      }
      const r = nextRef();
      heartbeat.pending = r;
      push({ join_ref: null, ref: r, topic: 'phoenix', event: 'heartbeat', payload: {} });
      beat();
    }, HEARTBEAT_MS),
    pending: heartbeat?.pending,
  };
}

function received(data) {
  let message;
  try {
    message = decode(vsn, data);
  } catch (e) {
    return log('in', { event: '(not a frame)', payload: String(data).slice(0, 200) });
  }
  if (!message) return log('in', { event: '(unknown binary frame)', payload: '' });
  log('in', message);
  const { event, payload, topic } = message;
  if (event === 'phx_reply') {
    if (topic === 'phoenix' && message.ref === heartbeat?.pending) heartbeat.pending = undefined;
    replies.get(message.ref)?.(payload);
    replies.delete(message.ref);
    return;
  }
  // Only what is for the channel as joined now (not for an earlier join of the same topic).
  if (!channel || topic !== channel.topic || (message.join_ref && message.join_ref !== channel.joinRef)) return;
  if (event === 'phx_close') channelClosed('closed by the server');
  else if (event === 'phx_error') channelClosed('the server reported an error on the channel');
  else if (event === 'system') systemMessage(payload ?? {});
  else if (event === 'presence_state') syncPresence(payload, null);
  else if (event === 'presence_diff') syncPresence(null, payload);
  else if (event === 'postgres_changes') showChange(payload?.data);
}

// ---------------------------------------------------------------------------------------------
// The channel.

function join() {
  clearErrors();
  const name = $('topic').value.trim();
  if (!name) return fail('Type a channel name first.');
  const joinRef = nextRef();
  channel = { topic: `realtime:${name}`, name, joinRef, joined: false };
  const config = {
    broadcast: { self: $('self').checked, ack: $('ack').checked },
    presence: { key: $('presence-key').value, enabled: true },
    postgres_changes: bindings.map(({ event, schema, table, filter }) => ({ event, schema, table, ...(filter ? { filter } : {}) })),
    private: $('private').checked,
  };
  setText('channel-state', 'joining');
  setText('join-reply', '');
  setText('pg-status', bindings.length ? 'subscribing' : 'not listening');
  presence = {};
  drawPresence();
  const joining = channel;
  replies.set(joinRef, (reply) => {
    if (channel !== joining) return; // left (or joined again) before the reply came
    setText('join-reply', JSON.stringify(reply, null, 2));
    if (reply.status === 'ok') {
      channel.joined = true;
      setText('channel-state', `joined ${channel.topic}`);
    } else {
      fail(`Join refused: ${reply.response?.reason ?? JSON.stringify(reply.response)}`);
      channelClosed('the join was refused');
    }
    controls();
  });
  push({ join_ref: joinRef, ref: joinRef, topic: channel.topic, event: 'phx_join', payload: { config, access_token: accessToken() } });
  controls();
}

function leave() {
  if (!channel) return;
  push({ join_ref: channel.joinRef, ref: nextRef(), topic: channel.topic, event: 'phx_leave', payload: {} });
  channelClosed('left');
}

function channelClosed(why) {
  setText('channel-state', `not joined (${why})`);
  if (why !== 'left' && why !== 'the join was refused') fail(`Channel ${channel.topic}: ${why}.`);
  channel = null;
  controls();
}

/** What the channel pushes, with its join's ref; `then` gets the reply. */
function channelPush(event, payload, then) {
  if (!channel?.joined) return fail('Join a channel first.');
  const r = nextRef();
  if (then) replies.set(r, then);
  push({ join_ref: channel.joinRef, ref: r, topic: channel.topic, event, payload });
}

const accessToken = () => $('token').value.trim() || $('apikey').value.trim();

function setToken() {
  clearErrors();
  if (!channel?.joined) return fail('The token is sent to a joined channel: join one first (it is also sent with every join).');
  if (bindings.length) setText('pg-status', 'subscribing again with the new token');
  channelPush('access_token', { access_token: accessToken() });
}

// ---------------------------------------------------------------------------------------------
// Broadcast.

function sendBroadcast() {
  clearErrors();
  const payload = json('broadcast-payload', 'Payload');
  if (payload === undefined) return;
  const event = $('broadcast-event').value;
  const ack = $('ack').checked;
  channelPush('broadcast', { type: 'broadcast', event, payload }, ack ? (reply) => {
    if (reply.status !== 'ok') fail(`Broadcast not acknowledged: ${JSON.stringify(reply.response)}`);
  } : undefined);
}

async function sendRest() {
  clearErrors();
  const payload = json('broadcast-payload', 'Payload');
  if (payload === undefined) return;
  const key = $('apikey').value.trim();
  if (!key) return fail('Paste an API key first.');
  const message = { topic: $('topic').value.trim(), event: $('broadcast-event').value, payload, private: $('private').checked };
  log('out', { topic: message.topic, event: 'POST /api/broadcast', payload: message });
  try {
    const res = await fetch('/realtime/v1/api/broadcast', {
      method: 'POST',
      headers: { apikey: key, authorization: `Bearer ${accessToken()}`, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [message] }),
    });
    const body = await res.text();
    log('in', { topic: message.topic, event: `REST ${res.status}`, payload: body });
    if (!res.ok) fail(`REST broadcast refused (${res.status}): ${body}`);
  } catch (e) {
    fail(`REST broadcast failed: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Presence, synced as Phoenix's presence does: a state, then diffs.

function track() {
  clearErrors();
  const payload = json('presence-payload', 'The presence payload');
  if (payload === undefined) return;
  channelPush('presence', { type: 'presence', event: 'track', payload }, (reply) => {
    if (reply.status !== 'ok') fail(`Track refused: ${JSON.stringify(reply.response)}`);
  });
}

function untrack() {
  channelPush('presence', { type: 'presence', event: 'untrack' });
}

function syncPresence(state, diff) {
  presence = presenceAfter(presence, state, diff);
  drawPresence();
}

function drawPresence() {
  const items = Object.entries(presence).map(([key, metas]) => {
    const li = document.createElement('li');
    li.textContent = `${key}: ${JSON.stringify(metas.map(({ phx_ref, ...meta }) => meta))}`;
    return li;
  });
  $('presence').replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// Postgres Changes.

function listen() {
  clearErrors();
  const binding = { event: $('pg-event').value, schema: $('pg-schema').value.trim(), table: $('pg-table').value.trim(), filter: $('pg-filter').value.trim() };
  if (!binding.schema) return fail('Schema is empty: type one (public, for most tables).');
  const problem = filterProblem(binding.filter);
  if (problem) return fail(problem);
  bindings.push(binding);
  const li = document.createElement('li');
  li.textContent = `${binding.event} on ${binding.schema}.${binding.table}${binding.filter ? ` where ${binding.filter}` : ''}`;
  $('bindings').append(li);
  // Bindings are part of the join: join again with them.
  if (channel) {
    leave();
    join();
  }
}

/** The server's word on the channel's extensions (`Subscribed to PostgreSQL`, or an error). */
function systemMessage({ status, message, extension }) {
  if (extension === 'postgres_changes') setText('pg-status', `${status === 'ok' ? '' : 'error: '}${message}`);
  if (status !== 'ok') fail(`The server says: ${message}`);
}

function showChange(data) {
  if (!data) return;
  const li = document.createElement('li');
  const rows = [data.record && `record ${JSON.stringify(data.record)}`, data.old_record && `old record ${JSON.stringify(data.old_record)}`, data.errors && `errors ${JSON.stringify(data.errors)}`];
  li.textContent = `${data.type ?? data.eventType} ${data.schema}.${data.table} at ${data.commit_timestamp}: ${rows.filter(Boolean).join('; ')}`;
  $('changes').prepend(li);
  while ($('changes').children.length > 200) $('changes').lastChild.remove();
}

// ---------------------------------------------------------------------------------------------
// The message log: every frame in and out, newest first, drawn at most once per frame of the
// page and only the newest few hundred, so that thousands per second do not freeze it.

const entries = [];
let paused = false;
let drawPending = false;
let counted = 0;

function log(direction, m) {
  entries.push({ time: new Date().toISOString(), direction, topic: m.topic, event: m.event, payload: m.payload });
  if (entries.length > KEPT) entries.splice(0, entries.length - KEPT);
  counted++;
  if (!paused && !drawPending) {
    drawPending = true;
    requestAnimationFrame(drawLog);
  }
}

function shown() {
  const needle = $('log-filter').value.toLowerCase();
  const out = [];
  for (let i = entries.length - 1; i >= 0 && out.length < SHOWN; i--) {
    const e = entries[i];
    e.text ??= `${e.time.slice(11, 23)} ${e.direction === 'in' ? '←' : '→'} ${e.topic ?? ''} ${e.event} ${typeof e.payload === 'string' ? e.payload : JSON.stringify(e.payload)}`;
    if (!needle || e.text.toLowerCase().includes(needle)) out.push(e);
  }
  return out;
}

function drawLog() {
  drawPending = false;
  const rows = shown().map((e) => {
    const div = document.createElement('div');
    div.className = e.direction;
    const arrow = document.createElement('b');
    arrow.textContent = e.direction === 'in' ? 'in ' : 'out';
    div.append(arrow, ` ${e.text}`);
    return div;
  });
  $('log').replaceChildren(...rows);
  setText('kept', String(entries.length));
}

setInterval(() => {
  setText('rate', String(counted));
  counted = 0;
}, 1000);

function togglePause() {
  paused = !paused;
  $('pause').setAttribute('aria-pressed', String(paused));
  $('pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused) drawLog();
}

function clearLog() {
  entries.length = 0;
  drawLog();
}

async function copyLog() {
  const text = JSON.stringify(shown().reverse().map(({ text, ...e }) => e), null, 2);
  try {
    await navigator.clipboard.writeText(text);
    $('copy-box').hidden = true;
  } catch {
    // No clipboard (an insecure origin, or no permission): show it to copy by hand.
    $('copy-box').value = text;
    $('copy-box').hidden = false;
    $('copy-box').select();
  }
}

// ---------------------------------------------------------------------------------------------

const actions = {
  connect, disconnect, join, leave, send: sendBroadcast, 'send-rest': sendRest, track, untrack, listen,
  'set-token': setToken, pause: togglePause, clear: clearLog, copy: copyLog,
};
for (const [id, action] of Object.entries(actions)) $(id).addEventListener('click', action);
$('log-filter').addEventListener('input', drawLog);
controls();
