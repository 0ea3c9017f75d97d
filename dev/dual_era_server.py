"""Dual-era demo MCP server: the official Python SDK 2.x `MCPServer`.

It serves both eras on one endpoint, as the SDK does: session-era clients
(`initialize`, `Mcp-Session-Id`) and stateless 2026-07-28 clients (`_meta` and
mirrored headers on every POST). The tools are the demo policy's (`add`, `subtract`,
`whoami`, `echo`, `say`) plus `forecast`, whose `region` argument is mirrored in the
`Mcp-Param-Region` header (`x-mcp-header`). With `--modern-only` it refuses every
session-era request (HTTP 400, -32022 naming the versions it serves), as a
2026-only deployment does.

`/_debug/requests` lists what it received (`recorder.py`).
"""

from __future__ import annotations

import argparse
import json
from typing import Annotated

import uvicorn
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from recorder import Recorder
from starlette.responses import Response

MODERN_VERSIONS = ["2026-07-28"]


def build(name: str) -> MCPServer:
    # Its tool list is the same for everyone, so any cache may share it; the
    # gateway, which filters it per caller, marks what it forwards private.
    mcp = MCPServer(name, cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="public")})

    @mcp.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def subtract(a: float, b: float) -> float:
        """Subtract b from a."""
        return a - b

    @mcp.tool()
    def whoami() -> str:
        """Name of the backend that serves this call."""
        return name

    @mcp.tool()
    def echo(a: float | None = None, b: float | None = None, uid: str | None = None, email: str | None = None) -> dict:
        """Return the arguments as received (to see what the gateway injected)."""
        return {k: v for k, v in {"a": a, "b": b, "uid": uid, "email": email}.items() if v is not None}

    @mcp.tool()
    def say(text: str) -> str:
        """Return `text` as given (to see what the gateway redacts)."""
        return text

    @mcp.tool()
    def forecast(
        region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
        days: Annotated[int, Field(json_schema_extra={"x-mcp-header": "Days"})] = 1,
    ) -> str:
        """The weather for `region` over `days` days; both travel in headers too."""
        return f"{region}: sunny for {days} day(s)"

    return mcp


class ModernOnly:
    """Refuses session-era requests (no version header, or a handshake-era one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            headers = dict(scope["headers"])
            version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
            if version not in MODERN_VERSIONS:
                error = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {
                        "code": -32022,
                        "message": "Unsupported protocol version",
                        "data": {"supported": MODERN_VERSIONS, "requested": version or None},
                    },
                }
                return await Response(json.dumps(error), status_code=400, media_type="application/json")(
                    scope, receive, send
                )
        return await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="backend name, returned by whoami")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--modern-only", action="store_true", help="refuse session-era requests")
    args = parser.parse_args()

    # The gateway in front validates Host and Origin; behind it the backend sees
    # Envoy's forwarded Host, which its own DNS-rebinding check would refuse.
    app = build(args.name).streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    served = ModernOnly(app) if args.modern_only else app
    uvicorn.run(
        Recorder(served, args.name),
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
