// The dev stack's OpenID provider: panva's oidc-provider (OpenID Certified), set up
// the way an MCP gateway's authorization server should be, so that real MCP clients
// log in by URL alone.
//
//   node dev/node/idp.mjs --key-dir D --issuer URL --resource URL --port N \
//     --cert C --key K [--client-secret-file F] [--gateway-secret-file F] \
//     [--backend-audience URL ...]
//
// What it offers:
// - authorization code with PKCE (S256, required) for every client; the sign-in and
//   consent pages are oidc-provider's development pages, where any user name signs
//   in (this is a development provider: never put it in front of real data);
// - clients register by OAuth Client ID Metadata Document (an https `client_id`)
//   or by open dynamic client registration (RFC 7591, `/reg`);
// - client credentials for the confidential client `mcp-dev-service`, whose secret
//   is read from --client-secret-file (made on first start);
// - RFC 8693 token exchange for the gateway's own client `mcp-gateway` (secret in
//   --gateway-secret-file, made on first start): it trades a caller's access token
//   for the gateway for one with the same subject and a backend's audience (one of
//   --backend-audience), `act.sub` = the gateway, living no longer than the
//   original. oidc-provider has no RFC 8693 grant of its own; this file adds it;
// - RFC 8707 resource indicators: the one resource is the gateway (--resource); its
//   access tokens are RFC 9068 JWTs (ES256) with `aud` = the gateway;
// - signing keys are the PEM files in --key-dir (the newest signs; all are
//   published). SIGHUP adds a new key and signs with it from then on (rotation);
//   grants and sessions survive it. `cargo xtask token` signs with the same files.
//
// It serves RFC 8414 metadata (/.well-known/oauth-authorization-server, where MCP
// clients look first) as well as OIDC discovery. Trust the dev CA with
// NODE_EXTRA_CA_CERTS (client metadata documents are fetched over https).
//
// Development only: open registration, CORS for every client, a sign-in page that
// believes anyone, and loopback fetches are what make it convenient here and
// dangerous anywhere else. Never copy this configuration to a real provider.

import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  verify,
} from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:https";
import { createRequire } from "node:module";
import { basename, dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// oidc-provider lives in .dev/node (where setup installs the lock file), not next to
// this script: resolve it from there.
const modules = process.env.MCP_NODE_TOOLS ?? join(here, "..", "..", ".dev", "node");
const resolve = createRequire(join(modules, "package.json")).resolve;
const providerMain = resolve("oidc-provider");
const { default: Provider, errors } = await import(pathToFileURL(providerMain).href);
// The provider's in-memory store, made once and handed to every Provider this
// process builds, so that a key rotation (a new Provider) keeps registered
// clients, grants, sessions and sign-ins in progress.
const { createMemoryAdapter } = await import(
  pathToFileURL(join(dirname(providerMain), "adapters", "memory_adapter.js")).href
);

const SCOPES = ["mcp:tools"];
const SERVICE_CLIENT = "mcp-dev-service";
const GATEWAY_CLIENT = "mcp-gateway";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
/** An exchanged token lives at most this long (and never past the original). */
const EXCHANGED_TTL = 600;

function main() {
  const args = parse(process.argv.slice(2));
  const keys = new KeyDir(args.keyDir);
  const serviceSecret = secretFrom(args.clientSecretFile);
  const gatewaySecret = secretFrom(args.gatewaySecretFile);
  // Cookie keys outlive a rotation, so a sign-in in progress survives it.
  const cookieKeys = [randomBytes(32).toString("base64url")];
  const adapter = createMemoryAdapter();
  const build = () =>
    provider({ ...args, keys, serviceSecret, gatewaySecret, cookieKeys, adapter });

  let handler = build().callback();
  const server = createServer(
    { cert: readFileSync(args.cert), key: readFileSync(args.key) },
    (req, res) => handler(req, res),
  );
  process.on("SIGHUP", () => {
    const kid = keys.rotate();
    handler = build().callback();
    log("rotated signing key", { kid });
  });
  // Nothing to flush (its state is in memory by design): stop at once.
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));
  }
  server.listen(args.port, args.host, () =>
    log("listening", { issuer: args.issuer, resource: args.resource, port: args.port }),
  );
}

