"""Drive the gateway with the official MCP Python SDK client.

Opens N concurrent sessions; each lists tools and makes M tool calls (add, subtract
and whoami in turn), checking every answer. Prints one JSON report on stdout and
exits 1 when any call failed, any answer was wrong, or a session's `whoami` changed.

    client.py --url https://localhost:8443/mcp --token "$TOKEN" --ca .dev/certs/ca.pem

With `--call TOOL JSON_ARGS` (repeatable) it instead makes exactly those calls in
one session and reports each outcome, a JSON-RPC error (a policy denial) included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

import httpx
from mcp import ClientSession
from mcp.shared.exceptions import McpError
from mcp.client.streamable_http import streamable_http_client


async def run_session(url: str, token: str, ctx: ssl.SSLContext, calls: int) -> dict:
    report: dict = {"tools": [], "whoami": [], "ok": 0, "errors": []}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, verify=ctx, timeout=httpx.Timeout(30, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, session_id):
            async with ClientSession(read, write) as session:
                await session.initialize()
                report["session_id"] = session_id()
                report["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                for i in range(calls):
                    name, args, expected = [
                        ("add", {"a": i, "b": 2}, i + 2),
                        ("subtract", {"a": i, "b": 2}, i - 2),
                        ("whoami", {}, None),
                    ][i % 3]
                    result = await session.call_tool(name, args)
                    text = result.content[0].text if result.content else ""
                    if result.isError:
                        report["errors"].append(f"{name}{args}: {text}")
                        continue
                    if name == "whoami":
                        if text not in report["whoami"]:
                            report["whoami"].append(text)
                    elif float(text) != expected:
                        report["errors"].append(f"{name}{args} = {text}, expected {expected}")
                        continue
                    report["ok"] += 1
    return report


async def run_calls(url: str, token: str, ctx: ssl.SSLContext, calls: list[tuple[str, str]]) -> dict:
    """One session, the given calls in order; every outcome is reported, errors included."""
    outcomes = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, verify=ctx, timeout=httpx.Timeout(30, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, session_id):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for name, arguments in calls:
                    outcome: dict = {"tool": name, "arguments": json.loads(arguments)}
                    try:
                        result = await session.call_tool(name, outcome["arguments"])
                        outcome["is_error"] = bool(result.isError)
                        outcome["text"] = result.content[0].text if result.content else ""
                    except McpError as exc:
                        outcome["jsonrpc_error"] = {"code": exc.error.code, "message": exc.error.message}
                    outcomes.append(outcome)
    return {"calls": outcomes}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ca", help="CA bundle that signed the gateway's certificate")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument(
        "--call",
        nargs=2,
        action="append",
        metavar=("TOOL", "JSON_ARGS"),
        help="make these calls, in order, in one session, and report each outcome",
    )
    args = parser.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    if args.call:
        print(json.dumps(await run_calls(args.url, args.token, ctx, args.call), indent=1))
        return 0
    results = await asyncio.gather(
        *(run_session(args.url, args.token, ctx, args.calls) for _ in range(args.sessions)),
        return_exceptions=True,
    )
    sessions = []
    failed = False
    for r in results:
        if isinstance(r, BaseException):
            sessions.append({"exception": repr(r)})
            failed = True
        else:
            sessions.append(r)
            failed |= bool(r["errors"]) or len(r["whoami"]) != 1 or r["ok"] != args.calls
    print(json.dumps({"sessions": sessions, "failed": failed}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
