"""The OpenID Connect relying party: discovery, the authorization request, the code exchange and the ID
token's checks. Nothing here touches users; identity/signin.py turns checked claims into a person.

Every failure is a ``SignInError`` whose ``message`` is what the person reads and whose ``detail`` is what
the log says; neither ever holds a token, a code or the client secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

# Asymmetric signatures only: "none" and HMAC (which would make the client secret a signing key) are
# refused whatever the token's header says.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 120
DISCOVERY_TTL = 3600.0
# An unknown key id fetches the provider's keys again, at most this often (a forged kid must not make
# every sign-in attempt a request to the provider).
JWKS_REFRESH_INTERVAL = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024


class SignInError(Exception):
    def __init__(self, message: str | Promise, detail: str) -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class Config:
    issuer: str
    client_id: str
    client_secret: str
    scopes: str
    groups_claim: str
    name: str
    token_auth_method: str
    timeout: float


def config() -> Config | None:
    """The provider from the settings, or None when single sign-on is not configured."""
    issuer = settings.SLUICE_OIDC_ISSUER.rstrip("/")
    if not (issuer and settings.SLUICE_OIDC_CLIENT_ID and settings.SLUICE_OIDC_CLIENT_SECRET):
        return None
    return Config(
        issuer=issuer,
        client_id=settings.SLUICE_OIDC_CLIENT_ID,
        client_secret=settings.SLUICE_OIDC_CLIENT_SECRET,
        scopes=settings.SLUICE_OIDC_SCOPES,
        groups_claim=settings.SLUICE_OIDC_GROUPS_CLAIM,
        name=settings.SLUICE_OIDC_NAME or urllib.parse.urlsplit(issuer).hostname or issuer,
        token_auth_method=settings.SLUICE_OIDC_TOKEN_AUTH_METHOD,
        timeout=settings.SLUICE_OIDC_TIMEOUT,
    )


UNREACHABLE = _("The identity provider could not be reached. Please try again in a few minutes.")


def _fetch_json(request: urllib.request.Request, timeout: float, what: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - https or the test's
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise SignInError(UNREACHABLE, f"{what}: the provider answered {error.code}") from None
    except (OSError, ValueError) as error:
        raise SignInError(UNREACHABLE, f"{what}: {type(error).__name__}: {error}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise SignInError(UNREACHABLE, f"{what}: the answer is over {MAX_RESPONSE_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise SignInError(UNREACHABLE, f"{what}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise SignInError(UNREACHABLE, f"{what}: the answer is not a JSON object")
    return data


def _get_json(url: str, timeout: float, what: str, token: str = "") -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _fetch_json(urllib.request.Request(url, headers=headers), timeout, what)


class _Cache:
    """Discovery documents and key sets of this process, per URL, with their fetch time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[float, Any]] = {}

    def get(self, url: str, max_age: float) -> Any:
        with self.lock:
            entry = self.entries.get(url)
        if entry is not None and time.monotonic() - entry[0] < max_age:
            return entry[1]
        return None

    def age(self, url: str) -> float:
        with self.lock:
            entry = self.entries.get(url)
        return time.monotonic() - entry[0] if entry else float("inf")

    def put(self, url: str, value: Any) -> None:
        with self.lock:
            self.entries[url] = (time.monotonic(), value)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_cache = _Cache()


def forget() -> None:
    """Drop cached discovery documents and keys (a test changing providers; a key rotation by hand)."""
    _cache.clear()


def metadata(cfg: Config) -> dict[str, Any]:
    url = cfg.issuer + "/.well-known/openid-configuration"
    cached = _cache.get(url, DISCOVERY_TTL)
    if cached is not None:
        return cached
    document = _get_json(url, cfg.timeout, "discovery")
    if document.get("issuer", "").rstrip("/") != cfg.issuer:
        raise SignInError(UNREACHABLE, f"discovery: the document names issuer {document.get('issuer')!r}")
    for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(field), str):
            raise SignInError(UNREACHABLE, f"discovery: no {field}")
    _cache.put(url, document)
    return document


def _key_set(cfg: Config, kid: str | None) -> Any:
    """The provider's keys, fetched again once when the token names a key we do not have."""
    url = metadata(cfg)["jwks_uri"]
    keys = _cache.get(url, DISCOVERY_TTL)
    if keys is not None and (kid is None or kid in keys["kids"]):
        return keys["set"]
    if keys is not None and _cache.age(url) < JWKS_REFRESH_INTERVAL:
        return keys["set"]
    document = _get_json(url, cfg.timeout, "keys")
    try:
        key_set = KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise SignInError(UNREACHABLE, "keys: the provider's key set cannot be read") from None
    kids = {key.kid for key in key_set.keys if getattr(key, "kid", None)}
    _cache.put(url, {"set": key_set, "kids": kids})
    return key_set


@dataclass(frozen=True)
class Flow:
    """One sign-in in flight, kept in the session until the provider sends the person back."""

    state: str
    nonce: str
    verifier: str
    next_url: str
    redirect_uri: str

    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_flow(next_url: str, redirect_uri: str) -> Flow:
    return Flow(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(64),
        next_url=next_url,
        redirect_uri=redirect_uri,
    )


