// A real OpenID provider (panva's `oidc-provider`, 9.x) for Portcullis integration tests.
// Started by tests/common/oidc_provider.rs; install its dependencies first with
//   npm ci --prefix tests/oidc-provider
//
// CONFIGURATION: one JSON object in the environment variable OIDC_CONFIG:
//   {
//     "clients": [{                       // confidential clients, at least one
//       "client_id": "portcullis",
//       "client_secret": "secret",
//       "redirect_uris": ["http://127.0.0.1:1234/callback"],
//       "post_logout_redirect_uris": [...],           // optional, default []
//       "backchannel_logout_uri": "http://127.0.0.1:1234/bcl", // optional
//       "token_endpoint_auth_method": "client_secret_post"    // optional, default
//                                                              // client_secret_basic
//     }],
//     "idTokenTtl": 3600,                 // optional, seconds
//     "accessTokenTtl": 3600              // optional, seconds
//   }
// Every client may use the authorization_code and refresh_token grants, response type
// `code` only, PKCE (S256) is required, and ID tokens are RS256 with a key made at start.
//
// PROTOCOL: listens on 127.0.0.1 on an OS-chosen port; the issuer is
// http://127.0.0.1:<port>. Once it accepts connections it prints exactly one line to
// stdout: {"ready":true,"issuer":"http://127.0.0.1:<port>"}. Everything else goes to
// stderr. It exits when stdin closes (the test process is gone) and on SIGTERM/SIGINT.
//
// USERS (in memory):
//   alice / wonderland: alice@example.com (email_verified true), "Alice Example",
//                       groups ["staff","admins"]
//   bob / builder:      bob@partner.example (email_verified false), "Bob Builder",
//                       groups ["customers"]
// Scopes: openid, email (email, email_verified), profile (name), groups (groups),
// offline_access. Requested scope claims are in the ID token too, and every ID token has
// acr, amr and auth_time. offline_access (in a GET authorization request without
// prompt=none) yields a refresh token on the code grant; prompt=consent is not needed.
//
// LOGIN: GET /interaction/<uid> shows a plain HTML form (marked data-portcullis-login)
// with the fields `login`, `password` and `otp`, posting to /interaction/<uid>/login.
// A wrong password shows the form again (200, with data-portcullis-error). The password
// alone gives acr urn:portcullis:loa:1, amr ["pwd"]; otp 123456 as well gives
// urn:portcullis:loa:2, amr ["pwd","otp"]. A request asking for loa:2 (acr_values, or
// the claims parameter, essential or not) while the session is only loa:1 shows the
// login form again; if that login is again only loa:1, the ID token says so (when the
// claims parameter marked the acr essential, oidc-provider shows the form yet again).
// Consent is always granted without asking. Endpoints are oidc-provider's defaults
// (/auth, /token, /me, /jwks, /session/end, ...): read them from discovery.
//
// LOGOUT: GET /session/end (RP-initiated logout) shows a page with the provider's form
// <form id="op.logoutForm" method="post" action=".../session/end/confirm"> holding the
// hidden field `xsrf`; to sign out post `xsrf` plus `logout=yes` to that action (without
// `logout` only the requesting client's session ends). The confirm answers 303 to the
// post_logout_redirect_uri (with state) or to /session/end/success. Back-channel logout
// tokens (with sid: backchannel_logout_session_required is set) are posted to clients'
// backchannel_logout_uri, loopback addresses included, before that 303 is sent.
// GET /session/end without id_token_hint works too (the logout page asks the same way);
// confirming it with logout=yes ends the provider session and notifies every client of it.
//
// TEST CONTROL: POST /_test/revoke-grants with the form field `sub` destroys every grant
// of that account (as an administrator revoking a user's access would): its refresh
// tokens are refused from then on (invalid_grant). Answers {"revoked": <count>}.
//
// TOKENS IN THE LOG: every access token issued is logged on stderr as
//   access_token.saved gty=<grant type> sha256=<first 16 hex digits of SHA-256(token)>
// never the token itself. The grant type is oidc-provider's chain of grants:
// "authorization_code" at login, "authorization_code refresh_token" after a refresh.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

