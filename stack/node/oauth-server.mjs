// OAuth 2.0 server for the test stack: oidc-provider (RFC 8628 device grant, RFC 7591 dynamic
// registration, revocation, refresh tokens, real HTML login/consent pages) behind a small shim that
// does for Synapse what matrix-authentication-service (MAS) does:
//   - Matrix device scopes (urn:matrix:client:device:<id> and the MSC2967 unstable form),
//   - MAS-format token introspection at POST /oauth2/introspect (Bearer shared secret),
//   - user and device provisioning through Synapse's /_synapse/mas API,
//   - lenient registration (no response_types for device-code-only clients, as MAS accepts).
// MAS itself is not installable from any registry this project can reach; see README.
//
// Environment: OAUTH_PORT (18080), SYNAPSE_URL (http://127.0.0.1:18008), MAS_SECRET,
// DEVICE_CODE_TTL (600 s), ACCESS_TOKEN_TTL (300 s).

import http from 'node:http';
import Provider from 'oidc-provider';
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

const PORT = Number(process.env.OAUTH_PORT || 18080);
const ISSUER = `http://127.0.0.1:${PORT}/`;
const SYNAPSE = (process.env.SYNAPSE_URL || 'http://127.0.0.1:18008').replace(/\/$/, '');
const SECRET = process.env.MAS_SECRET || 'test-shared-secret-between-synapse-and-mas';

const provider = new Provider(ISSUER, {
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    registration: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  scopes: new Set(['openid', 'offline_access', 'urn:matrix:client:api:*', 'urn:matrix:org.matrix.msc2967.client:api:*']),
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  discovery: {
    account_management_uri: `${ISSUER}account`,
    account_management_actions_supported: ['org.matrix.profile', 'org.matrix.devices_list'],
  },
  ttl: {
    DeviceCode: Number(process.env.DEVICE_CODE_TTL || 600),
    AccessToken: Number(process.env.ACCESS_TOKEN_TTL || 300),
    RefreshToken: 86400,
    Interaction: 600,
    Session: 3600,
    Grant: 86400,
  },
  cookies: { keys: ['test-cookie-key-not-secret'] },
});
provider.proxy = false;

const DEVICE_SCOPE = /^urn:matrix:(?:org\.matrix\.msc2967\.)?client:device:([A-Za-z0-9._~!$&'()*+,;=:@/-]{1,255})$/;
const API_SCOPES = ['urn:matrix:client:api:*', 'urn:matrix:org.matrix.msc2967.client:api:*'];

function deviceOf(scope) {
  for (const s of (scope || '').split(' ')) {
    const m = DEVICE_SCOPE.exec(s);
    if (m) return m[1];
  }
  return undefined;
}

// Provisioning, serialised per user/device so concurrent calls do not race (M_USER_IN_USE).
const provisioned = new Map();
async function synapse(path, body) {
  const res = await fetch(`${SYNAPSE}/_synapse/mas/${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${SECRET}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!res.ok && res.status !== 200 && res.status !== 201) {
    throw new Error(`synapse ${path}: ${res.status} ${await res.text()}`);
  }
}
function provision(localpart, deviceId) {
  const userKey = `user:${localpart}`;
  let user = provisioned.get(userKey);
  if (!user) {
    user = synapse('provision_user', { localpart }).catch((e) => { provisioned.delete(userKey); throw e; });
    provisioned.set(userKey, user);
  }
  if (!deviceId) return user;
  const key = `device:${localpart}/${deviceId}`;
  let device = provisioned.get(key);
  if (!device) {
    device = user.then(() => synapse('upsert_device', { localpart, device_id: deviceId }))
      .catch((e) => { provisioned.delete(key); throw e; });
    provisioned.set(key, device);
  }
  return device;
}

provider.on('access_token.saved', (token) => {
  provision(token.accountId, deviceOf(token.scope)).catch((e) => console.error('provisioning failed:', e.message));
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const callback = provider.callback();

async function introspect(req, res, body) {
  if (req.headers.authorization !== `Bearer ${SECRET}`) return json(res, 401, { error: 'invalid_client' });
  const token = new URLSearchParams(body).get('token') || '';
  const at = await provider.AccessToken.find(token);
  if (!at || !at.accountId) return json(res, 200, { active: false });
  const deviceId = deviceOf(at.scope);
  await provision(at.accountId, deviceId);
  const scope = at.scope.split(' ');
  // Synapse versions differ on which form they read; grant both spellings of each scope.
  const full = new Set(scope);
  if (scope.some((s) => API_SCOPES.includes(s))) API_SCOPES.forEach((s) => full.add(s));
  if (deviceId) {
    full.add(`urn:matrix:client:device:${deviceId}`);
    full.add(`urn:matrix:org.matrix.msc2967.client:device:${deviceId}`);
  }
  return json(res, 200, {
    active: true,
    scope: [...full].join(' '),
    username: at.accountId,
    sub: at.accountId,
    client_id: at.clientId,
    token_type: 'access_token',
    device_id: deviceId,
    expires_in: Math.max(0, at.exp - Math.floor(Date.now() / 1000)),
  });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, ISSUER);
    const ctype = req.headers['content-type'] || '';
    if (req.method === 'POST' && url.pathname === '/oauth2/introspect') {
      return await introspect(req, res, await readBody(req));
    }
    if (req.method === 'GET' && url.pathname === '/health') return json(res, 200, { ok: true });
    if (req.method === 'POST' && ctype.startsWith('application/x-www-form-urlencoded')) {
      const raw = await readBody(req);
      const params = new URLSearchParams(raw);
      const scopes = instance(provider).configuration.scopes;
      for (const s of (params.get('scope') || '').split(' ')) {
        if (DEVICE_SCOPE.test(s)) scopes.add(s);
      }
      req.body = Object.fromEntries(params);
    } else if (req.method === 'POST' && url.pathname === '/reg' && ctype.startsWith('application/json')) {
      const meta = JSON.parse(await readBody(req) || '{}');
      const grants = meta.grant_types || [];
      if (meta.response_types === undefined && !grants.includes('authorization_code')) meta.response_types = [];
      if (meta.redirect_uris === undefined && !grants.includes('authorization_code')) meta.redirect_uris = [];
      req.body = meta;
    }
    return callback(req, res);
  } catch (e) {
    console.error('shim error', e);
    return json(res, 500, { error: 'server_error' });
  }
});

server.listen(PORT, '127.0.0.1', () => console.log(`oauth server on ${ISSUER} (synapse ${SYNAPSE})`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