function provider({
  issuer,
  resource,
  backendAudiences,
  keys,
  serviceSecret,
  gatewaySecret,
  cookieKeys,
  adapter,
}) {
  const provider = new Provider(issuer, {
    adapter,
    jwks: { keys: keys.privateJwks() },
    cookies: { keys: cookieKeys },
    clients: [
      {
        client_id: SERVICE_CLIENT,
        client_secret: serviceSecret,
        grant_types: ["client_credentials"],
        redirect_uris: [],
        response_types: [],
      },
      {
        client_id: GATEWAY_CLIENT,
        client_secret: gatewaySecret,
        grant_types: [TOKEN_EXCHANGE],
        redirect_uris: [],
        response_types: [],
      },
    ],
    responseTypes: ["code"],
    // The keys are ES256 only; a client that asks for nothing else gets ES256.
    clientDefaults: {
      grant_types: ["authorization_code"],
      id_token_signed_response_alg: "ES256",
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
    scopes: ["openid", "offline_access", ...SCOPES],
    claims: { openid: ["sub"], email: ["email"] },
    pkce: { required: () => true },
    clientBasedCORS: () => true,
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, email: `${sub}@example.com` }),
    }),
    ttl: { AccessToken: 3600, ClientCredentials: 3600, Grant: 14 * 86400 },
    features: {
      devInteractions: { enabled: true },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      clientIdMetadataDocument: { enabled: true, ack: "draft-02" },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== resource) {
            throw new errors.InvalidTarget(`this provider issues tokens for ${resource} only`);
          }
          return {
            scope: SCOPES.join(" "),
            audience: resource,
            accessTokenTTL: 3600,
            accessTokenFormat: "jwt",
            jwt: { sign: { alg: "ES256" } },
          };
        },
      },
    },
    // The provider refuses to fetch from loopback and private addresses (SSRF). A
    // dev client serves its metadata document over https on loopback, so this
    // provider may fetch https URLs on loopback (any of its fetches: metadata
    // documents, and a registered client's https jwks_uri), with time for a busy
    // test machine; every other address stays refused.
    fetch: (url, options) => {
      if (isLoopbackHttps(url)) {
        delete options.dispatcher;
        options.signal = AbortSignal.timeout(15_000);
      }
      return globalThis.fetch(url, options);
    },
  });
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    (ctx) => exchange(ctx, { issuer, resource, backendAudiences, keys }),
    ["subject_token", "subject_token_type", "requested_token_type", "audience", "resource", "scope"],
  );
  provider.on("server_error", (_ctx, error) => log("server error", { error: String(error) }));
  provider.on("grant.success", (ctx) =>
    log("token issued", { client_id: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type }),
  );
  return provider;
}

/**
 * RFC 8693 token exchange: the caller's access token for the gateway, traded for
 * one with the same subject and a backend's audience. Only the gateway's client
 * may ask (oidc-provider checks the client's grant types before this runs).
 */
async function exchange(ctx, { issuer, resource, backendAudiences, keys }) {
  // Registration is open, and a registered client may name this grant: only the
  // gateway's own client may use it.
  if (ctx.oidc.client.clientId !== GATEWAY_CLIENT) {
    throw new errors.UnauthorizedClient("only the gateway may exchange tokens");
  }
  const params = ctx.oidc.params;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest("subject_token_type must be an access token");
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest("only access tokens are issued");
  }
  let subject;
  try {
    subject = keys.verify(params.subject_token);
  } catch (error) {
    throw new errors.InvalidGrant(`subject_token: ${error.message}`);
  }
  const now = Math.floor(Date.now() / 1000);
  if (subject.iss !== issuer || subject.aud !== resource || !(subject.exp > now)) {
    throw new errors.InvalidGrant("subject_token is not a live token of this provider for the gateway");
  }
  const audience = params.audience ?? params.resource;
  if (!backendAudiences.includes(audience)) {
    throw new errors.InvalidTarget("audience is not a backend this provider knows");
  }
  const granted = new Set(String(subject.scope ?? "").split(" ").filter(Boolean));
  const asked = params.scope ? params.scope.split(" ") : [...granted];
  const scope = asked.filter((s) => granted.has(s)).join(" ");
  const exp = Math.min(subject.exp, now + EXCHANGED_TTL);
  const claims = {
    iss: issuer,
    sub: subject.sub,
    aud: audience,
    client_id: subject.client_id,
    scope,
    act: { sub: ctx.oidc.client.clientId },
    iat: now,
    exp,
    jti: randomBytes(16).toString("hex"),
  };
  const token = keys.sign(claims);
  log("token exchanged", { sub: subject.sub, audience, actor: ctx.oidc.client.clientId });
  ctx.body = {
    access_token: token,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: "Bearer",
    expires_in: exp - now,
    scope,
  };
}

function isLoopbackHttps(url) {
  const { protocol, hostname } = new URL(url);
  return (
    protocol === "https:" &&
    (hostname === "localhost" || hostname === "127.0.0.1" || hostname === "[::1]")
  );
}

/** ES256 keys kept as PKCS#8 PEM files named by their RFC 7638 thumbprint. */
class KeyDir {
  constructor(directory) {
    this.directory = directory;
    mkdirSync(directory, { recursive: true });
    if (this.files().length === 0) {
      this.rotate();
    }
  }