// oidc-provider prints notices with console.info; stdout is reserved for the ready line.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

// Imported only now, so that notices printed while loading also go to stderr.
const { default: Provider, interactionPolicy } = await import('oidc-provider');

const LOA1 = 'urn:portcullis:loa:1';
const LOA2 = 'urn:portcullis:loa:2';
const GOOD_OTP = '123456';

const USERS = {
  alice: {
    password: 'wonderland',
    claims: {
      email: 'alice@example.com',
      email_verified: true,
      name: 'Alice Example',
      groups: ['staff', 'admins'],
    },
  },
  bob: {
    password: 'builder',
    claims: {
      email: 'bob@partner.example',
      email_verified: false,
      name: 'Bob Builder',
      groups: ['customers'],
    },
  },
};

function log(...args) {
  console.error('[oidc-provider]', ...args);
}

function fail(message) {
  log(`fatal: ${message}`);
  process.exit(2);
}

function readConfig() {
  let config;
  try {
    config = JSON.parse(process.env.OIDC_CONFIG ?? '');
  } catch (err) {
    fail(`OIDC_CONFIG must hold a JSON object: ${err.message}`);
  }
  if (!config || !Array.isArray(config.clients) || config.clients.length === 0) {
    fail('OIDC_CONFIG.clients must be a non-empty array');
  }
  return config;
}

function clientMetadata(spec) {
  const client = {
    client_id: spec.client_id,
    client_secret: spec.client_secret,
    redirect_uris: spec.redirect_uris,
    post_logout_redirect_uris: spec.post_logout_redirect_uris ?? [],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: spec.token_endpoint_auth_method ?? 'client_secret_basic',
  };
  if (spec.backchannel_logout_uri) {
    client.backchannel_logout_uri = spec.backchannel_logout_uri;
    client.backchannel_logout_session_required = true;
  }
  return client;
}

// The first 16 hex digits of a value's SHA-256: enough to tell tokens apart in logs.
function fingerprint(value) {
  return crypto.createHash('sha256').update(String(value)).digest('hex').slice(0, 16);
}

function escapeHtml(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function loginPage(uid, { login = '', error } = {}) {
  const action = `/interaction/${encodeURIComponent(uid)}/login`;
  const errorHtml = error ? `<p class="error" data-portcullis-error>${escapeHtml(error)}</p>\n` : '';
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
${errorHtml}<form data-portcullis-login method="post" action="${escapeHtml(action)}">
<label>Login <input type="text" name="login" value="${escapeHtml(login)}" autofocus></label>
<label>Password <input type="password" name="password"></label>
<label>One-time code (optional) <input type="text" name="otp" autocomplete="one-time-code"></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
`;
}

function logoutPage(ctx, form) {
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Sign out</title></head>
<body>
<h1>Sign out from ${escapeHtml(ctx.host)}?</h1>
${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>
</body>
</html>
`;
}

function requestedAcrs(ctx) {
  const acr = ctx.oidc.claims?.id_token?.acr;
  if (!acr) return [];
  if (Array.isArray(acr.values)) return acr.values;
  if (typeof acr.value === 'string') return [acr.value];
  return [];
}

// The base policy, plus: asking for loa:2 while the session is loa:1 means logging in again.
function interactionsPolicy() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(
    new interactionPolicy.Check(
      'acr_step_up',
      'a stronger authentication (urn:portcullis:loa:2) is requested',
      'login_required',
      (ctx) => {
        const { oidc } = ctx;
        if (!requestedAcrs(ctx).includes(LOA2)) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
        if (oidc.acr === LOA2) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
        // Just logged in for this request: take what the user gave, don't loop.
        if (oidc.result?.login) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
        return interactionPolicy.Check.REQUEST_PROMPT;
      },
    ),
  );
  return policy;
}

