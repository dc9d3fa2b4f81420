// HS256 JWTs for local development and tests, signed like Supabase's anon and service-role keys.
import { createHmac, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';

/** The local development secret (the one Supabase's own local stack and test suites use). */
export const DEV_JWT_SECRET = 'super-secret-jwt-token-with-at-least-32-characters-long';

/** The local shared secret of the internal API between the replicator and the gateway. */
export const DEV_INTERNAL_SECRET = 'sluice-local-internal-secret-at-least-32-chars';

/** The local secret of `/metrics` bearer tokens (`METRICS_JWT_SECRET`). */
export const DEV_METRICS_SECRET = 'sluice-local-metrics-secret-with-at-least-32-chars';

/** The local secret of admin tokens for the management API (`API_JWT_SECRET`). */
export const DEV_API_SECRET = 'sluice-local-admin-secret-with-at-least-32-characters';

/**
 * The local key replicators open tenants' database passwords with (`DB_ENC_KEY`), and its public
 * half the gateway seals them with (`DB_ENC_PUBLIC_KEY`; `sluice-replicator db-enc-public-key`).
 */
export const DEV_DB_ENC_KEY = 'sluice-local-database-password-key';
export const DEV_DB_ENC_PUBLIC_KEY = '242bcce906a143fb2379215354e12a7d4ab07dcfae737c86d0d3cbc0768d397f';

const b64url = (data) => Buffer.from(data).toString('base64url');

/**
 * The `x-sluice-signature` header of an internal request, as the gateway and the replicator sign
 * them (`sluice_shared::signature`): `t=<unix seconds>,n=<nonce>,v1=<hex HMAC-SHA256 of "t\nn\nMETHOD\npath\nbody">`.
 */
export function internalSignature(method, path, body = '', { secret = DEV_INTERNAL_SECRET, time = Math.floor(Date.now() / 1000), nonce = Math.floor(Math.random() * 2 ** 52) } = {}) {
  const mac = createHmac('sha256', secret).update(`${time}\n${nonce}\n${method}\n${path}\n`).update(body).digest('hex');
  return `t=${time},n=${nonce},v1=${mac}`;
}

/** Fetch options for a signed internal request with a JSON body. */
export function signedRequest(method, url, payload, options) {
  const body = payload === undefined ? '' : JSON.stringify(payload);
  const signature = internalSignature(method, new URL(url).pathname, body, options);
  return { method, headers: { 'x-sluice-signature': signature, 'content-type': 'application/json' }, ...(body ? { body } : {}) };
}

/** Signs `claims` with HS256 (or the given header fields) and `secret`. */
export function signJwt(claims, secret = DEV_JWT_SECRET, header = {}) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT', ...header }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** A token for `role` that expires in `ttlSecs` (negative: already expired). */
export function tokenFor(role, { ttlSecs = 3600, secret = DEV_JWT_SECRET, ...extra } = {}) {
  return signJwt({ iss: 'sluice-dev', role, iat: nowSecs(), exp: nowSecs() + ttlSecs, ...extra }, secret);
}

/** The anon and service-role keys printed by `scripts/dev` (valid for ten years). */
export function devKeys(secret = DEV_JWT_SECRET) {
  const tenYears = 10 * 365 * 24 * 3600;
  return {
    anon: tokenFor('anon', { ttlSecs: tenYears, secret }),
    serviceRole: tokenFor('service_role', { ttlSecs: tenYears, secret }),
  };
}

/**
 * A JWKS with one RSA, one EC P-256 and one Ed25519 key (kids `rsa-1`, `ec-1`, `ed-1`), and a
 * signer for each: `sign(alg, claims)` with alg RS256, ES256 or EdDSA.
 */
export function testJwks() {
  const pairs = {
    RS256: { kid: 'rsa-1', ...generateKeyPairSync('rsa', { modulusLength: 2048 }) },
    ES256: { kid: 'ec-1', ...generateKeyPairSync('ec', { namedCurve: 'P-256' }) },
    EdDSA: { kid: 'ed-1', ...generateKeyPairSync('ed25519') },
  };
  const jwks = { keys: Object.values(pairs).map(({ kid, publicKey }) => ({ ...publicKey.export({ format: 'jwk' }), kid })) };
  const sign = (alg, claims, kid = pairs[alg].kid) => {
    const head = b64url(JSON.stringify({ alg, typ: 'JWT', kid }));
    const body = b64url(JSON.stringify(claims));
    const data = Buffer.from(`${head}.${body}`);
    const key = pairs[alg].privateKey;
    const sig = alg === 'RS256' ? cryptoSign('sha256', data, key)
      : alg === 'ES256' ? cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })
      : cryptoSign(null, data, key);
    return `${head}.${body}.${sig.toString('base64url')}`;
  };
  return { jwks, sign };
}
