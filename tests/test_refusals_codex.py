"""Each refusal as the real Codex CLI meets it, with Codex's own retry settings (as a developer has them):
it stops at once and says why, or it waits as told and the turn succeeds.

Codex retries what it does not know to be final five times on the socket and five more over HTTP (about
fifteen seconds, thirteen request-log rows for one prompt): every case below checks the exit, the words
shown, the rows and the time. Over WebSocket Codex sends a warm-up (``generate: false``) before the turn,
so a refusal there is two attempts and two rows; over HTTP one. docs/protocol.md ("Refusals") has the
shapes and what Codex and the SDK do with them.
"""

import datetime as dt
import shutil
import time
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from tests.codex_cli import codex_binary, codex_tui, run_codex
from tests.conftest import make_key, make_provider, request_logs, require, sdk

# Far below the thirteen attempts and fifteen seconds of a retry loop, far above one refused attempt.
QUICK = 8.0

CASES = [
    pytest.param("pinned", True, id="pinned-websocket"),
    pytest.param("pinned", False, id="pinned-http"),
    pytest.param("latest", True, id="latest-websocket"),
]


def codex(gateway, raw: str, tmp_path, version: str, websockets: bool, prompt: str = "say hello"):
    require(codex_binary(version) is not None, f"the {version} Codex CLI is not installed (npm ci)")
    return run_codex(
        gateway.url + "/v1",
        raw,
        prompt,
        websockets=websockets,
        workdir=tmp_path,
        timeout=90,
        version=version,
        default_retries=True,
    )


def make_team(name: str = "research", **fields):
    from proxy.models import Team

    return Team.objects.create(name=name, **fields)


def refused_rows(websockets: bool) -> list:
    """The rows of one refused prompt, once the writer has stored them all (a retry loop would add more)."""
    rows = request_logs(2 if websockets else 1, timeout=3)
    time.sleep(0.3)
    return request_logs(len(rows) + 1, timeout=0.3)


def assert_stopped_at_once(result, websockets: bool, code: str) -> list:
    assert result.exit_code == 1, result.describe()
    assert result.duration < QUICK, f"Codex retried: {result.describe()}"
    assert not any("Reconnecting" in m for m in result.error_messages), result.describe()
    rows = refused_rows(websockets)
    assert [r.error_code for r in rows] == [code] * (2 if websockets else 1), [
        (r.status, r.error_code) for r in rows
    ]
    return rows


@pytest.mark.parametrize(("version", "websockets"), CASES)
def test_a_model_the_team_does_not_allow_stops_codex_naming_it_and_the_allowed_ones(
    gateway, upstream, tmp_path, version, websockets
):
    make_provider(upstream)
    team = make_team(allowed_models=["gpt-5.4-mini", "gpt-5.5-pro"])
    key, raw = make_key(name="laptop", team=team)
    result = codex(gateway, raw, tmp_path, version, websockets)
    rows = assert_stopped_at_once(result, websockets, "model_not_allowed")
    shown = result.error_messages[-1]
    assert "The model 'gpt-5.5' is not allowed for team 'research' of API key 'laptop'" in shown, shown
    assert "may use: gpt-5.4-mini, gpt-5.5-pro" in shown
    assert {(r.status, r.api_key_id, r.team_id, r.requested_model) for r in rows} == {
        (403, key.pk, team.pk, "gpt-5.5")
    }
    assert upstream.ws_connections == 0 and upstream.http_requests == 0


def test_a_model_the_key_does_not_allow_is_refused_in_the_keys_name(gateway, upstream, tmp_path):
    make_provider(upstream)
    key, raw = make_key(name="ci-bot", allowed_models=["gpt-5.4-mini"])
    result = codex(gateway, raw, tmp_path, "pinned", False)
    assert_stopped_at_once(result, False, "model_not_allowed")
    assert (
        "is not allowed for API key 'ci-bot'. API key 'ci-bot' may use: gpt-5.4-mini"
        in (result.error_messages[-1])
    )