// Consent is implied: whatever the client asks for is added to its grant.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const accountId = oidc.account.accountId;
  const clientId = oidc.client.clientId;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
    grant = new oidc.provider.Grant({ accountId, clientId });
  }
  const scope = [...oidc.requestParamOIDCScopes].join(' ');
  if (scope) grant.addOIDCScope(scope);
  const claims = [...oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);
  await grant.save();
  return grant;
}

async function findAccount(_ctx, sub) {
  const user = USERS[sub];
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub, ...user.claims };
    },
  };
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > 64 * 1024) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function sendHtml(res, status, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(body);
}

async function handleInteraction(provider, req, res, url) {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(url.pathname);
  if (!match) {
    sendHtml(res, 404, 'not found\n');
    return;
  }
  const uid = decodeURIComponent(match[1]);
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    sendHtml(res, 400, 'interaction mismatch\n');
    return;
  }

  if (match[2] === undefined && req.method === 'GET') {
    if (details.prompt.name === 'consent') {
      // Not expected (loadExistingGrant grants everything), but never ask: grant it.
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const d = details.prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    sendHtml(res, 200, loginPage(uid, { login: details.params.login_hint ?? '' }));
    return;
  }

  if (match[2] === '/login' && req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') ?? '';
    const password = form.get('password') ?? '';
    const otp = form.get('otp') ?? '';
    const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
    if (!user || user.password !== password) {
      log(`login failed for ${JSON.stringify(login)}`);
      sendHtml(res, 200, loginPage(uid, { login, error: 'Invalid login or password.' }));
      return;
    }
    const strong = otp === GOOD_OTP;
    const result = {
      login: {
        accountId: login,
        acr: strong ? LOA2 : LOA1,
        amr: strong ? ['pwd', 'otp'] : ['pwd'],
        remember: true,
      },
      // Consent is implied (loadExistingGrant grants what is asked); this also settles
      // an explicit prompt=consent without a second interaction.
      consent: {},
    };
    log(`login ok for ${login} (${result.login.acr})`);
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    return;
  }

  res.writeHead(405, { allow: 'GET, POST' });
  res.end();
}

// oidc-provider drops offline_access from an authorization request unless it carries
// prompt=consent (lib/actions/authorization/scopes.js). Relying parties normally don't
// send it, so add `consent` to the prompt of GET /auth requests asking for offline_access
// (not to prompt=none ones): consent is then granted without asking (handleInteraction),
// and issueRefreshToken below issues the refresh token. Returns the new path, or null.
function keepOfflineAccess(url) {
  const scope = url.searchParams.get('scope') ?? '';
  if (!scope.split(' ').includes('offline_access')) return null;
  const prompts = (url.searchParams.get('prompt') ?? '').split(' ').filter(Boolean);
  if (prompts.includes('consent') || prompts.includes('none')) return null;
  url.searchParams.set('prompt', [...prompts, 'consent'].join(' '));
  return `${url.pathname}${url.search}`;
}

const config = readConfig();

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };

const ttl = {};
if (config.idTokenTtl !== undefined) ttl.IdToken = Number(config.idTokenTtl);
if (config.accessTokenTtl !== undefined) ttl.AccessToken = Number(config.accessTokenTtl);

let provider;
let providerCallback;
// Grant ids by account id, for /_test/revoke-grants.
const grantsByAccount = new Map();

