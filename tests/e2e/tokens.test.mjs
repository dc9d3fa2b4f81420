// Tokens inside channels: a channel runs on its access_token, closes when it expires (the hub's
// alarm), and stays open when supabase-js refreshes it in time.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { tokenFor } from '../stack/keys.mjs';
import { done, Inbox, subscribe, supabase, VSNS, watchedChannel } from './clients.mjs';

let stack;
before(async () => (stack = await startStack({ name: 'e2e-tokens' })));
after(async () => stack?.stop());

/** A client whose channels run on `token`, and one watched channel on `topic`. */
async function channelWithToken(vsn, topic, token) {
  const client = supabase(stack.url, stack.keys.anon, vsn);
  await client.realtime.setAuth(token);
  return { client, ...(await watchedChannel(client, topic, { broadcast: { self: true, ack: true } })) };
}

for (const vsn of VSNS) describe(`channel tokens over vsn ${vsn}`, () => {
  test('expiry closes the channel with the system message; a refreshed one stays open', async (t) => {
    // One token, so both channels' original exp is the same second.
    const short = tokenFor('authenticated', { ttlSecs: 3 });
    const expiring = await channelWithToken(vsn, 'expiring', short);
    const refreshed = await channelWithToken(vsn, 'refreshed', short);
    t.after(() => done(expiring.client, refreshed.client));
    await refreshed.client.realtime.setAuth(tokenFor('authenticated', { ttlSecs: 3600 }));

    // The unrefreshed channel is closed by the server once its token is past exp.
    const system = await expiring.system.next(15_000);
    assert.equal(system.extension, 'system');
    assert.equal(system.status, 'error');
    assert.equal(system.channel, 'expiring');
    assert.match(system.message, /^Token has expired \d+ seconds ago$/);
    assert.equal(await expiring.statuses.next(), 'SUBSCRIBED');
    assert.equal(await expiring.statuses.next(), 'CLOSED');

    // By now the other channel's original token has expired too; it was refreshed, so it works.
    const echo = new Inbox('echo');
    refreshed.channel.on('broadcast', { event: 'still-here' }, echo.push);
    assert.equal(await refreshed.channel.send({ type: 'broadcast', event: 'still-here', payload: {} }), 'ok');
    await echo.next();
    assert.equal(refreshed.system.items.length, 0, 'no system error on the refreshed channel');
  });

  test('a join with an expired access_token is refused with upstream text', async (t) => {
    const client = supabase(stack.url, stack.keys.anon, vsn);
    t.after(() => done(client));
    await client.realtime.setAuth(tokenFor('authenticated', { ttlSecs: -30 }));
    const channel = client.channel('late');
    await assert.rejects(subscribe(channel), /CHANNEL_ERROR: InvalidJWTToken: Token has expired \d+ seconds ago/);
  });
});