@pytest.mark.parametrize(("version", "websockets"), CASES)
def test_a_spent_team_budget_stops_codex_saying_which_and_when_it_resets(
    gateway, upstream, tmp_path, version, websockets
):
    make_provider(upstream)
    team = make_team(daily_budget=Decimal(0))
    key, raw = make_key(team=team)
    result = codex(gateway, raw, tmp_path, version, websockets)
    rows = assert_stopped_at_once(result, websockets, "insufficient_quota")
    shown = result.error_messages[-1]
    midnight = (timezone.now() + dt.timedelta(days=1)).strftime("%Y-%m-%d 00:00 UTC")
    assert "The daily budget of team 'research' (USD 0.00) is spent" in shown, shown
    assert f"it resets at {midnight}, in " in shown and " h" in shown.split(midnight)[1]
    assert "Quota exceeded. Check your plan" not in shown, "Codex's own words say nothing of which budget"
    assert {(r.status, r.team_id) for r in rows} == {(429, team.pk)}


def test_a_spent_monthly_key_budget_names_the_key(gateway, upstream, tmp_path):
    make_provider(upstream)
    key, raw = make_key(name="laptop", monthly_budget=Decimal(0))
    result = codex(gateway, raw, tmp_path, "pinned", False)
    assert_stopped_at_once(result, False, "insufficient_quota")
    assert (
        "The monthly budget of key 'laptop' (USD 0.00) is spent; it resets at " in result.error_messages[-1]
    )


def test_a_rate_limited_http_turn_waits_for_retry_after_and_succeeds(gateway, upstream, tmp_path, settings):
    """The window's only request is taken before Codex asks: Codex waits as Retry-After says, its retry
    lands in the next window and the turn completes. The window is long enough for Codex to start and ask
    within it on a busy machine."""
    window = 8.0
    settings.SLUICE_RATE_WINDOW_SECONDS = window
    time.sleep(window - time.time() % window + 0.05)
    make_provider(upstream)
    key, raw = make_key(rpm=1)
    assert sdk(gateway, raw).responses.create(model="gpt-5.5", input="first").output_text == "echo: first"
    result = codex(gateway, raw, tmp_path, "pinned", False)
    assert result.exit_code == 0, result.describe()
    assert result.final_message == "echo: say hello"
    rows = request_logs(3)
    codes = [(r.status, r.error_code) for r in rows]
    assert codes[0] == (200, "") and codes[-1] == (200, "") and (429, "rate_limit_exceeded") in codes, codes
    refused = next(r for r in rows if r.status == 429)
    waited = (rows[-1].created_at - refused.created_at).total_seconds()
    assert waited >= 0.5, f"Codex came back after {waited:.2f}s, before the window allowed it"
    assert len(rows) <= 4, codes  # at most one retry refused before the window turned


@pytest.mark.parametrize(("version", "websockets"), CASES)
def test_a_revoked_key_stops_codex_saying_so(gateway, upstream, tmp_path, version, websockets):
    make_provider(upstream)
    key, raw = make_key(name="laptop", enabled=False)
    result = codex(gateway, raw, tmp_path, version, websockets)
    rows = assert_stopped_at_once(result, websockets, "invalid_api_key")
    assert "The API key 'laptop' was revoked" in result.error_messages[-1], result.describe()
    assert {r.status for r in rows} == {401}, "the row keeps the refusal's own status"


def test_an_expired_key_stops_codex_saying_when_it_expired(gateway, upstream, tmp_path):
    make_provider(upstream)
    expired = timezone.now() - dt.timedelta(hours=1)
    key, raw = make_key(name="laptop", expires_at=expired)
    result = codex(gateway, raw, tmp_path, "pinned", True)
    assert_stopped_at_once(result, True, "invalid_api_key")
    when = expired.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert f"The API key 'laptop' expired at {when}" in result.error_messages[-1], result.describe()


