// The inspector page (`GET /inspector`) in headless Chromium against the local stack, driven as a
// person would: by the controls' accessible names. What the page does is checked from the other
// side with supabase-js and Postgres. Ends with a screenshot (.local/browser/inspector.png).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { tokenFor } from '../stack/keys.mjs';
import { ROOT, startStack } from '../stack/stack.mjs';
import { done, Inbox, subscribe, supabase } from '../e2e/clients.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ALICE = 'a1a1a1a1-0000-4000-8000-000000000001';
const SCREENSHOT = join(ROOT, '.local', 'browser', 'inspector.png');

let stack;
let browser;
let page;
let js; // a supabase-js client in the same channel
let room;

before(async () => {
  // Events per second raised above upstream's 100 for the flood below (a thousand a second and more).
  const limits = JSON.stringify({ '*': { max_events_per_second: 100_000 } });
  stack = await startStack({ name: 'browser-inspector', vars: { INSPECTOR: 'on', TENANT_LIMITS: limits } });
  await stack.pg.createRoles('anon', 'authenticated', 'service_role');
  await stack.pg.sql(`
    create schema auth;
    create function auth.uid() returns uuid language sql stable as $$
      select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;
    grant usage on schema auth to anon, authenticated;
    create table public.items (id int primary key, name text not null);
    create table public.diary (id int primary key, owner uuid not null, body text);
    alter table public.diary enable row level security;
    create policy own on public.diary for select to authenticated using (owner = auth.uid());
    grant select on public.items, public.diary to anon, authenticated;
    alter publication supabase_realtime add table public.items, public.diary`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  // Anything the page logs as an error fails the run at the end, with its text.
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(`${stack.url}/inspector`);
});

after(async () => {
  if (page) {
    mkdirSync(join(ROOT, '.local', 'browser'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true }).then(() => console.log(`# the page after these steps: ${SCREENSHOT}`), () => {});
  }
  await browser?.close();
  if (js) await done(js);
  await stack?.stop();
});

const button = (name) => page.getByRole('button', { name, exact: true });
const group = (name) => page.getByRole('group', { name });
/** Resolves once the status `name` shows `text`. */
const shows = (name, text) => page.getByRole('status', { name }).filter({ hasText: text }).waitFor();
const messageLog = () => page.getByRole('log', { name: 'Message log' });

test('the front page says what the server is and links the inspector', async () => {
  const front = await (await fetch(`${stack.url}/`)).text();
  assert.match(front, /Supabase Realtime-compatible/);
  assert.match(front, /href="\/inspector"/);
  const res = await fetch(`${stack.url}/inspector/inspector.js`);
  assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.match(res.headers.get('content-security-policy'), /script-src 'self'/);
});

test('a refused key is shown in words', async () => {
  await page.getByLabel('API key').fill(tokenFor('anon', { secret: 'not-the-secret-of-this-server-at-all-32' }));
  await button('Connect').click();
  await page.getByRole('alert').filter({ hasText: 'The server refused the key' }).waitFor();
  await shows('Connection state', 'closed');
});

test('connects with the anon key and joins a channel', async () => {
  await page.getByLabel('API key').fill(stack.keys.anon);
  await page.getByLabel('vsn').selectOption('2.0.0');
  await button('Connect').click();
  await shows('Connection state', 'open (vsn 2.0.0)');
  await page.getByLabel('Channel', { exact: true }).fill('room1');
  await page.getByLabel('Presence key').fill('inspector');
  await button('Join').click();
  await shows('Channel state', 'joined realtime:room1');
  assert.match(await page.getByLabel('Join reply').textContent(), /"status": "ok"/);
});

test('a broadcast sent from the page arrives in supabase-js, and one from supabase-js appears in the log', async () => {
  js = supabase(stack.url, stack.keys.anon);
  js.inbox = new Inbox('room1 in supabase-js');
  js.synced = new Inbox('presence syncs in supabase-js');
  room = js.channel('room1');
  room.on('broadcast', { event: '*' }, js.inbox.push);
  room.on('presence', { event: 'sync' }, () => js.synced.push(room.presenceState()));
  await subscribe(room);
  const broadcast = group('Broadcast');
  await broadcast.getByLabel('Event').fill('from-page');
  await broadcast.getByLabel('Payload').fill('{"n": 1}');
  await button('Send broadcast').click();
  const got = await js.inbox.next();
  assert.deepEqual([got.event, got.payload], ['from-page', { n: 1 }]);

  // Bad JSON is refused on the page, in words, and nothing is sent.
  await broadcast.getByLabel('Payload').fill('{"n": ');
  await button('Send broadcast').click();
  await page.getByRole('alert').filter({ hasText: 'Payload is not valid JSON' }).waitFor();

  await room.send({ type: 'broadcast', event: 'from-js', payload: { x: 'js-was-here' } });
  await messageLog().getByText('js-was-here').waitFor();

  // Over REST too: it reaches supabase-js.
  await broadcast.getByLabel('Payload').fill('{"n": 2}');
  await button('Send with REST').click();
  const rest = await js.inbox.next();
  assert.deepEqual([rest.event, rest.payload], ['from-page', { n: 2 }]);
});

test('presence tracked from the page is in supabase-js\'s presence state, and the page lists it', async () => {
  await group('Presence').getByLabel('Track').fill('{"user": "inspector-user"}');
  await button('Track').click();
  let state;
  do state = await js.synced.next(); while (!state.inspector);
  assert.equal(state.inspector[0].user, 'inspector-user');
  await page.getByRole('list', { name: 'Presence state' }).getByText('inspector-user').waitFor();
});

test('a bad filter is refused before joining; a filtered INSERT listener sees only matching rows', async () => {
  const changes = group('Postgres Changes');
  await changes.getByLabel('Table').fill('items');
  await changes.getByLabel('Event').selectOption('INSERT');
  await changes.getByLabel('Filter').fill('name=equals.match');
  await button('Listen').click();
  await page.getByRole('alert').filter({ hasText: 'not column=operator.value' }).waitFor();
  await changes.getByLabel('Filter').fill('name=eq.match');
  await button('Listen').click();
  await shows('Postgres Changes status', 'Subscribed to PostgreSQL');
  await stack.pg.sql(`insert into public.items values (1, 'match'), (2, 'other'), (3, 'match')`);
  const received = page.getByRole('list', { name: 'Changes received' });
  await received.getByText('"id":3').waitFor();
  const text = await received.textContent();
  assert.match(text, /INSERT public\.items/);
  assert.match(text, /"id":1/);
  assert.doesNotMatch(text, /"id":2/, 'the row that does not match the filter is not shown');
});

test('a user\'s token, set on the page, shows a row only that user may read', async () => {
  const changes = group('Postgres Changes');
  await changes.getByLabel('Table').fill('diary');
  await changes.getByLabel('Filter').fill('');
  await button('Listen').click();
  await shows('Postgres Changes status', 'Subscribed to PostgreSQL');
  await stack.pg.sql(`insert into public.diary values (1, '${ALICE}', 'as anon: hidden')`);
  await page.getByLabel('Access token').fill(tokenFor('authenticated', { sub: ALICE }));
  await button('Set token').click();
  await shows('Postgres Changes status', 'Subscribed to PostgreSQL');
  await stack.pg.sql(`insert into public.diary values (2, '${ALICE}', 'as alice: shown')`);
  const received = page.getByRole('list', { name: 'Changes received' });
  await received.getByText('as alice: shown').waitFor();
  assert.doesNotMatch(await received.textContent(), /as anon: hidden/);
});

test('a refused private join shows its reason', async () => {
  await button('Leave').click();
  await page.getByLabel('Channel', { exact: true }).fill('secret-room');
  await page.getByLabel('Private').check();
  await page.getByLabel('Access token').fill('');
  await button('Join').click();
  await page.getByRole('alert').filter({ hasText: 'Join refused: Unauthorized' }).waitFor();
  assert.match(await page.getByLabel('Join reply').textContent(), /"status": "error"/);
  await shows('Channel state', 'not joined');
  await shows('Connection state', 'open');
});

test('the log counts, filters, pauses and copies', async () => {
  const kept = Number(await page.getByLabel('Messages kept').textContent());
  assert.ok(kept > 5, `${kept} messages kept`);
  await page.getByLabel('Filter messages').fill('js-was-here');
  assert.equal(await messageLog().locator('div').count(), 1);
  await page.getByLabel('Filter messages').fill('');
  await button('Pause').click();
  assert.equal(await button('Resume').getAttribute('aria-pressed'), 'true');
  await button('Resume').click();
  await button('Copy as JSON').click();
  // Without clipboard permission the JSON is shown to copy by hand; with it, it is on the clipboard.
  const box = page.getByLabel('Messages as JSON');
  if (await box.isVisible()) assert.ok(JSON.parse(await box.inputValue()).some((m) => m.event === 'phx_join'));
  assert.deepEqual(page.errors, [], 'no script error on the page');
});

test('protocol 1.0.0: connects, joins and shows a broadcast from supabase-js', async () => {
  await button('Disconnect').click();
  await shows('Connection state', 'closed (code 1000');
  await page.getByLabel('vsn').selectOption('1.0.0');
  await button('Connect').click();
  await shows('Connection state', 'open (vsn 1.0.0)');
  await page.getByLabel('Private').uncheck();
  await page.getByLabel('Channel', { exact: true }).fill('room1');
  await button('Join').click();
  await shows('Channel state', 'joined realtime:room1');
  await room.send({ type: 'broadcast', event: 'from-js', payload: { x: 'over-v1' } });
  await messageLog().getByText('over-v1').waitFor();
});

test('a flood of broadcasts is drawn in batches: the log keeps them all and draws only the newest few hundred', async () => {
  const flood = 2000;
  for (let n = 0; n < flood; n++) room.send({ type: 'broadcast', event: 'flood', payload: { n } });
  await messageLog().getByText(`{"n":${flood - 1}}`).waitFor({ timeout: 30_000 });
  assert.ok((await messageLog().locator('div').count()) <= 300, 'at most 300 rows drawn');
  assert.ok(Number(await page.getByLabel('Messages kept').textContent()) >= flood);
  // The page still answers at once (a script run between two of its frames).
  assert.equal(await page.evaluate(() => document.getElementById('state').textContent.startsWith('open')), true);
});
