"""What a refused request is told, whichever ingress refused it (its one request-log row and log line:
``proxy.refused``).

Refusals are shaped for what Codex CLI does with them (docs/protocol.md, "Refusals", has the table and
what Codex 0.169/0.171 and the OpenAI SDK were seen to do):
- Codex retries every error it does not recognise as final, five times on the socket and five more over
  HTTP after falling back: any 401, and any 403 or 404 but one coded ``model_not_found``. A 429 with
  ``Retry-After`` it retries after that delay; one without it ends the turn ("exceeded retry limit").
- It stops at once, showing the message as written, for ``code: model_not_found`` with 403 or 404: the
  model refusal uses that code on the wire, as the service does for a model one has no access to.
- It stops at once for a 429 of ``type: usage_limit_reached`` and shows "You've hit your usage limit."
  followed by the ``x-codex-promo-message`` header and the local time of ``resets_at``: a spent budget
  keeps its code ``insufficient_quota`` (what the SDK and the request log know) under that type.
- It stops at once for a 400 and shows the body as it came: to Codex, and only to Codex, the refusals
  of a key that does not authenticate or whose team is disabled go as 400 with the same body (``for_client``).
"""

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async

from proxy.common.wire import WireError
from proxy.models import ApiKey, hash_key

log = logging.getLogger("sluice.refusals")


class Refusal(WireError):
    """A refusal by the gateway's own policy: ``code`` is what the request log and metrics count,
    ``wire_code`` what the client reads (they differ where a client acts on the code), with the headers
    and extra error fields (``resets_at``) that tell the client when to come back."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        wire_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, code, message, param, type)
        self.headers = dict(headers or {})
        self.wire_code = wire_code or code
        self.extra = dict(extra or {})

    def error_object(self) -> dict[str, Any]:
        return {**super().error_object(), "code": self.wire_code, **self.extra}

    def ws_frame(self) -> str:
        frame: dict[str, Any] = {"type": "error", "status": self.status, "error": self.error_object()}
        if self.headers:
            frame["headers"] = self.headers
        return json.dumps(frame)


# ----- who is asking -----


def is_codex(headers: Mapping[str, str]) -> bool:
    """Codex CLI names itself in ``originator`` (codex_cli_rs, codex_exec, codex_vscode…) and in its
    User-Agent, over HTTP and on the WebSocket handshake."""
    originator = headers.get("originator", "").lower()
    agent = headers.get("user-agent", "").lower()
    return originator.startswith("codex") or agent.startswith("codex")


def for_client(error: WireError, headers: Mapping[str, str]) -> WireError:
    """``error`` as this client is told it: Codex retries any 401 and any 403 it does not know (thirteen
    attempts in fifteen seconds), so a key that does not authenticate or a disabled team reaches it as a
    400, which it shows at once. Everyone else gets the status as it is; the request log keeps it too."""
    if error.status not in (401, 403) or not is_codex(headers):
        return error
    if getattr(error, "wire_code", error.code) == "model_not_found":
        return error  # already final to Codex, with its message shown as written
    shaped = type(error).__new__(type(error), *error.args)  # an exception copies badly with copy.copy
    shaped.__dict__.update(error.__dict__, status=400)
    return shaped


# ----- the words of a refusal -----


def in_words(seconds: float) -> str:
    """How long until a reset, as a person says it: "45 s", "12 min", "5 h 3 min", "3 days 4 h"."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"


def header_text(text: str) -> str:
    """``text`` as a header value Codex can read (visible ASCII): other characters become '?'."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def budget_refusal(
    *, kind: str, name: str, daily: bool, budget_usd: str, ends: float, now: float
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The message, headers and extra error fields of a spent budget: which budget (key or team, daily or
    monthly), and when it resets, as a UTC time and in hours and minutes from now."""
    period = "daily" if daily else "monthly"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ends))
    left = in_words(ends - now)
    spent = f"The {period} budget of {kind} '{name}' (USD {budget_usd}) is spent"
    message = f"{spent}; it resets at {when}, in {left}."
    wait = max(1, math.ceil(ends - now))
    headers = {
        "Retry-After": str(wait),
        "x-should-retry": "false",  # the SDK would otherwise retry a 429 at once, twice
        # Codex prints "You've hit your usage limit. <this>, or try again at <resets_at, local time>."
        "x-codex-promo-message": header_text(f"{spent}; it resets at {when}, in {left}"),
    }
    return message, headers, {"resets_at": int(ends), "resets_in_seconds": wait}


def model_refusal_message(
    model: str, *, key_name: str, team_name: str, by_team: bool, allowed: frozenset[str] | None
) -> str:
    """Which model, who refused it (the key's own list or its team's), and what the key may use."""
    who = f"team '{team_name}' of API key '{key_name}'" if by_team else f"API key '{key_name}'"
    if allowed:
        usable = f"API key '{key_name}' may use: {', '.join(sorted(allowed))}"
    else:
        usable = f"API key '{key_name}' may use no model (its list and its team's have none in common)"
    return f"The model '{model}' is not allowed for {who}. {usable} (GET /v1/models lists them)."


# ----- keys that do not authenticate -----

_reasons: dict[str, tuple[float, str]] = {}
_REASON_TTL = 10.0
GENERIC = "Missing, invalid, disabled or expired API key."
# Looking up why costs a query: a flood of made-up keys gets the generic words past this many a second.
LOOKUPS_PER_SECOND = 20
_lookups = [0.0, 0]  # the second they count in, and how many so far


def _why_not(hashed: str) -> str:
    key = ApiKey.objects.filter(hashed_key=hashed).select_related("owner").first()
    if key is None:
        return "Incorrect API key provided: this gateway has no such key."
    # The owner first: deactivating a person also disables their keys (identity/deprovision.py).
    if not key.owner.is_active:
        return f"The API key '{key.name}' belongs to a deactivated user and no longer works."
    if not key.enabled:
        return f"The API key '{key.name}' was revoked (disabled by an administrator); ask for a new one."
    if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC):
        expired = key.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"The API key '{key.name}' expired at {expired}; ask for a new one."
    return "The API key is not active yet; try again in a few seconds."


async def unauthenticated(raw: str | None) -> WireError:
    """The 401 for a key that does not authenticate, saying why: none, unknown, revoked, expired, or
    its owner deactivated. The reason is looked up once per key every few seconds (a flood of one bad
    key costs one query), only after the in-memory snapshot refused it."""
    if not raw:
        return WireError(401, "invalid_api_key", "No API key provided: send 'Authorization: Bearer <key>'.")
    hashed = hash_key(raw)
    now = time.monotonic()
    cached = _reasons.get(hashed)
    if cached is not None and cached[0] > now:
        message = cached[1]
    elif not _may_look_up(now):
        return WireError(401, "invalid_api_key", GENERIC)
    else:
        try:
            message = await sync_to_async(_why_not, thread_sensitive=False)(hashed)
        except Exception:  # noqa: BLE001 - the database being gone must not turn a 401 into a 500
            log.warning("could not look up why a key was refused", exc_info=True)
            message = GENERIC
        if len(_reasons) > 4096:
            _reasons.clear()
        _reasons[hashed] = (now + _REASON_TTL, message)
    return WireError(401, "invalid_api_key", message)


def _may_look_up(now: float) -> bool:
    second = float(int(now))
    if _lookups[0] != second:
        _lookups[:] = [second, 0]
    _lookups[1] += 1
    return _lookups[1] <= LOOKUPS_PER_SECOND


# ----- the record -----
