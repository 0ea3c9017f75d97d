// Drive the gateway with the official MCP TypeScript SDK 2.x client
// (@modelcontextprotocol/client, installed by `cargo xtask setup` into .dev/node).
//
//   node dev/node/client.mjs --url https://localhost:8443/mcp --token "$TOKEN" \
//     --mode auto --call whoami '{}' --call add '{"a":1,"b":2}'
//
// `--mode legacy` (the SDK's default: `initialize` and a session) or `auto` (probe
// `server/discover`, fall back to `initialize`; the SDK's `versionNegotiation`).
// Makes the calls in order and prints one JSON report: the negotiated
// `protocol_version`, the listed `tools`, and each call's outcome (`text`, or
// `jsonrpc_error` for a JSON-RPC error such as a policy denial). Trust the dev CA
// with NODE_EXTRA_CA_CERTS=.dev/certs/ca.pem.

import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// The SDK lives in .dev/node (where setup installs the lock file), not next to
// this script: resolve it from there.
const modules = process.env.MCP_NODE_TOOLS ?? join(here, "..", "..", ".dev", "node");
const require = createRequire(join(modules, "package.json"));
const { Client, StreamableHTTPClientTransport } = require("@modelcontextprotocol/client");

function parse(argv) {
  const args = { mode: "legacy", calls: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--url") args.url = argv[++i];
    else if (flag === "--token") args.token = argv[++i];
    else if (flag === "--mode") args.mode = argv[++i];
    else if (flag === "--call") {
      args.calls.push([argv[i + 1], JSON.parse(argv[i + 2])]);
      i += 2;
    } else throw new Error(`unknown argument ${flag}`);
  }
  if (!args.url || !args.token) throw new Error("--url and --token are required");
  if (!["legacy", "auto"].includes(args.mode)) throw new Error("--mode is legacy or auto");
  return args;
}

async function main() {
  const args = parse(process.argv.slice(2));
  const transport = new StreamableHTTPClientTransport(new URL(args.url), {
    requestInit: { headers: { Authorization: `Bearer ${args.token}` } },
  });
  const client = new Client(
    { name: "mcp-gateway-dev-client", version: "0" },
    { versionNegotiation: { mode: args.mode } },
  );
  await client.connect(transport);
  const report = {
    protocol_version: client.getNegotiatedProtocolVersion() ?? null,
    tools: (await client.listTools()).tools.map((t) => t.name).sort(),
    calls: [],
  };
  for (const [name, args_] of args.calls) {
    const outcome = { tool: name, arguments: args_ };
    try {
      const result = await client.callTool({ name, arguments: args_ });
      outcome.is_error = Boolean(result.isError);
      outcome.text = result.content?.[0]?.text ?? "";
    } catch (err) {
      if (typeof err?.code !== "number") throw err;
      outcome.jsonrpc_error = { code: err.code, message: err.message };
    }
    report.calls.push(outcome);
  }
  await client.close();
  console.log(JSON.stringify(report, null, 1));
}

main().catch((err) => {
  console.error(err?.stack ?? String(err));
  process.exit(1);
});
