// A real OpenID Provider (panva's certified oidc-provider) on loopback for the integration tests.
//
//   node tests/oidc/provider.mjs <config.json>
//
// config.json (written by tests/support/oidc.rs):
//   { "clients": [ { "client_id", "client_secret"?, "redirect_uris": [..],
//                    "post_logout_redirect_uris": [..] } ],
//     "id_token_claims": bool }
// A client without client_secret is public (token_endpoint_auth_method "none").
//
// Listens on 127.0.0.1, port 0; the issuer is http://127.0.0.1:<port>. Prints exactly one line,
// `LISTENING http://127.0.0.1:<port>`, on stdout once it serves; everything else goes to stderr.
// Exits when its stdin closes (the test that started it is gone) and on SIGTERM.
//
// The interaction views (login, consent) are our own minimal HTML forms, no JavaScript, served
// on /interaction/<uid>; they drive oidc-provider's interactionDetails/interactionFinished API
// the way devInteractions does, except that an unknown login name is refused (the login form is
// shown again with an error) instead of becoming an account id nobody can find.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// oidc-provider prints its notices with console.info (stdout); stdout is for the LISTENING line.
console.log = console.error;
console.info = console.error;

// oidc-provider 9 wants Node 22 (it warns on 20, and works there); it needs crypto.hash and
// URL.parse, which Node 20 has from 20.18 on, and Debian bookworm's own nodejs (18) lacks.
if (typeof crypto.hash !== 'function' || typeof URL.parse !== 'function') {
  console.error(`Node ${process.version} is too old for oidc-provider 9: it needs Node >= 20.18`);
  process.exit(1);
}

const { default: Provider } = await import('oidc-provider');

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node tests/oidc/provider.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));

const ACCOUNTS = {
  alice: {
    preferred_username: 'alice',
    name: 'Alice Example',
    email: 'alice@example.com',
    email_verified: true,
    groups: ['staff', 'admins'],
  },
  bob: {
    preferred_username: 'bob',
    name: 'Bob Example',
    email: 'bob@example.com',
    email_verified: true,
    groups: ['staff'],
  },
  carol: {
    preferred_username: 'carol',
    name: 'Carol Example',
    email: 'carol@example.org',
    email_verified: false,
    groups: ['guests'],
  },
};

function findAccount(_ctx, id) {
  if (!Object.hasOwn(ACCOUNTS, id)) return undefined;
  return {
    accountId: id,
    async claims() {
      return { sub: id, ...ACCOUNTS[id] };
    },
  };
}

const clients = (config.clients || []).map((c) => {
  const client = {
    client_id: c.client_id,
    redirect_uris: c.redirect_uris || [],
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
    // "web" (the default) takes http redirect URIs for the code flow, on any host name.
    application_type: 'web',
    grant_types: ['authorization_code'],
    response_types: ['code'],
  };
  if (c.client_secret) {
    client.client_secret = c.client_secret;
    client.token_endpoint_auth_method = 'client_secret_basic';
  } else {
    client.token_endpoint_auth_method = 'none';
  }
  return client;
});

const html = (s) => String(s)
  .replace(/&/g, '&amp;')
  .replace(/</g, '&lt;')
  .replace(/>/g, '&gt;')
  .replace(/"/g, '&quot;')
  .replace(/'/g, '&#39;');

const page = (title, body) => `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${html(title)}</title></head>
<body>
<h1>${html(title)}</h1>
${body}
</body>
</html>
`;

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients,
  findAccount,
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // true (the default): with an access token issued, scope claims only come from userinfo.
  conformIdTokenClaims: !config.id_token_claims,
  responseTypes: ['code'],
  pkce: { required: () => true },
  cookies: { keys: ['authgate-test-provider-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('oops! something went wrong',
      Object.entries(out).map(([k, v]) => `<pre><strong>${html(k)}</strong>: ${html(v)}</pre>`).join('\n'));
  },
});

function loginForm(uid, details, error) {
  return page('Sign-in', `${error ? `<p class="error">${html(error)}</p>\n` : ''}\
<form autocomplete="off" action="/interaction/${html(uid)}/login" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter a login" value="${html(details.login_hint || '')}">
  <input required type="password" name="password" placeholder="and any password">
  <button type="submit">Sign-in</button>
</form>
<a href="/interaction/${html(uid)}/abort">[ Cancel ]</a>`);
}

function consentForm(uid, clientId, details) {
  const scopes = (details.missingOIDCScope || []).filter((s) => s !== 'openid');
  const claims = (details.missingOIDCClaims || []);
  return page('Authorize', `<p>${html(clientId)} asks for:</p>
<ul>${scopes.map((s) => `<li>scope ${html(s)}</li>`).join('')}${claims.map((c) => `<li>claim ${html(c)}</li>`).join('')}</ul>
<form autocomplete="off" action="/interaction/${html(uid)}/confirm" method="post">
  <input type="hidden" name="prompt" value="consent"/>
  <button type="submit">Continue</button>
</form>
<a href="/interaction/${html(uid)}/abort">[ Cancel ]</a>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(body);
}

// /interaction/<uid>[/login|/confirm|/abort]
async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Bad request', '<p>interaction mismatch</p>'));
    return;
  }
  const { prompt, params, session } = details;

  if (action === undefined && req.method === 'GET') {
    if (prompt.name === 'login') {
      send(res, 200, loginForm(uid, { login_hint: params.login_hint }));
    } else if (prompt.name === 'consent') {
      send(res, 200, consentForm(uid, params.client_id, prompt.details));
    } else {
      send(res, 501, page('Not implemented', `<p>prompt ${html(prompt.name)}</p>`));
    }
    return;
  }

  if (action === 'abort' && req.method === 'GET') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (action === 'login' && req.method === 'POST' && prompt.name === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    if (!Object.hasOwn(ACCOUNTS, login)) {
      send(res, 200, loginForm(uid, { login_hint: login }, `unknown login: ${login}`));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (action === 'confirm' && req.method === 'POST' && prompt.name === 'consent') {
    await readForm(req);
    const { details: missing } = prompt;
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    } else {
      grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    }
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scope.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }

  send(res, 400, page('Bad request', `<p>${html(req.method)} ${html(action || '')} during prompt ${html(prompt.name)}</p>`));
}

const oidc = provider.callback();
server.on('request', (req, res) => {
  const path = (req.url || '').split('?')[0];
  const m = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/.exec(path);
  if (!m) {
    oidc(req, res);
    return;
  }
  interaction(req, res, decodeURIComponent(m[1]), m[2]).catch((err) => {
    console.error('interaction error:', err);
    if (!res.headersSent) {
      send(res, err.statusCode || 500, page('Interaction error', `<p>${html(err.name)}: ${html(err.message)}</p>`));
    } else {
      res.end();
    }
  });
});

function shutdown() {
  server.closeAllConnections?.();
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();

process.stdout.write(`LISTENING ${issuer}\n`);