def authorization_url(cfg: Config, flow: Flow) -> str:
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": cfg.client_id,
            "redirect_uri": flow.redirect_uri,
            "scope": cfg.scopes,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": flow.challenge(),
            "code_challenge_method": "S256",
        }
    )
    endpoint = metadata(cfg)["authorization_endpoint"]
    return endpoint + ("&" if "?" in endpoint else "?") + query


REFUSED_CODE = _("The identity provider did not accept this sign-in. Please start again.")


def exchange(cfg: Config, flow: Flow, code: str) -> dict[str, Any]:
    """The token endpoint's answer for an authorization code (with the PKCE verifier)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": flow.redirect_uri,
        "code_verifier": flow.verifier,
    }
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    if cfg.token_auth_method == "client_secret_post":
        form |= {"client_id": cfg.client_id, "client_secret": cfg.client_secret}
    else:
        pair = (
            f"{urllib.parse.quote(cfg.client_id, safe='')}:{urllib.parse.quote(cfg.client_secret, safe='')}"
        )
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    request = urllib.request.Request(
        metadata(cfg)["token_endpoint"], data=urllib.parse.urlencode(form).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout) as response:  # noqa: S310
            body = response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as error:
        if 400 <= error.code < 500:  # invalid_grant: a forged, replayed or expired code
            reason = _oauth_error(error)
            raise SignInError(
                REFUSED_CODE, f"token endpoint refused the code ({error.code} {reason})"
            ) from None
        raise SignInError(UNREACHABLE, f"token endpoint: the provider answered {error.code}") from None
    except (OSError, ValueError) as error:
        raise SignInError(UNREACHABLE, f"token endpoint: {type(error).__name__}: {error}") from None
    try:
        tokens = json.loads(body)
    except ValueError:
        tokens = None
    if not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
        raise SignInError(UNREACHABLE, "token endpoint: no id_token in the answer")
    return tokens


def _oauth_error(error: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(error.read(4096)).get("error", ""))[:100]
    except (ValueError, AttributeError, OSError):
        return ""


BAD_TOKEN = _("The identity provider's answer could not be verified, so you were not signed in.")


def _header(token: str) -> dict[str, Any]:
    try:
        segment = token.split(".")[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, IndexError):
        raise SignInError(BAD_TOKEN, "ID token: the header cannot be read") from None
    if not isinstance(header, dict):
        raise SignInError(BAD_TOKEN, "ID token: the header is not an object")
    return header


def verify_id_token(cfg: Config, token: str, nonce: str) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, times and nonce are checked."""
    header = _header(token)
    if header.get("alg") not in ALGORITHMS:
        raise SignInError(BAD_TOKEN, f"ID token: algorithm {str(header.get('alg'))[:20]!r} is not accepted")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    key_set = _key_set(cfg, kid)
    if kid is not None and kid not in {getattr(key, "kid", None) for key in key_set.keys}:
        raise SignInError(BAD_TOKEN, f"ID token: signed with unknown key {kid[:64]!r}")
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "values": [cfg.issuer, cfg.issuer + "/"]},
        aud={"essential": True, "value": cfg.client_id},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
    )
    try:
        claims = jwt.decode(token, key_set, algorithms=ALGORITHMS).claims
        registry.validate(claims)
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise SignInError(BAD_TOKEN, f"ID token: {type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(claims["iat"], int | float) or claims["iat"] > time.time() + LEEWAY_SECONDS:
        raise SignInError(BAD_TOKEN, "ID token: issued in the future")
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != cfg.client_id:
        raise SignInError(BAD_TOKEN, "ID token: several audiences and azp is not this client")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], nonce):
        raise SignInError(BAD_TOKEN, "ID token: nonce mismatch")
    if not isinstance(claims["sub"], str) or not claims["sub"] or len(claims["sub"]) > 255:
        raise SignInError(BAD_TOKEN, "ID token: unusable sub")
    return dict(claims)


def userinfo(cfg: Config, access_token: str, subject: str) -> dict[str, Any]:
    """Claims from the userinfo endpoint (providers that keep groups out of the ID token), or none."""
    endpoint = metadata(cfg).get("userinfo_endpoint")
    if not isinstance(endpoint, str) or not access_token:
        return {}
    claims = _get_json(endpoint, cfg.timeout, "userinfo", token=access_token)
    if claims.get("sub") != subject:
        raise SignInError(BAD_TOKEN, "userinfo: sub differs from the ID token's")
    return claims


def end_session_url(cfg: Config, id_token: str, after: str) -> str | None:
    try:
        endpoint = metadata(cfg).get("end_session_endpoint")
    except SignInError:
        return None
    if not isinstance(endpoint, str):
        return None
    query = urllib.parse.urlencode(
        {"id_token_hint": id_token, "post_logout_redirect_uri": after, "client_id": cfg.client_id}
    )
    return endpoint + ("&" if "?" in endpoint else "?") + query
