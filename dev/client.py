"""Drive the gateway with the official MCP Python SDK client.

Opens N concurrent sessions; each lists tools and makes M tool calls (add, subtract
and whoami in turn), checking every answer. Prints one JSON report on stdout and
exits 1 when any call failed, any answer was wrong, or a session's `whoami` changed.

    client.py --url https://localhost:8443/mcp --token "$TOKEN" --ca .dev/certs/ca.pem

With `--call TOOL JSON_ARGS` (repeatable) it instead makes exactly those calls in
one session and reports each outcome, a JSON-RPC error (a policy denial) included.

Run with `.dev/venv/bin/python` it is the SDK 1.x client (the session era). Run with
`.dev/venv-mcp2/bin/python` it is the SDK 2.x `Client`, and `--mode` picks the era
as that SDK does: `auto` (probe `server/discover`, fall back to `initialize`),
`legacy` (`initialize` and a session) or `2026-07-28` (stateless). The report then
says which version was negotiated (`protocol_version`). With `--tasks` the SDK 2.x
client declares the tasks extension (`io.modelcontextprotocol/tasks`): a call the
server answers with a task handle is polled with `tasks/get` until it ends, through
`--poll-url` (another gateway replica) when given, and the report lists each task
(`tasks`: its handle, the statuses seen, the URL polled).
"""

from __future__ import annotations

import argparse
import asyncio

import anyio
import json
import ssl
import sys
from types import SimpleNamespace

try:  # The SDK 2.x.
    import httpx2 as httpx
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError as McpError

    SDK2 = True
except ImportError:  # The SDK 1.x.
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import McpError

    SDK2 = False

MODE = "legacy"
LISTEN = None
TASKS = False
POLL_URL = None
TASKS_SEEN: list[dict] = []
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"


def tasks_extension():
    """The tasks extension as a `ClientExtension` of the SDK 2.x: it claims results
    with `resultType: "task"` and polls `tasks/get` until the task ends."""
    from typing import Any, Literal

    from mcp.client.extension import ClientExtension, ResultClaim
    from mcp_types import CallToolResult, Request, RequestParams, Result
    from pydantic import ConfigDict

    class CreateTaskResult(Result):
        model_config = ConfigDict(extra="allow")
        result_type: Literal["task"]
        task_id: str
        status: str
        poll_interval_ms: int | None = None

    class TaskParams(RequestParams):
        task_id: str

    class GetTaskRequest(Request[TaskParams, Literal["tasks/get"]]):
        method: Literal["tasks/get"] = "tasks/get"
        params: TaskParams
        name_param = "taskId"

    class DetailedTask(Result):
        model_config = ConfigDict(extra="allow")
        task_id: str
        status: str
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None

    async def resolve(created: CreateTaskResult, ctx) -> CallToolResult:
        seen = {"task_id": created.task_id, "tool": ctx.tool_name, "statuses": [created.status], "polled_via": POLL_URL}
        TASKS_SEEN.append(seen)
        session = POLL_SESSION.client.session if POLL_SESSION is not None else ctx.session
        task = created
        with anyio.fail_after(30):
            while task.status in ("working", "input_required"):
                await anyio.sleep((created.poll_interval_ms or 100) / 1000)
                task = await session.send_request(
                    GetTaskRequest(params=TaskParams(task_id=created.task_id)), DetailedTask
                )
                seen["statuses"].append(task.status)
                seen["returned_task_id"] = task.task_id
        if task.status == "completed" and task.result is not None:
            return CallToolResult.model_validate(task.result)
        message = (task.error or {}).get("message", task.status)
        return CallToolResult(content=[{"type": "text", "text": f"task {task.status}: {message}"}], is_error=True)

    class Tasks(ClientExtension):
        identifier = TASKS_EXTENSION

        def claims(self):
            return [ResultClaim(result_type="task", model=CreateTaskResult, resolve=resolve)]

    return Tasks()


POLL_SESSION = None


async def accept_elicitation(context, params):
    """Answers every elicitation (a server's question to the user) with "yes"."""
    from mcp_types import ElicitResult

    return ElicitResult(action="accept", content={"ok": True})


class Sdk2Session:
    """The SDK 2.x `Client` behind the few calls this script makes of a session."""

    def __init__(self, client):
        self.client = client

    async def list_tools(self):
        return await self.client.list_tools()

    async def listen_once(self, trigger: str) -> list[str]:
        """Opens a `subscriptions/listen` stream for tool list changes, calls
        `trigger`, and returns the events that arrive within 10 s (the first one)."""
        events = []
        async with self.client.listen(tools_list_changed=True) as subscription:
            await self.client.call_tool(trigger, {})
            with anyio.fail_after(10):
                async for event in subscription:
                    events.append(type(event).__name__)
                    break
        return events

    async def call_tool(self, name, arguments):
        result = await self.client.call_tool(name, arguments)
        return SimpleNamespace(isError=result.is_error, content=result.content)


