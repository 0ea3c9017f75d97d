// Log in to the gateway with the official MCP TypeScript SDK 2.x's OAuth client,
// from no token to tool calls, the way VS Code, Claude or the Inspector do it.
//
//   NODE_EXTRA_CA_CERTS=.dev/certs/ca.pem node dev/node/oauth_login.mjs \
//     --url https://localhost:8443/mcp --cert .dev/certs/server.pem --key .dev/certs/server.key \
//     [--user demo-user] [--call whoami '{}'] [--call add '{"a":1,"b":2}']
//
// The client identifies itself with an OAuth Client ID Metadata Document: this
// script serves its document over https on a free loopback port (with --cert and
// --key) and uses that URL as its client_id, so the provider needs no
// registration. The SDK meets the gateway's 401, reads the protected resource
// metadata and the provider's metadata, and sends the user to the authorization
// URL; a small browser (fetch with a cookie jar) signs in as --user, consents and
// hands the code back; the SDK exchanges it (PKCE) and connects.
//
// Prints one JSON report: `first_connect` (what the first attempt met), `client_id`
// (as the token names it),
// `browser` (each page seen), `token` (the access token's claims), `tools`, `calls`
// and `error`.

import { createServer } from "node:https";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// The SDK lives in .dev/node (where setup installs the lock file), not next to
// this script: resolve it from there.
const modules = process.env.MCP_NODE_TOOLS ?? join(here, "..", "..", ".dev", "node");
const require = createRequire(join(modules, "package.json"));
const { Client, StreamableHTTPClientTransport, UnauthorizedError } = require("@modelcontextprotocol/client");

const REDIRECT_URL = "http://localhost:3030/callback";

const report = { browser: [], calls: [], error: null };

async function main() {
  const args = parse(process.argv.slice(2));
  const metadataServer = await serveClientMetadata(args);
  try {
    await login(args, metadataServer.clientId);
  } catch (error) {
    report.error = String(error?.stack ?? error);
  } finally {
    metadataServer.close();
  }
  console.log(JSON.stringify(report, null, 1));
  process.exit(report.error === null ? 0 : 1);
}

