// OAuth 2.0 server for the test stack: oidc-provider (RFC 8628 device grant, RFC 7591 dynamic
// registration, revocation, refresh tokens, real HTML login/consent pages) behind a small shim that
// does for Synapse what matrix-authentication-service (MAS) does:
//   - Matrix device scopes (urn:matrix:client:device:<id> and the MSC2967 unstable form),
//   - MAS-format token introspection at POST /oauth2/introspect (Bearer shared secret),
//   - user and device provisioning through Synapse's /_synapse/mas API,
//   - lenient registration (no response_types for device-code-only clients, as MAS accepts),
//   - session end as MAS does it: revoking either token of a session (RFC 7009) ends the whole
//     session and deletes its Matrix device in Synapse (/_synapse/mas/delete_device); a refresh
//     revokes the access token it replaces; a rotated (consumed) refresh token presented again is
//     refused with invalid_grant, and its revocation is a no-op, neither ending the session
//     (oidc-provider would revoke the grant),
//   - MSC4191 account management: `account_management_actions_supported` and a minimal /account
//     page (POST /account with action=org.matrix.session_end, device_id and login plays the user
//     confirming the end of that device's session).
// MAS itself is not installable from any registry this project can reach; see README.
//
// Environment: OAUTH_PORT (18080), OAUTH_ISSUER (http://127.0.0.1:<port>/), SYNAPSE_URL
// (http://127.0.0.1:18008), MAS_SECRET,
// DEVICE_CODE_TTL (600 s), ACCESS_TOKEN_TTL (300 s).

import http from 'node:http';
import Provider from 'oidc-provider';
import instance from 'oidc-provider/lib/helpers/weak_cache.js';

