// The dev stack's OpenID provider: panva's oidc-provider (OpenID Certified), set up
// the way an MCP gateway's authorization server should be, so that real MCP clients
// log in by URL alone.
//
//   node dev/node/idp.mjs --key-dir D --issuer URL --resource URL --port N \
//     --cert C --key K [--client-secret-file F]
//
// What it offers:
// - authorization code with PKCE (S256, required) for every client; the sign-in and
//   consent pages are oidc-provider's development pages, where any user name signs
//   in (this is a development provider: never put it in front of real data);
// - clients register by OAuth Client ID Metadata Document (an https `client_id`)
//   or by open dynamic client registration (RFC 7591, `/reg`);
// - client credentials for the confidential client `mcp-dev-service`, whose secret
//   is read from --client-secret-file (made on first start);
// - RFC 8707 resource indicators: the one resource is the gateway (--resource); its
//   access tokens are RFC 9068 JWTs (ES256) with `aud` = the gateway;
// - signing keys are the PEM files in --key-dir (the newest signs; all are
//   published). SIGHUP adds a new key and signs with it from then on (rotation);
//   grants and sessions survive it. `cargo xtask token` signs with the same files.
//
// RFC 8414 metadata is served at /.well-known/oauth-authorization-server as well
// as OIDC discovery, since MCP clients look there first. Trust the dev CA with
// NODE_EXTRA_CA_CERTS (client metadata documents are fetched over https).

import { createHash, generateKeyPairSync, createPrivateKey, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:https";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// oidc-provider lives in .dev/node (where setup installs the lock file), not next to
// this script: resolve it from there.
const modules = process.env.MCP_NODE_TOOLS ?? join(here, "..", "..", ".dev", "node");
const resolve = createRequire(join(modules, "package.json")).resolve;
const { default: Provider, errors } = await import(pathToFileURL(resolve("oidc-provider")).href);

const SCOPES = ["mcp:tools"];
const SERVICE_CLIENT = "mcp-dev-service";

function main() {
  const args = parse(process.argv.slice(2));
  const keys = new KeyDir(args.keyDir);
  const serviceSecret = secretFrom(args.clientSecretFile);
  // Cookie keys outlive a rotation, so a sign-in in progress survives it.
  const cookieKeys = [randomBytes(32).toString("base64url")];
  const build = () => provider({ ...args, keys, serviceSecret, cookieKeys });

  let handler = build().callback();
  const server = createServer(
    { cert: readFileSync(args.cert), key: readFileSync(args.key) },
    (req, res) => {
      if (req.url.startsWith("/.well-known/oauth-authorization-server")) {
        req.url = "/.well-known/openid-configuration";
      }
      handler(req, res);
    },
  );
  process.on("SIGHUP", () => {
    const kid = keys.rotate();
    handler = build().callback();
    log("rotated signing key", { kid });
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      server.close(() => process.exit(0));
      server.closeAllConnections();
    });
  }
  server.listen(args.port, args.host, () =>
    log("listening", { issuer: args.issuer, resource: args.resource, port: args.port }),
  );
}

function provider({ issuer, resource, keys, serviceSecret, cookieKeys }) {
  const provider = new Provider(issuer, {
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
    // dev client serves its metadata document on loopback, so this provider lets
    // it fetch there, and nowhere else.
    fetch: (url, options) => {
      if (isLoopback(url)) {
        delete options.dispatcher;
      }
      return globalThis.fetch(url, options);
    },
  });
  provider.on("server_error", (_ctx, error) => log("server error", { error: String(error) }));
  provider.on("grant.success", (ctx) =>
    log("token issued", { client_id: ctx.oidc.client?.clientId, grant_type: ctx.oidc.params?.grant_type }),
  );
  return provider;
}

function isLoopback(url) {
  const { hostname } = new URL(url);
  return hostname === "localhost" || hostname === "127.0.0.1" || hostname === "[::1]";
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
        return byTime !== 0 ? byTime : a.localeCompare(b);
      });
  }

  rotate() {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const kid = thumbprint(privateKey.export({ format: "jwk" }));
    const path = join(this.directory, `${kid}.pem`);
    writeFileSync(path, privateKey.export({ format: "pem", type: "pkcs8" }));
    chmodSync(path, 0o600);
    return kid;
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
  };
  for (let i = 0; i < argv.length; i += 2) {
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
  return out;
}

function fail(message) {
  console.error(`idp.mjs: ${message}`);
  process.exit(2);
}

// Last, so that every class and constant above is defined when it runs.
main();
