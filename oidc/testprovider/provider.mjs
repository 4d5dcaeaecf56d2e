// A real, certified OpenID provider (the npm package oidc-provider) for jitgate's tests.
//
// Started by the Rust harness (src/lib.rs) with JITGATE_OP_SETUP naming a JSON file:
//   { port, cert, key, adminToken, cookieKey, users: [{sub, login, password, name, email,
//     groups}], clients: [oidc-provider client metadata] }
// It listens on 127.0.0.1 over TLS (the harness's test CA), prints one JSON line
// {"issuer": ..., "port": ...} on stdout when ready, and exits when its stdin closes (the
// test process died) so that it never outlives the test.
//
// The person is played by the test over HTTP: the login and consent pages below are plain
// forms, and so are the device flow pages. An admin API (bearer adminToken) lets the test
// change a user's groups, disable a user, and rotate the signing keys.

import { createServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { generateKeyPairSync, randomUUID, timingSafeEqual, createHash } from 'node:crypto';
import Provider from 'oidc-provider';
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const setup = JSON.parse(readFileSync(process.env.JITGATE_OP_SETUP, 'utf8'));
const users = new Map(setup.users.map((u) => [u.sub, { ...u, disabled: false }]));

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>
${body}
</body></html>`;

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

// The first key signs; the others are still published (rotation keeps the old one).
let keys = [newKey()];
// One store for every Provider instance of this process, so that key rotation (a new
// instance) keeps sessions, grants and refresh tokens.
const adapter = createMemoryAdapter(15);

function configuration() {
  return {
    adapter,
    clients: setup.clients,
    jwks: { keys },
    cookies: { keys: [setup.cookieKey] },
    async findAccount(ctx, sub) {
      const u = users.get(sub);
      if (!u || u.disabled) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            name: u.name,
            preferred_username: u.login,
            email: u.email,
            email_verified: true,
            groups: u.groups,
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // Claims in the ID token itself, as Entra ID, Okta and Keycloak do.
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      deviceFlow: {
        enabled: true,
        async userCodeInputSource(ctx, form, out, err) {
          const msg = err ? `<p id="error">${esc(err.message || err.name)}</p>` : '<p>Enter the code shown on your device</p>';
          ctx.body = page('Device sign-in', `${msg}${form}<button type="submit" form="op.deviceInputForm">Continue</button>`);
        },
        async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
          ctx.body = page('Confirm device', `<p>Code <code>${esc(userCode)}</code> for ${esc(client.clientId)}</p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button>`);
        },
        async successSource(ctx) {
          ctx.body = page('Device sign-in complete', '<p id="device-success">You can close this page.</p>');
        },
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<p id="error">${esc(out.error)}: ${esc(out.error_description || '')}</p>`);
    },
  };
}

let provider;
let handler;
let issuer;

function build() {
  provider = new Provider(issuer, configuration());
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  handler = provider.callback();
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

async function readJson(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return JSON.parse(body || '{}');
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function sendJson(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(obj));
}

function adminAuthorised(req) {
  const given = createHash('sha256').update(req.headers.authorization || '').digest();
  const want = createHash('sha256').update(`Bearer ${setup.adminToken}`).digest();
  return timingSafeEqual(given, want);
}

async function admin(req, res, path) {
  if (req.method !== 'POST' || !adminAuthorised(req)) return sendJson(res, 403, { error: 'forbidden' });
  const body = await readJson(req);
  if (path === '/admin/groups') {
    const u = users.get(body.sub);
    if (!u) return sendJson(res, 404, { error: 'no such user' });
    u.groups = body.groups;
    return sendJson(res, 200, { sub: u.sub, groups: u.groups });
  }
  if (path === '/admin/disable') {
    const u = users.get(body.sub);
    if (!u) return sendJson(res, 404, { error: 'no such user' });
    u.disabled = true;
    return sendJson(res, 200, { sub: u.sub, disabled: true });
  }
  if (path === '/admin/rotate') {
    // A new signing key first; the old one stays published. The store is shared, so
    // sessions, grants and refresh tokens survive.
    keys = [newKey(), ...keys].slice(0, 2);
    build();
    return sendJson(res, 200, { kid: keys[0].kid, kids: keys.map((k) => k.kid) });
  }
  return sendJson(res, 404, { error: 'no such admin call' });
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return sendHtml(res, 400, page('Error', '<p id="error">interaction mismatch</p>'));
  const { prompt, params, session } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      return sendHtml(res, 200, page('Sign in', `<form id="login" method="post" action="/interaction/${esc(uid)}/login">
<input type="hidden" name="prompt" value="login"/>
<input type="text" name="login"/>
<input type="password" name="password"/>
<button type="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`));
    }
    if (prompt.name === 'consent') {
      return sendHtml(res, 200, page('Authorize', `<p>${esc(params.client_id)} asks for ${esc(params.scope)}</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
<input type="hidden" name="prompt" value="consent"/>
<button type="submit">Allow</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`));
    }
    return sendHtml(res, 501, page('Error', `<p id="error">prompt ${esc(prompt.name)} not implemented</p>`));
  }
  if (req.method !== 'POST') return sendHtml(res, 405, page('Error', '<p id="error">method</p>'));
  const form = await readForm(req);
  if (action === 'login') {
    const u = [...users.values()].find((x) => x.login === form.get('login'));
    const ok = u && !u.disabled && u.password === form.get('password');
    if (!ok) {
      return sendHtml(res, 200, page('Sign in', `<p id="error">wrong user name or password</p>
<form id="login" method="post" action="/interaction/${esc(uid)}/login">
<input type="hidden" name="prompt" value="login"/>
<input type="text" name="login"/>
<input type="password" name="password"/>
<button type="submit">Sign in</button>
</form>`));
    }
    return provider.interactionFinished(req, res, { login: { accountId: u.sub } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the person cancelled' }, { mergeWithLastSubmission: false });
  }
  return sendHtml(res, 404, page('Error', '<p id="error">no such action</p>'));
}

const server = createServer({ cert: readFileSync(setup.cert), key: readFileSync(setup.key) }, async (req, res) => {
  try {
    const path = new URL(req.url, 'https://127.0.0.1').pathname;
    if (path.startsWith('/admin/')) return await admin(req, res, path);
    const m = path.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/);
    if (m) return await interaction(req, res, m[1], m[2]);
    return handler(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) sendHtml(res, 500, page('Error', `<p id="error">${esc(err.message)}</p>`));
    else res.end();
  }
});

server.listen(setup.port || 0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `https://127.0.0.1:${port}`;
  build();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
server.on('error', (err) => {
  console.error(`listen: ${err.message}`);
  process.exit(2);
});
