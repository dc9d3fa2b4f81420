// Tokens signed with asymmetric keys from a configured JWKS (JWT_JWKS), chosen by `kid`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startStack } from '../stack/stack.mjs';
import { testJwks } from '../stack/keys.mjs';
import { done, joinWithInbox, refusedUpgrade, supabase } from './clients.mjs';

const { jwks, sign } = testJwks();
const claims = (role = 'authenticated') => ({ role, sub: 'user-1', exp: Math.floor(Date.now() / 1000) + 600 });
let stack;
before(async () => (stack = await startStack({ name: 'e2e-jwks', vars: { JWT_JWKS: JSON.stringify(jwks) } })));
after(async () => stack?.stop());

for (const alg of ['RS256', 'ES256', 'EdDSA']) {
  test(`${alg} tokens connect and join (supabase-js, both vsn)`, async (t) => {
    const v2 = supabase(stack.url, sign(alg, claims()));
    const v1 = supabase(stack.url, sign(alg, claims()), '1.0.0');
    t.after(() => done(v2, v1));
    const a = await joinWithInbox(v2, `jwks-${alg}`, { broadcast: { ack: true } });
    const b = await joinWithInbox(v1, `jwks-${alg}`);
    assert.equal(await a.channel.send({ type: 'broadcast', event: 'hi', payload: { alg } }), 'ok');
    assert.deepEqual((await b.inbox.next()).payload, { alg });
  });
}

test('a wrong kid, alg none and a forged signature are refused', async () => {
  const refusal = (apikey) => refusedUpgrade(stack.url, { apikey });
  const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify(claims('service_role'))).toString('base64url')}.`;
  const [wrongKid, algNone, forged] = await Promise.all([
    refusal(sign('RS256', claims(), 'no-such-key')),
    refusal(none),
    refusal(sign('ES256', claims()).replace(/\.[^.]+$/, `.${Buffer.alloc(64, 7).toString('base64url')}`)),
  ]);
  const signer = 'Failed to generate JWT signer, check your JWT secret or JWKS configuration';
  assert.deepEqual(wrongKid, { status: 401, body: { error: signer } });
  assert.deepEqual(algNone, { status: 401, body: { error: signer } });
  assert.deepEqual(forged, { status: 401, body: { error: 'Failed to validate JWT signature' } });
});
