"""Local OAuth 2 token issuer for the dev stack and the tests.

Serves what the gateway fetches from any identity provider: OIDC discovery
(`/.well-known/openid-configuration`), RFC 8414 metadata
(`/.well-known/oauth-authorization-server`) and a JWKS (`/jwks`). Tokens are ES256
JWTs shaped like RFC 9068 access tokens (`iss`, `sub`, `aud`, `scope`, `client_id`).

    issuer.py serve --key-dir D --issuer URL --port N [--cert C --key K]
    issuer.py token --key-dir D --issuer URL --aud A [--sub S] [--scope "..."] [--ttl SECS]

`token` signs with the same key files the server publishes, so it works whether or
not the server is running. `POST /token` (form fields sub, scope, ttl, aud, email, client_id) does the
same over HTTP; `POST /_admin/rotate` adds a new signing key (the newest signs, all
are published). This is a development tool: it hands a token to anyone who asks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KeyStore:
    """ES256 signing keys kept as PEM files; the newest file signs."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if not self._files():
            self.rotate()

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.pem"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def rotate(self) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        kid = self.kid(key.public_key())
        path = self.directory / f"{kid}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return kid

    def keys(self) -> list[tuple[str, ec.EllipticCurvePrivateKey]]:
        out = []
        for path in self._files():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            out.append((path.stem, key))
        return out

    def signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        return self.keys()[-1]

    @staticmethod
    def kid(public_key: ec.EllipticCurvePublicKey) -> str:
        """RFC 7638 JWK thumbprint."""
        jwk = KeyStore.jwk(public_key)
        canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode()).digest())

    @staticmethod
    def jwk(public_key: ec.EllipticCurvePublicKey) -> dict:
        numbers = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
        }

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.keys():
            keys.append({**self.jwk(key.public_key()), "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}


def issue(
    store: KeyStore,
    issuer: str,
    aud: str,
    sub: str,
    scope: str,
    ttl: int,
    email: str | None = None,
    client_id: str = "dev-client",
) -> str:
    kid, key = store.signing_key()
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": sub,
        "aud": aud,
        "scope": scope,
        "client_id": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def app(store: KeyStore, issuer: str, default_aud: str) -> Starlette:
    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/jwks",
                "token_endpoint": f"{issuer}/token",
                "response_types_supported": ["token"],
                "grant_types_supported": ["client_credentials"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "scopes_supported": ["mcp:tools"],
                "subject_types_supported": ["public"],
            },
            headers={"cache-control": "max-age=300"},
        )

    async def jwks(_: Request) -> JSONResponse:
        return JSONResponse(store.jwks(), headers={"cache-control": "max-age=300"})

    async def token(request: Request) -> JSONResponse:
        form = await request.form()
        try:
            ttl = int(form.get("ttl", "3600"))
        except ValueError:
            return JSONResponse({"error": "invalid_request", "error_description": "ttl is not an integer"}, 400)
        access_token = issue(
            store,
            issuer,
            str(form.get("aud", default_aud)),
            str(form.get("sub", "dev-user")),
            str(form.get("scope", "mcp:tools")),
            ttl,
            form.get("email"),
            str(form.get("client_id", "dev-client")),
        )
        return JSONResponse({"access_token": access_token, "token_type": "Bearer", "expires_in": ttl})

    async def rotate(_: Request) -> JSONResponse:
        return JSONResponse({"kid": store.rotate()})

    return Starlette(
        routes=[
            Route("/_admin/rotate", rotate, methods=["POST"]),
            Route("/.well-known/openid-configuration", metadata),
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/jwks", jwks),
            Route("/token", token, methods=["POST"]),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the issuer over HTTP(S)")
    tok = sub.add_parser("token", help="print a bearer token")
    for p in (serve, tok):
        p.add_argument("--key-dir", type=Path, required=True)
        p.add_argument("--issuer", required=True, help="issuer URL, as it appears in `iss`")
        p.add_argument("--aud", default="https://localhost:8443/mcp", help="audience (the gateway's resource URI)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--cert", type=Path)
    serve.add_argument("--key", type=Path)
    tok.add_argument("--sub", default="dev-user")
    tok.add_argument("--scope", default="mcp:tools")
    tok.add_argument("--ttl", type=int, default=3600)
    args = parser.parse_args()

    store = KeyStore(args.key_dir)
    if args.command == "token":
        print(issue(store, args.issuer, args.aud, args.sub, args.scope, args.ttl))
        return 0
    ssl = {"ssl_certfile": str(args.cert), "ssl_keyfile": str(args.key)} if args.cert else {}
    uvicorn.run(
        app(store, args.issuer, args.aud),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        **ssl,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
