"""Dual-era demo MCP server: the official Python SDK 2.x `MCPServer`.

It serves both eras on one endpoint, as the SDK does: session-era clients
(`initialize`, `Mcp-Session-Id`) and stateless 2026-07-28 clients (`_meta` and
mirrored headers on every POST). The tools are the demo policy's (`add`, `subtract`,
`whoami`, `echo`, `say`) plus `forecast`, whose `region` and `days` arguments are
mirrored in `Mcp-Param-*` headers (`x-mcp-header`), `announce`, which notifies
`subscriptions/listen` streams, and `confirm`, which asks the client for input (an
MRTR round trip in 2026-07-28), and `report`, which answers a 2026-07-28 client
that declares the tasks extension (`io.modelcontextprotocol/tasks`) with a task
handle instead of a result: the task completes on the second `tasks/get`, in
the memory of this process alone (so every poll must reach the backend that
made it). With `--modern-only` it refuses every
session-era request (HTTP 400, -32022 naming the versions it serves), as a
2026-only deployment does.

`/_debug/requests` lists what it received (`recorder.py`).
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

from mcp.server.caching import CacheHint
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult, RequestParams
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from recorder import serve
from starlette.responses import Response

MODERN_VERSIONS = ["2026-07-28"]
TASKS = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
INVALID_PARAMS = -32602


class TaskParams(RequestParams):
    task_id: str


class TaskUpdateParams(TaskParams):
    input_responses: dict[str, Any] | None = None


class Tasks(Extension):
    """The tasks extension (`io.modelcontextprotocol/tasks`, 2026-07-28): `report`
    becomes a task for a client that declares the extension. A task holds its
    result from the start and reports `working` to the first `tasks/get`, so a
    client polls at least twice, each time to this process."""

    identifier = TASKS

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: dict[str, dict[str, Any]] = {}

    def methods(self):
        return [
            MethodBinding("tasks/get", TaskParams, self.get),
            MethodBinding("tasks/update", TaskUpdateParams, self.update),
            MethodBinding("tasks/cancel", TaskParams, self.cancel),
        ]

    async def intercept_tool_call(self, params, ctx, call_next):
        meta = (ctx.params or {}).get("_meta") or {}
        declared = TASKS in ((meta.get(CLIENT_CAPABILITIES) or {}).get("extensions") or {})
        if params.name != "report" or not declared:
            return await call_next(ctx)
        result = await call_next(ctx)
        now = datetime.now(timezone.utc).isoformat()
        task = {
            "taskId": str(uuid.uuid4()),
            "status": "working",
            "createdAt": now,
            "lastUpdatedAt": now,
            "ttlMs": 600_000,
            "pollIntervalMs": 10,
        }
        self.tasks[task["taskId"]] = {
            "task": task,
            "polls": 0,
            "result": result.model_dump(by_alias=True, mode="json", exclude_none=True),
        }
        return {"resultType": "task", **task}

    def _task(self, task_id: str) -> dict[str, Any]:
        held = self.tasks.get(task_id)
        if held is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Failed to retrieve task: Task not found on {self.name}")
        return held

    async def get(self, ctx, params: TaskParams):
        held = self._task(params.task_id)
        held["polls"] += 1
        task = dict(held["task"])
        if held["polls"] >= 2 and task["status"] == "working":
            task["status"] = "completed"
            task["lastUpdatedAt"] = datetime.now(timezone.utc).isoformat()
            held["task"] = task
        if task["status"] == "completed":
            return {**task, "result": held["result"]}
        return task

    async def update(self, ctx, params: TaskUpdateParams):
        self._task(params.task_id)
        return {}

    async def cancel(self, ctx, params: TaskParams):
        held = self._task(params.task_id)
        if held["task"]["status"] == "working":
            held["task"] = {**held["task"], "status": "cancelled"}
        return {}


def build(name: str) -> MCPServer:
    # Its tool list is the same for everyone, so any cache may share it; the
    # gateway, which filters it per caller, marks what it forwards private.
    mcp = MCPServer(
        name,
        cache_hints={"tools/list": CacheHint(ttl_ms=60_000, scope="public")},
        extensions=[Tasks(name)],
    )

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
    async def announce(ctx: Context) -> str:
        """Tell `subscriptions/listen` subscribers that the tool list changed."""
        await ctx.notify_tools_changed()
        return "announced"

    @mcp.tool()
    def confirm(action: str, ctx: Context) -> str | InputRequiredResult:
        """Ask the user to confirm `action` before doing it. In the 2026-07-28 revision
        that is a multi-round trip: an `input_required` result, then the client's
        retry of the same call with the answer and the echoed `requestState`."""
        answer = (ctx.input_responses or {}).get("confirm")
        if answer is None:
            question = ElicitRequest(
                params=ElicitRequestFormParams(
                    message=f"Really {action}?",
                    requested_schema={"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
                )
            )
            return InputRequiredResult(input_requests={"confirm": question}, request_state=f"confirm:{action}")
        if ctx.request_state != f"confirm:{action}":
            # The state is the client's to echo and anyone's to forge: check it.
            return "refused: the request state does not match this action"
        accepted = getattr(answer, "action", None) == "accept" and (getattr(answer, "content", None) or {}).get("ok")
        return f"{action}: done" if accepted else f"{action}: not confirmed"

    @mcp.tool()
    def report(topic: str) -> str:
        """A report on `topic`, naming the backend that wrote it; a task for a
        2026-07-28 client that declares the tasks extension."""
        return f"report on {topic} by {name}"

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
    serve(served, args.name, args.host, args.port)


if __name__ == "__main__":
    main()