class connect:
    """`async with connect(url, token, ctx) as (session, session_id, version)`: one
    MCP connection through either SDK."""

    def __init__(self, url: str, token: str, ctx: ssl.SSLContext):
        self.url, self.token, self.ctx = url, token, ctx
        self.stack = None

    async def __aenter__(self):
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        headers = {"Authorization": f"Bearer {self.token}"}
        http = await self.stack.enter_async_context(
            httpx.AsyncClient(headers=headers, verify=self.ctx, timeout=httpx.Timeout(30, read=300))
        )
        transport = streamable_http_client(self.url, http_client=http)
        if SDK2:
            extensions = [tasks_extension()] if TASKS else None
            client = await self.stack.enter_async_context(
                Client(transport, mode=MODE, elicitation_callback=accept_elicitation, extensions=extensions)
            )
            version = client.session.protocol_version
            return Sdk2Session(client), (lambda: None), version
        read, write, session_id = await self.stack.enter_async_context(transport)
        session = await self.stack.enter_async_context(ClientSession(read, write))
        init = await session.initialize()
        return session, session_id, init.protocolVersion

    async def __aexit__(self, *exc):
        return await self.stack.__aexit__(*exc)


async def run_session(url: str, token: str, ctx: ssl.SSLContext, calls: int) -> dict:
    report: dict = {"tools": [], "whoami": [], "ok": 0, "errors": []}
    async with connect(url, token, ctx) as (session, session_id, version):
        report["session_id"] = session_id()
        report["protocol_version"] = version
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
    global POLL_SESSION
    if POLL_URL:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            POLL_SESSION, _, _ = await stack.enter_async_context(connect(POLL_URL, token, ctx))
            return await run_calls_in_session(url, token, ctx, calls)
    return await run_calls_in_session(url, token, ctx, calls)


async def run_calls_in_session(url: str, token: str, ctx: ssl.SSLContext, calls: list[tuple[str, str]]) -> dict:
    outcomes = []
    async with connect(url, token, ctx) as (session, _, version):
        # As an agent does: list the tools, then call them.
        tools = await session.list_tools()
        listed = {"tools": sorted(t.name for t in tools.tools)}
        if SDK2:
            listed["tools_cache_scope"] = tools.cache_scope
        for name, arguments in calls:
            outcome: dict = {"tool": name, "arguments": json.loads(arguments)}
            try:
                result = await session.call_tool(name, outcome["arguments"])
                outcome["is_error"] = bool(result.isError)
                outcome["text"] = result.content[0].text if result.content else ""
            except McpError as exc:
                outcome["jsonrpc_error"] = {"code": exc.error.code, "message": exc.error.message}
            outcomes.append(outcome)
        if LISTEN:
            listed["listen_events"] = await session.listen_once(LISTEN)
        if TASKS:
            listed["tasks"] = TASKS_SEEN
    return {"calls": outcomes, "protocol_version": version, **listed}


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
    parser.add_argument(
        "--mode",
        default="legacy",
        choices=["auto", "legacy", "2026-07-28"],
        help="how the SDK 2.x client picks the era (the SDK 1.x speaks only `legacy`)",
    )
    parser.add_argument(
        "--listen",
        metavar="TOOL",
        help="after the calls, open a subscriptions/listen stream, call TOOL and report the first event (SDK 2.x)",
    )
    parser.add_argument(
        "--tasks",
        action="store_true",
        help="declare the tasks extension and poll the tasks servers answer with (SDK 2.x)",
    )
    parser.add_argument("--poll-url", help="poll tasks through this URL (another gateway replica)")
    args = parser.parse_args()
    if args.mode != "legacy" and not SDK2:
        parser.error("--mode auto and 2026-07-28 need the SDK 2.x: run with .dev/venv-mcp2/bin/python")
    if (args.tasks or args.poll_url) and not SDK2:
        parser.error("--tasks needs the SDK 2.x: run with .dev/venv-mcp2/bin/python")
    if args.poll_url and not args.tasks:
        parser.error("--poll-url polls tasks: add --tasks")
    global MODE, LISTEN, TASKS, POLL_URL
    MODE = args.mode
    LISTEN = args.listen
    TASKS = args.tasks
    POLL_URL = args.poll_url

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