async function login(args, clientId) {
  const provider = new LoginProvider(clientId, args.user);
  const url = new URL(args.url);

  const first = new Client({ name: "oauth-login", version: "1.0.0" });
  try {
    await first.connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
    report.first_connect = "connected without logging in";
    return;
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
    report.first_connect = "unauthorized";
  }
  if (!provider.callback) {
    throw new Error("the SDK never sent the user to the authorization server");
  }
  const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  await transport.finishAuth(provider.callback);

  const client = new Client({ name: "oauth-login", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
  report.token = claimsOf(provider.tokens().access_token);
  report.client_id = report.token.client_id;
  report.tools = (await client.listTools()).tools.map((tool) => tool.name).sort();
  for (const [name, json] of args.calls) {
    const result = await client.callTool({ name, arguments: JSON.parse(json) });
    const text = (result.content ?? []).map((block) => block.text ?? "").join("");
    report.calls.push({ tool: name, text, is_error: Boolean(result.isError) });
  }
  await client.close();
}

/** An OAuthClientProvider that keeps everything in memory and browses by itself. */
class LoginProvider {
  constructor(clientMetadataUrl, user) {
    this.clientMetadataUrl = clientMetadataUrl;
    this.user = user;
    this.saved = {};
    this.callback = null;
  }

  get redirectUrl() {
    return REDIRECT_URL;
  }

  get clientMetadata() {
    return clientMetadata(this.clientMetadataUrl);
  }

  clientInformation() {
    return this.saved.client;
  }

  saveClientInformation(information) {
    this.saved.client = information;
  }

  tokens() {
    return this.saved.tokens;
  }

  saveTokens(tokens) {
    this.saved.tokens = tokens;
  }

  saveCodeVerifier(verifier) {
    this.saved.verifier = verifier;
  }

  codeVerifier() {
    return this.saved.verifier;
  }

  async redirectToAuthorization(authorizationUrl) {
    this.callback = await browse(authorizationUrl, this.user);
    if (!this.callback.get("code")) {
      throw new Error(`the authorization server sent no code: ${this.callback}`);
    }
  }
}

/**
 * Follows `url` as a browser would: redirects, the sign-in form (as `user`, any
 * password), the consent form. Returns the query of the redirect to REDIRECT_URL.
 */
async function browse(start, user) {
  const jar = new Map();
  let response = await visit(new URL(start), { method: "GET" }, jar);
  for (let step = 0; step < 12; step++) {
    const url = new URL(response.url);
    if (response.status >= 300 && response.status < 400) {
      const target = new URL(response.headers.get("location"), url);
      if (target.href.startsWith(REDIRECT_URL)) {
        return target.searchParams;
      }
      response = await visit(target, { method: "GET" }, jar);
      continue;
    }
    const page = await response.text();
    if (response.status === 200 && page.includes("<form")) {
      const form = firstForm(page);
      if ("login" in form.fields) {
        Object.assign(form.fields, { login: user, password: "any password" });
      }
      const body = new URLSearchParams(form.fields);
      response = await visit(new URL(form.action || url.href, url), { method: "POST", body }, jar);
      continue;
    }
    throw new Error(`the authorization server answered ${response.status} at ${url}: ${page.slice(0, 300)}`);
  }
  throw new Error("too many steps before the redirect back to the client");
}

async function visit(url, init, jar) {
  const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join("; ");
  const response = await fetch(url, {
    ...init,
    redirect: "manual",
    headers: cookie ? { cookie } : {},
  });
  for (const line of response.headers.getSetCookie()) {
    const [pair, ...attributes] = line.split(";");
    const [name, value] = [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)];
    const expired = attributes.some((a) => /^\s*expires=Thu, 01 Jan 1970/i.test(a));
    if (expired || value === "") jar.delete(name.trim());
    else jar.set(name.trim(), value);
  }
  // fetch does not say where a manual redirect came from: keep the URL ourselves.
  Object.defineProperty(response, "url", { value: url.href });
  report.browser.push({ method: init.method, url: url.origin + url.pathname, status: response.status });
  return response;
}

function firstForm(page) {
  const form = page.slice(page.indexOf("<form"), page.indexOf("</form>"));
  const action = /action="([^"]*)"/.exec(form)?.[1] ?? "";
  const fields = {};
  for (const input of form.matchAll(/<input\b[^>]*>/g)) {
    const name = /name="([^"]*)"/.exec(input[0])?.[1];
    if (name) fields[name] = /value="([^"]*)"/.exec(input[0])?.[1] ?? "";
  }
  return { action: action.replaceAll("&amp;", "&"), fields };
}

/** Serves this client's metadata document; its URL is the client_id. */
async function serveClientMetadata({ cert, key }) {
  const server = createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
    if (req.url === "/oauth-client.json") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "max-age=60" });
      res.end(JSON.stringify(clientMetadata(server.clientId)));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  server.clientId = `https://localhost:${server.address().port}/oauth-client.json`;
  return server;
}

function clientMetadata(clientId) {
  return {
    client_id: clientId,
    client_name: "oauth-login (MCP TypeScript SDK)",
    redirect_uris: [REDIRECT_URL],
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
    token_endpoint_auth_method: "none",
  };
}

function claimsOf(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
}

function parse(argv) {
  const out = { user: "demo-user", calls: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--url") out.url = argv[++i];
    else if (flag === "--cert") out.cert = argv[++i];
    else if (flag === "--key") out.key = argv[++i];
    else if (flag === "--user") out.user = argv[++i];
    else if (flag === "--call") out.calls.push([argv[++i], argv[++i]]);
    else throw new Error(`unknown argument ${flag}`);
  }
  for (const required of ["url", "cert", "key"]) {
    if (!out[required]) throw new Error(`missing --${required}`);
  }
  return out;
}

// Last, so that every class above is defined when it runs.
await main();