async function revokeGrants(req, res) {
  const form = await readForm(req);
  const sub = form.get('sub') ?? '';
  let revoked = 0;
  for (const grantId of grantsByAccount.get(sub) ?? []) {
    const grant = await provider.Grant.find(grantId);
    if (grant) {
      await grant.destroy();
      revoked += 1;
    }
  }
  grantsByAccount.delete(sub);
  log(`revoked ${revoked} grant(s) of ${JSON.stringify(sub)}`);
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ revoked }));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  log(`${req.method} ${url.pathname}`);
  if (req.method === 'GET' && url.pathname === '/auth') {
    const rewritten = keepOfflineAccess(url);
    if (rewritten) req.url = rewritten;
  }
  if (req.method === 'POST' && url.pathname === '/_test/revoke-grants') {
    revokeGrants(req, res).catch((err) => {
      log(`revoke error: ${err.stack ?? err}`);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
    return;
  }
  if (url.pathname.startsWith('/interaction/')) {
    handleInteraction(provider, req, res, url).catch((err) => {
      log(`interaction error: ${err.stack ?? err}`);
      if (!res.headersSent) sendHtml(res, 400, `<p data-portcullis-error>${escapeHtml(err.message)}</p>\n`);
      else res.end();
    });
    return;
  }
  providerCallback(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  provider = new Provider(issuer, {
    clients: config.clients.map(clientMetadata),
    jwks: { keys: [signingKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    findAccount,
    loadExistingGrant,
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    conformIdTokenClaims: false,
    acrValues: [LOA1, LOA2],
    pkce: { required: () => true },
    responseTypes: ['code'],
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource: logoutPage },
      claimsParameter: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    interactions: {
      policy: interactionsPolicy(),
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    // offline_access on the code grant yields a refresh token (see keepOfflineAccess).
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    // oidc-provider's own fetch wrapper (lib/helpers/fetch_request.js) installs an undici
    // dispatcher that refuses special-use addresses (loopback, private ranges) and a
    // 2.5 s timeout. Back-channel logout in tests targets 127.0.0.1 on a busy machine:
    // drop that dispatcher and allow 10 s.
    fetch: (target, options) => {
      delete options.dispatcher;
      return globalThis.fetch(target, { ...options, signal: AbortSignal.timeout(10_000) });
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 3600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
      RefreshToken: 24 * 3600,
      ...ttl,
    },
    renderError: async (ctx, out, error) => {
      log(`error page: ${JSON.stringify(out)} ${error?.stack ?? ''}`);
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Error</title></head><body>
<h1>Error</h1>
${Object.entries(out).map(([k, v]) => `<p data-portcullis-error="${escapeHtml(k)}">${escapeHtml(v)}</p>`).join('\n')}
</body></html>
`;
    },
  });

  providerCallback = provider.callback();

  for (const event of ['server_error', 'authorization.error', 'grant.error', 'end_session.error',
    'userinfo.error', 'introspection.error', 'revocation.error']) {
    provider.on(event, (_ctx, err) => log(`${event}: ${err?.stack ?? err}`));
  }
  provider.on('backchannel.error', (_ctx, err, client) => log(`backchannel.error (${client.clientId}): ${err?.stack ?? err}`));
  provider.on('backchannel.success', (_ctx, client, accountId, sid) => log(`backchannel.success ${client.clientId} sub=${accountId} sid=${sid}`));
  provider.on('end_session.success', () => log('end_session.success'));
  provider.on('grant.success', () => log('grant.success'));
  provider.on('grant.saved', (grant) => {
    const ids = grantsByAccount.get(grant.accountId) ?? new Set();
    ids.add(grant.jti);
    grantsByAccount.set(grant.accountId, ids);
  });
  // Which grant issued which access token, without printing the token (opaque access
  // tokens are their own id): tests compare fingerprints with what an upstream received.
  provider.on('access_token.saved', (token) => log(`access_token.saved gty=${token.gty} sha256=${fingerprint(token.jti)}`));

  process.stdout.write(`${JSON.stringify({ ready: true, issuer })}\n`);
});

server.on('error', (err) => fail(`listen: ${err.message}`));

function shutdown(reason) {
  log(`exiting: ${reason}`);
  process.exit(0);
}

process.stdin.on('end', () => shutdown('stdin closed'));
process.stdin.on('close', () => shutdown('stdin closed'));
process.stdin.on('error', () => shutdown('stdin error'));
process.stdin.resume();
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
