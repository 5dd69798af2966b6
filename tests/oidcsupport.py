"""OpenID providers for the sign-in tests.

``NodeProvider``: panva's oidc-provider (npm, certified), run with node on a free port from
tests/oidc_provider.mjs, for the real flow. ``FakeIssuer``: a small server of the test's own that answers
discovery, keys and the token endpoint with whatever the test hands it: the only place hand-made ID tokens
exist, for the tests of bad tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID, CLIENT_SECRET = "sluice-test", "a-client-secret-for-tests"


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


class NodeProvider:
    def __init__(self, redirect_uri: str, users: dict[str, dict[str, Any]], post_logout: str = "") -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
            "post_logout_redirect_uris": [post_logout] if post_logout else [],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        self.config = {
            "port": self.port,
            "client": client,
            "users": users,
            "jwks": {"keys": [rsa_key("node-1").as_dict(private=True)]},
        }
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> NodeProvider:
        node = shutil.which("node")
        assert node, "node is needed for the OpenID provider"
        env = {**os.environ, "OIDC_TEST_CONFIG": json.dumps(self.config), "NODE_ENV": "development"}
        self.process = subprocess.Popen(
            [node, str(ROOT / "tests" / "oidc_provider.mjs")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"oidc-provider did not start: {line!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


def provider_sign_in(client: httpx.Client, start: str, login: str) -> httpx.Response:
    """Start at Sluice's sign-in URL, fill the provider's login and consent forms, follow back to Sluice."""
    page = client.get(start, follow_redirects=True)
    assert "login" in page.text and page.status_code == 200, page.text[:500]
    action = urljoin(str(page.url), FORM_ACTION.search(page.text).group(1))
    page = client.post(
        action, data={"prompt": "login", "login": login, "password": "any"}, follow_redirects=True
    )
    if 'value="consent"' in page.text:
        action = urljoin(str(page.url), FORM_ACTION.search(page.text).group(1))
        page = client.post(action, data={"prompt": "consent"}, follow_redirects=True)
    return page


class FakeIssuer:
    """Discovery, a key set the test may change, and a token endpoint that answers ``token_answer``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys: list[RSAKey] = [rsa_key("fake-1")]
        self.token_answer: tuple[int, dict[str, Any]] = (500, {})
        self.jwks_fetches = 0
        self.token_forms: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                if self.path == "/.well-known/openid-configuration":
                    self._json(200, fake.discovery())
                elif self.path == "/jwks":
                    fake.jwks_fetches += 1
                    self._json(200, KeySet(list(fake.keys)).as_dict(private=False))
                else:
                    self._json(404, {})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                from urllib.parse import parse_qsl  # only this handler reads forms

                fake.token_forms.append(dict(parse_qsl(self.rfile.read(length).decode())))
                self._json(*fake.token_answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
        }

    def __enter__(self) -> FakeIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def claims(self, nonce: str, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "fake-subject-1",
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "email": "pat@example.test",
            "groups": ["eng"],
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self, claims: dict[str, Any], key: RSAKey | None = None, header: dict[str, Any] | None = None
    ) -> str:
        key = key or self.keys[0]
        return jwt.encode({"alg": "RS256", "kid": key.kid, **(header or {})}, claims, key)
