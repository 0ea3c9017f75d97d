"""What a demo MCP backend received, for tests that assert on what reached a backend.

`Recorder` wraps a backend's ASGI app. It keeps the last 1000 requests (any path but
`/_debug/`) and `total`, the count of every such request since start (it never rolls
over), and serves them at `GET /_debug/requests` as
`{"backend", "pid", "total", "requests": [{method, path, raw_path, headers, body}]}`.
Backends bind to loopback only. Both demo servers use it (`mcp_server.py` on the SDK
1.x and FastMCP, `dual_era_server.py` on the SDK 2.x), so it needs only Starlette.
"""

from __future__ import annotations

import os
from collections import deque

import uvicorn
from starlette.responses import JSONResponse


class Recorder:
    """ASGI middleware that records every request but those to `/_debug/`."""

    def __init__(self, app, name: str):
        self.app = app
        self.name = name
        self.received: deque[dict] = deque(maxlen=1000)
        self.total = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/_debug/requests":
            answer = {"backend": self.name, "pid": os.getpid(), "total": self.total, "requests": list(self.received)}
            return await JSONResponse(answer)(scope, receive, send)
        self.total += 1
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
        self.received.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                "body": body.decode("utf-8", errors="replace"),
            }
        )
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def serve(app, name: str, host: str, port: int) -> None:
    """Runs `app` behind a Recorder named `name` until stopped, as every demo
    backend does."""
    uvicorn.run(
        Recorder(app, name),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