  /** Oldest first, by modification time then name (as `cargo xtask token` reads them). */
  files() {
    return readdirSync(this.directory)
      .filter((name) => name.endsWith(".pem"))
      .map((name) => join(this.directory, name))
      .sort((a, b) => {
        const byTime = statSync(a).mtimeMs - statSync(b).mtimeMs;
        // Ties by name, byte-wise, as the Rust signer (tests/src/dev_idp.rs) does.
        return byTime !== 0 ? byTime : a < b ? -1 : a > b ? 1 : 0;
      });
  }

  rotate() {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const kid = thumbprint(privateKey.export({ format: "jwk" }));
    const path = join(this.directory, `${kid}.pem`);
    // Private from the first byte, and whole when it appears under its name.
    const partial = join(this.directory, `.${kid}.partial`);
    writeFileSync(partial, privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600 });
    renameSync(partial, path);
    return kid;
  }

  /** A compact ES256 JWT (RFC 9068 `at+jwt`) signed with the newest key. */
  sign(claims) {
    const path = this.files().at(-1);
    const key = createPrivateKey(readFileSync(path));
    const kid = thumbprint(key.export({ format: "jwk" }));
    const head = b64url({ alg: "ES256", typ: "at+jwt", kid });
    const input = `${head}.${b64url(claims)}`;
    const signature = sign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" });
    return `${input}.${signature.toString("base64url")}`;
  }

  /** The claims of an ES256 JWT signed by one of these keys; throws otherwise. */
  verify(token) {
    const [head, body, signature, extra] = String(token).split(".");
    if (!signature || extra !== undefined) throw new Error("not a compact JWS");
    const header = JSON.parse(Buffer.from(head, "base64url"));
    if (header.alg !== "ES256") throw new Error("not ES256");
    const path = this.files().find((p) => basename(p) === `${header.kid}.pem`);
    if (!path) throw new Error("unknown kid");
    const key = createPublicKey(createPrivateKey(readFileSync(path)));
    const ok = verify("sha256", Buffer.from(`${head}.${body}`), { key, dsaEncoding: "ieee-p1363" },
      Buffer.from(signature, "base64url"));
    if (!ok) throw new Error("bad signature");
    return JSON.parse(Buffer.from(body, "base64url"));
  }

  /** Newest first: oidc-provider signs with the first key that fits. */
  privateJwks() {
    return this.files()
      .reverse()
      .map((path) => {
        const jwk = createPrivateKey(readFileSync(path)).export({ format: "jwk" });
        return { ...jwk, kid: thumbprint(jwk), alg: "ES256", use: "sig" };
      });
  }
}

function b64url(json) {
  return Buffer.from(JSON.stringify(json)).toString("base64url");
}

function thumbprint({ crv, kty, x, y }) {
  return createHash("sha256").update(JSON.stringify({ crv, kty, x, y })).digest("base64url");
}

function secretFrom(path) {
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, `${randomBytes(24).toString("base64url")}\n`, { mode: 0o600 });
  }
  return readFileSync(path, "utf8").trim();
}

function log(message, fields = {}) {
  console.log(JSON.stringify({ time: new Date().toISOString(), message, ...fields }));
}

function parse(argv) {
  const out = { host: "127.0.0.1" };
  const names = {
    "--key-dir": "keyDir",
    "--issuer": "issuer",
    "--resource": "resource",
    "--host": "host",
    "--port": "port",
    "--cert": "cert",
    "--key": "key",
    "--client-secret-file": "clientSecretFile",
    "--gateway-secret-file": "gatewaySecretFile",
  };
  out.backendAudiences = [];
  for (let i = 0; i < argv.length; i += 2) {
    if (argv[i] === "--backend-audience" && argv[i + 1] !== undefined) {
      out.backendAudiences.push(argv[i + 1]);
      continue;
    }
    const name = names[argv[i]];
    if (!name || argv[i + 1] === undefined) {
      fail(`unknown or incomplete argument ${argv[i]}`);
    }
    out[name] = argv[i + 1];
  }
  for (const required of ["keyDir", "issuer", "resource", "port", "cert", "key"]) {
    if (!out[required]) {
      fail(`missing --${required.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
    }
  }
  out.port = Number(out.port);
  out.clientSecretFile ??= join(out.keyDir, "..", "idp-client-secret");
  out.gatewaySecretFile ??= join(out.keyDir, "..", "idp-gateway-secret");
  return out;
}

function fail(message) {
  console.error(`idp.mjs: ${message}`);
  process.exit(2);
}

// Last, so that every class and constant above is defined when it runs.
main();
