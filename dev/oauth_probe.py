"""Run the official MCP Python SDK's OAuth discovery against the gateway, without
a token, and report every HTTP request it made.

The SDK reads the 401's WWW-Authenticate, fetches the protected resource metadata,
then the authorization server's metadata, then tries to register and authorize.
There is no browser here, so the flow stops at the authorization redirect; the
report shows how far discovery got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

import httpx
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


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


class NeedsBrowser(Exception):
    pass


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()

    requests: list[dict] = []

    async def on_request(request: httpx.Request) -> None:
        requests.append({"method": request.method, "url": str(request.url)})

    async def on_response(response: httpx.Response) -> None:
        for entry in reversed(requests):
            if entry["url"] == str(response.request.url) and "status" not in entry:
                entry["status"] = response.status_code
                entry["www_authenticate"] = response.headers.get("www-authenticate")
                break

    async def redirect(url: str) -> None:
        raise NeedsBrowser(url)

    async def callback() -> tuple[str, str | None]:
        raise NeedsBrowser("callback")

    provider = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name="oauth-probe",
            redirect_uris=["http://localhost:3030/callback"],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect,
        callback_handler=callback,
    )
    ctx = ssl.create_default_context(cafile=args.ca)
    error = None
    async with httpx.AsyncClient(
        auth=provider, verify=ctx, event_hooks={"request": [on_request], "response": [on_response]}
    ) as http:
        try:
            async with streamable_http_client(args.url, http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the report says what stopped the flow
            error = repr(exc)
    print(json.dumps({"requests": requests, "error": error}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
