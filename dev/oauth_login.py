"""Log in to the gateway with the official MCP Python SDK's OAuth client, from no
token to tool calls, the way an interactive MCP client does, and report every HTTP
request it made.

The SDK reads the 401's WWW-Authenticate, fetches the protected resource metadata,
then the authorization server's metadata, registers itself (dynamic client
registration), and sends the user to the authorization URL. Here a small browser
(an httpx client with a cookie jar) follows that URL: it signs in as --user on the
provider's sign-in page, consents, and hands the code from the redirect back to
the SDK, which exchanges it (PKCE) for a token and retries.

    oauth_login.py --url https://localhost:8443/mcp --ca .dev/certs/ca.pem \\
        [--user demo-user] [--call whoami '{}'] [--call add '{"a":1,"b":2}']

Prints one JSON report: `requests` (method, URL, status of each request the SDK
made), `browser` (each page the browser saw), `token` (the access token's claims),
`tools`, `calls` (each call's text or error) and `error` (what stopped the flow).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import html.parser
import json
import ssl
import sys
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URI = "http://localhost:3030/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Form(html.parser.HTMLParser):
    """The first form of a page: its action and its inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and not self._done:
            self.action = attributes.get("action", "")
            self._inside = True
        elif tag == "input" and self._inside and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._inside:
            self._inside = False
            self._done = True


async def browse(authorization_url: str, user: str, verify: ssl.SSLContext, pages: list[dict]) -> dict[str, list[str]]:
    """Follows `authorization_url` as a browser would: redirects, the sign-in form
    (as `user`, any password), the consent form. Returns the query of the final
    redirect to REDIRECT_URI (code, state, iss)."""
    async with httpx.AsyncClient(verify=verify, follow_redirects=False) as browser:
        response = await browser.get(authorization_url)
        for _ in range(12):
            url = str(response.request.url)
            pages.append({"method": response.request.method, "url": url.split("?")[0], "status": response.status_code})
            if response.is_redirect:
                target = urljoin(url, response.headers["location"])
                if target.startswith(REDIRECT_URI):
                    return parse_qs(urlsplit(target).query)
                response = await browser.get(target)
                continue
            if response.status_code == 200 and "<form" in response.text:
                form = Form()
                form.feed(response.text)
                fields = dict(form.fields)
                if "login" in fields:
                    fields.update(login=user, password="any password")
                response = await browser.post(urljoin(url, form.action or url), data=fields)
                continue
            raise RuntimeError(f"the authorization server answered {response.status_code} at {url}: {response.text[:300]}")
    raise RuntimeError("too many steps before the redirect back to the client")


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--user", default="demo-user")
    parser.add_argument("--call", nargs=2, action="append", default=[], metavar=("TOOL", "JSON_ARGS"))
    args = parser.parse_args()

    verify = ssl.create_default_context(cafile=args.ca)
    requests: list[dict] = []
    pages: list[dict] = []
    callback: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()

    async def on_request(request: httpx.Request) -> None:
        requests.append({"method": request.method, "url": str(request.url).split("?")[0]})

    async def on_response(response: httpx.Response) -> None:
        url = str(response.request.url).split("?")[0]
        for entry in reversed(requests):
            if entry["url"] == url and "status" not in entry:
                entry["status"] = response.status_code
                break

    async def redirect(url: str) -> None:
        query = await browse(url, args.user, verify, pages)
        if "code" not in query:
            raise RuntimeError(f"the authorization server sent no code: {query}")
        callback.set_result((query["code"][0], query.get("state", [None])[0]))

    async def on_callback() -> tuple[str, str | None]:
        return await callback

    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name="oauth-login (MCP Python SDK)",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=redirect,
        callback_handler=on_callback,
    )
    report: dict = {"requests": requests, "browser": pages, "calls": [], "error": None}
    async with httpx.AsyncClient(
        auth=provider, verify=verify, event_hooks={"request": [on_request], "response": [on_response]}
    ) as http:
        try:
            async with streamable_http_client(args.url, http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), timeout=60)
                    report["tools"] = sorted(tool.name for tool in (await session.list_tools()).tools)
                    for name, arguments in args.call:
                        result = await session.call_tool(name, json.loads(arguments))
                        text = "".join(getattr(block, "text", "") for block in result.content)
                        report["calls"].append({"tool": name, "text": text, "is_error": result.isError})
        except BaseException as exc:  # noqa: BLE001 - the report says what stopped the flow
            report["error"] = repr(exc)
    if storage.tokens is not None:
        report["token"] = claims_of(storage.tokens.access_token)
    if storage.client is not None:
        report["client_id"] = storage.client.client_id
    print(json.dumps(report, indent=1))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