def test_a_deactivated_users_key_stops_codex_saying_so(gateway, upstream, tmp_path):
    make_provider(upstream)
    key, raw = make_key(name="laptop", username="leaver")
    key.owner.is_active = False
    key.owner.save()
    result = codex(gateway, raw, tmp_path, "pinned", False)
    assert_stopped_at_once(result, False, "invalid_api_key")
    assert "belongs to a deactivated user" in result.error_messages[-1], result.describe()


def test_a_disabled_team_stops_codex_at_once(gateway, upstream, tmp_path):
    make_provider(upstream)
    key, raw = make_key(team=make_team(enabled=False))
    result = codex(gateway, raw, tmp_path, "pinned", True)
    assert result.exit_code == 1 and result.duration < QUICK, result.describe()
    assert "The team 'research' of this API key is disabled." in result.error_messages[-1]
    assert {(r.status, r.error_code) for r in refused_rows(True)} == {(403, "team_disabled")}


def test_the_sdk_is_told_the_same_in_its_own_statuses(gateway, upstream):
    """Only Codex gets key refusals as 400: the SDK sees 401 and 403 as before, and its retries do not
    change (none for a budget, which says x-should-retry: false)."""
    make_provider(upstream)
    key, raw = make_key(name="laptop", enabled=False)
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(gateway, raw).responses.create(model="gpt-5.5", input="hi")
    assert "The API key 'laptop' was revoked" in refused.value.message
    team = make_team(daily_budget=Decimal(0))
    key, raw = make_key(name="other", team=team)
    retrying = openai.OpenAI(base_url=gateway.url + "/v1", api_key=raw, max_retries=2, timeout=20)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as spent:
        retrying.responses.create(model="gpt-5.5", input="hi")
    assert time.monotonic() - started < 2, "the SDK does not retry a spent budget"
    assert (
        spent.value.code == "insufficient_quota" and "daily budget of team 'research'" in spent.value.message
    )
    assert [r.error_code for r in request_logs(2)] == ["invalid_api_key", "insufficient_quota"]


def tui(gateway, raw: str, tmp_path):
    require(codex_binary("pinned") is not None, "the pinned Codex CLI is not installed (npm ci)")
    require(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")
    return codex_tui(gateway.url + "/v1", raw, workdir=tmp_path)


def test_the_interactive_session_lives_within_the_limits_the_readme_gives_a_team(gateway, upstream, tmp_path):
    """The TUI opens two sockets (the turn, and the thread's title beside it), each with its warm-up: the
    README's example team and key (600 requests a minute, USD 50 a day, two models, four turns in flight)
    refuse none of it."""
    make_provider(upstream)
    team = make_team(rpm=600, daily_budget=Decimal(50), allowed_models=["gpt-5.5", "gpt-5.4-mini"])
    key, raw = make_key(team=team, concurrency=4)
    with tui(gateway, raw, tmp_path) as session:
        session.type("say hello")
        screen = session.wait_for("echo: say hello")
        time.sleep(1)
    rows = request_logs(4)
    assert [(r.status, r.error_code) for r in rows] == [(200, "")] * len(rows), screen
    assert len(rows) >= 3 and upstream.ws_connections >= 2, "the turn and the title, on sockets of their own"


def test_the_tui_shows_which_budget_is_spent_and_stops(gateway, upstream, tmp_path):
    make_provider(upstream)
    key, raw = make_key(team=make_team(daily_budget=Decimal(0)))
    with tui(gateway, raw, tmp_path) as session:
        started = time.monotonic()
        session.type("say hello")
        screen = session.wait_for("is spent; it resets at", timeout=QUICK)
        elapsed = time.monotonic() - started
        time.sleep(1)
        assert "Reconnecting" not in session.screen()
    assert "The daily budget of team 'research' (USD 0.00)" in " ".join(screen.split()), screen
    assert elapsed < QUICK
    rows = request_logs(5, timeout=1)
    # One attempt each, none retried: the warm-up the TUI sends at start, then the turn, and the thread's
    # title beside it with its own warm-up.
    assert {(r.status, r.error_code) for r in rows} == {(429, "insufficient_quota")} and len(rows) <= 4
