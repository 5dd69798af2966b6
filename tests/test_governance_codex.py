"""The real Codex CLI meets the gateway's limits on its WebSocket.

What Codex does, as these tests saw it (0.169.0, the pinned release, and 0.171.0, the newest):
- A 429 ``rate_limit_exceeded`` error frame is a retryable stream error to Codex: it drops the socket,
  opens a new one and sends the turn again, without repeating the generate:false warm-up that had been
  admitted. With a 3-second window the retry came about 3 s after the refusal, when the window allowed it
  (the frame says "Try again in 3s." as the service words it, and carries Retry-After in its headers).
  The user sees no error: the turn completes and ``codex exec`` exits 0.
- A spent budget (429, code ``insufficient_quota`` under type ``usage_limit_reached``) is not retried:
  Codex ends the turn with "You've hit your usage limit." and the gateway's words (which budget, when it
  resets) from ``x-codex-promo-message``, and exits 1, without a retry loop. Under type
  ``insufficient_quota`` it showed only its own "Quota exceeded. Check your plan and billing details.".
"""

import time
from decimal import Decimal

import pytest

from tests.codex_cli import codex_binary, run_codex
from tests.conftest import make_key, make_provider, request_logs, require

WINDOW = 3.0


@pytest.fixture(params=["pinned", "latest"])
def version(request: pytest.FixtureRequest) -> str:
    """The project's pinned Codex and the newest release (codex-latest) behave alike here."""
    require(
        codex_binary(request.param) is not None, f"the {request.param} Codex CLI is not installed (npm ci)"
    )
    return request.param


def test_a_rate_limit_frame_is_retried_by_codex_after_the_window(
    gateway, upstream, tmp_path, settings, version
):
    settings.SLUICE_RATE_WINDOW_SECONDS = WINDOW
    time.sleep(WINDOW - time.time() % WINDOW + 0.02)
    make_provider(upstream)
    key, raw = make_key(rpm=1)  # the warm-up takes this window's only request
    result = run_codex(
        gateway.url + "/v1", raw, "say hello", websockets=True, workdir=tmp_path, timeout=90, version=version
    )
    assert result.exit_code == 0, result.describe()
    assert result.final_message == "echo: say hello"
    assert result.error_messages == [], "a rate limit is retried quietly, not shown as a failure"
    rows = request_logs(3)
    assert [(r.client_transport, r.status, r.error_code) for r in rows] == [
        ("websocket", 200, ""),
        ("websocket", 429, "rate_limit_exceeded"),
        ("websocket", 200, ""),
    ]
    waited = (rows[2].created_at - rows[1].created_at).total_seconds()
    assert waited >= 0.5, f"Codex retried after {waited:.2f}s, before the window allowed it"
    assert upstream.http_requests == 0, "Codex stays on WebSocket"


def test_a_spent_budget_stops_codex_without_a_retry_loop(gateway, upstream, tmp_path, version):
    make_provider(upstream)
    key, raw = make_key(daily_budget=Decimal(0))
    result = run_codex(
        gateway.url + "/v1", raw, "say hello", websockets=True, workdir=tmp_path, timeout=90, version=version
    )
    assert result.exit_code != 0
    assert any("The daily budget of key 'team'" in m for m in result.error_messages), result.describe()
    time.sleep(0.5)
    rows = request_logs(1)
    assert 1 <= len(rows) <= 2 and {(r.status, r.error_code) for r in rows} == {(429, "insufficient_quota")}
    assert upstream.ws_connections == 0 and upstream.http_requests == 0