const PORT = Number(process.env.OAUTH_PORT || 18080);
// The issuer: our own address, or the https name a proxy in front serves us under (OAUTH_ISSUER).
const ISSUER = process.env.OAUTH_ISSUER || `http://127.0.0.1:${PORT}/`;
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
  // MAS: revoking the access token ends the session too (oidc-provider's default keeps the grant
  // when only an access token is revoked, though it still drops every token of the grant).
  revokeGrantPolicy: () => true,
  discovery: {
    account_management_uri: `${ISSUER}account`,
    // MSC4191: the stable action names and the earlier ones, which clients still send.
    account_management_actions_supported: [
      'org.matrix.profile',
      'org.matrix.devices_list',
      'org.matrix.sessions_list',
      'org.matrix.session_view',
      'org.matrix.session_end',
      'org.matrix.device_view',
      'org.matrix.device_delete',
    ],
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
// Behind a TLS proxy, trust its X-Forwarded-Proto (secure cookies, https URLs).
provider.proxy = ISSUER.startsWith('https:');

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

// Sessions: which account and Matrix device each grant (an OAuth 2.0 session) stands for, and the
// access tokens it has issued (jti = the opaque token value).
const grants = new Map(); // grantId -> { accountId, deviceId, accessTokens: Set<jti> }
function track(token) {
  if (!token.grantId || !token.accountId) return undefined;
  let g = grants.get(token.grantId);
  if (!g) {
    g = { accountId: token.accountId, deviceId: deviceOf(token.scope), accessTokens: new Set() };
    grants.set(token.grantId, g);
  }
  if (!g.deviceId) g.deviceId = deviceOf(token.scope);
  return g;
}

// Session end: delete the session's device in Synapse, as MAS does; Synapse then answers 404 for
// the device and treats the session's tokens as inactive at once (its introspection cache checks
// that the device still exists).
async function deleteDevice(localpart, deviceId, why) {
  console.log(`session end (${why}): deleting device ${deviceId} of ${localpart}`);
  provisioned.delete(`device:${localpart}/${deviceId}`);
  try {
    await synapse('delete_device', { localpart, device_id: deviceId });
  } catch (e) {
    console.error(`delete_device ${deviceId} failed:`, e.message);
  }
}
async function endSession(grantId, why) {
  const g = grants.get(grantId);
  grants.delete(grantId);
  if (g?.deviceId) await deleteDevice(g.accountId, g.deviceId, why);
}

provider.on('access_token.saved', (token) => {
  track(token)?.accessTokens.add(token.jti);
  provision(token.accountId, deviceOf(token.scope)).catch((e) => console.error('provisioning failed:', e.message));
});
provider.on('refresh_token.saved', (token) => { track(token); });
provider.on('access_token.destroyed', (token) => { grants.get(token.grantId)?.accessTokens.delete(token.jti); });
// A refresh consumes the old refresh token before the new access token is saved: like MAS, revoke
// the access tokens issued so far (quietly: this is no session end).
provider.on('refresh_token.consumed', (token) => {
  const g = grants.get(token.grantId);
  if (!g) return;
  for (const jti of g.accessTokens) {
    provider.AccessToken.adapter.destroy(jti).catch((e) => console.error('revoking a replaced access token:', e.message));
  }
  g.accessTokens.clear();
});
// Every revocation ends the grant (revokeGrantPolicy above), so this covers RFC 7009 revocation of
// access and refresh tokens as well as oidc-provider's own revocations (device code replay).
provider.on('grant.revoked', (ctx, grantId) => { endSession(grantId, `grant revoked at ${ctx.oidc?.route ?? '?'}`); });
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

const escapeHtml = (v) => String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// MSC4191 account management page. Shows the requested action and device (neither is secret) and a
// confirmation form; never echoes any other parameter.
function accountPage(res, q) {
  const action = q.get('action') || '';
  const deviceId = q.get('device_id') || '';
  const known = /^[a-z0-9_.]{1,64}$/.test(action) ? action : '';
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!DOCTYPE html>
<html><head><title>Account</title></head><body>
<h1>Account management</h1>
${known ? `<p>Action: <code>${escapeHtml(known)}</code></p>` : '<p>Your account.</p>'}
${deviceId ? `<p>Device: <code>${escapeHtml(deviceId.slice(0, 255))}</code></p>` : ''}
${known === 'org.matrix.session_end' || known === 'org.matrix.device_delete' ? `<form method="post" action="/account">
<input type="hidden" name="action" value="${escapeHtml(known)}">
<input type="hidden" name="device_id" value="${escapeHtml(deviceId.slice(0, 255))}">
<label>Login <input name="login"></label>
<button type="submit">Sign out this device</button></form>` : ''}
</body></html>
`);
}

// The user confirms the end of a device's session on the account page (test stack: the login named
// in the form is taken as the signed-in user). Ends every session of that device.
async function accountAction(res, form) {
  const action = form.get('action');
  const deviceId = form.get('device_id') || '';
  const login = form.get('login') || '';
  if (!['org.matrix.session_end', 'org.matrix.device_delete'].includes(action) || !deviceId || !login) {
    return json(res, 400, { error: 'invalid_request' });
  }
  for (const [grantId, g] of [...grants]) {
    if (g.accountId !== login || g.deviceId !== deviceId) continue;
    grants.delete(grantId);
    await Promise.all([
      provider.AccessToken.revokeByGrantId(grantId),
      provider.RefreshToken.revokeByGrantId(grantId),
      provider.DeviceCode.revokeByGrantId(grantId),
      provider.Grant.adapter.destroy(grantId),
    ]);
  }
  await deleteDevice(login, deviceId, 'account page');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!DOCTYPE html><html><body><h1>Device signed out</h1></body></html>\n');
}

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

const PUBLIC = new URL(ISSUER);
const server = http.createServer(async (req, res) => {
  // An access line per request, for the bench (`benches/src/common.rs`): Unix time in ms, the
  // method, the path without its query (which may carry a user code), the status, and the grant
  // type of a token request. No body, no header, no token.
  const received = Date.now();
  res.on('finish', () => {
    const grant = req.body?.grant_type ? ` ${req.body.grant_type}` : '';
    console.log(`access ${received} ${req.method} ${req.url.split('?')[0]} ${res.statusCode}${grant}`);
  });
  try {
    // Synapse reads our metadata at our own address, past the proxy: answer as MAS does, with
    // the public URLs (its `public_base`), not ones made from this request's address.
    if (provider.proxy && !req.headers['x-forwarded-proto']) {
      req.headers['x-forwarded-proto'] = PUBLIC.protocol.replace(':', '');
      req.headers['x-forwarded-host'] = PUBLIC.host;
    }
    const url = new URL(req.url, ISSUER);
    const ctype = req.headers['content-type'] || '';
    if (req.method === 'POST' && url.pathname === '/oauth2/introspect') {
      return await introspect(req, res, await readBody(req));
    }
    if (req.method === 'GET' && url.pathname === '/health') return json(res, 200, { ok: true });
    if (req.method === 'GET' && url.pathname === '/account') return accountPage(res, url.searchParams);
    if (req.method === 'POST' && url.pathname === '/account') {
      return await accountAction(res, new URLSearchParams(await readBody(req)));
    }
    if (req.method === 'POST' && ctype.startsWith('application/x-www-form-urlencoded')) {
      const raw = await readBody(req);
      const params = new URLSearchParams(raw);
      if (url.pathname === '/token' && params.get('grant_type') === 'refresh_token') {
        // MAS refuses a refresh token that was already rotated but keeps the session;
        // oidc-provider would revoke the whole grant.
        const rt = await provider.RefreshToken.find(params.get('refresh_token') || '', { ignoreExpiration: true });
        if (rt?.consumed) {
          return json(res, 400, { error: 'invalid_grant', error_description: 'refresh token already used' });
        }
      }
      if (url.pathname === '/token/revocation') {
        // MAS: revoking a refresh token that was already rotated does nothing (200, as for any
        // unknown token); oidc-provider would end the session.
        const rt = await provider.RefreshToken.find(params.get('token') || '', { ignoreExpiration: true });
        if (rt?.consumed) {
          res.writeHead(200);
          return res.end();
        }
      }
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

// Keep idle connections longer than Synapse's client pool does (reqwest: 90 s): with Node's
// default of 5 s, Synapse reused a connection Node was closing, its token introspection was reset,
// and it answered the client 503 "Unable to introspect the access token" (MAS keeps them open).
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

// A port that cannot be had is named, not thrown as an unhandled 'error' event.
server.on('error', (e) => {
  console.error(`oauth server: cannot listen on 127.0.0.1:${PORT}: ${e.code || e.message}`);
  process.exit(1);
});
server.listen(PORT, '127.0.0.1', () => console.log(`oauth server on ${ISSUER} (synapse ${SYNAPSE})`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
