"""Limits, budgets and model access over HTTP, through a running gateway and the OpenAI SDK."""

import json
import logging
import threading
import time
from decimal import Decimal

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_key, make_provider, request_logs, sdk
from tests.helpers import make_team, wait_until

WINDOW = 3.0


@pytest.fixture
def short_window(settings):
    """Rate windows of a few seconds, and a test that starts at the beginning of one."""
    settings.SLUICE_RATE_WINDOW_SECONDS = WINDOW
    time.sleep(WINDOW - time.time() % WINDOW + 0.02)
    return WINDOW


def bearer(raw: str) -> dict[str, str]:
    return {"authorization": f"Bearer {raw}"}


def in_flight(scope: str) -> int:
    from proxy.governance import limits

    return limits.usage(scope).slots


def test_sixth_request_is_refused_then_the_sdks_retry_succeeds(gateway, upstream, short_window):
    make_provider(upstream)
    key, raw = make_key(rpm=5)
    client = sdk(gateway, raw)
    for n in range(5):
        response = client.responses.with_raw_response.create(model="gpt-5.5", input=f"hi {n}")
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["x-ratelimit-remaining-requests"] == str(4 - n)
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-5.5", input="one too many")
    error = refused.value
    assert error.code == "rate_limit_exceeded" and error.status_code == 429
    retry_after = int(error.response.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert upstream.http_requests == 5, "a refused request never reaches the upstream"

    # The SDK honours Retry-After: its own retry lands in the next window.
    retrying = openai.OpenAI(base_url=gateway.url + "/v1", api_key=raw, max_retries=3, timeout=20)
    started = time.monotonic()
    answer = retrying.responses.create(model="gpt-5.5", input="patient")
    assert answer.output_text == "echo: patient"
    assert upstream.http_requests == 6
    rows = request_logs(8)
    refusals = [r for r in rows if r.status == 429]
    assert len(refusals) >= 1 and {(r.error_code, r.api_key_id) for r in refusals} == {
        ("rate_limit_exceeded", key.pk)
    }
    assert time.monotonic() - started < WINDOW + 5


def test_input_tokens_counts_against_the_request_rate_only(gateway, upstream, short_window):
    make_provider(upstream)
    key, raw = make_key(rpm=2, concurrency=0)  # no slot at all: only requests that hold none get through
    headers = {"Authorization": f"Bearer {raw}"}
    url = gateway.url + "/v1/responses"
    first = httpx.post(url + "/input_tokens", json={"model": "gpt-5.5", "input": "count me"}, headers=headers)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1"
    turn = httpx.post(url, json={"model": "gpt-5.5", "input": "a turn"}, headers=headers)
    assert turn.status_code == 429 and turn.json()["error"]["code"] == "rate_limit_exceeded"
    assert turn.headers["x-ratelimit-remaining-requests"] == "1", "a refused turn is not counted"
    assert "turns in flight" in turn.json()["error"]["message"]
    second = httpx.post(url + "/input_tokens", json={"model": "gpt-5.5", "input": "me too"}, headers=headers)
    assert second.status_code == 200
    third = httpx.post(url + "/input_tokens", json={"model": "gpt-5.5", "input": "and me"}, headers=headers)
    assert third.status_code == 429 and third.headers["Retry-After"]


def test_the_token_limit_counts_each_turns_input_and_output(gateway, upstream, settings):
    from proxy.governance import limits

    settings.SLUICE_RATE_WINDOW_SECONDS = 10**6  # one window for the whole test
    make_provider(upstream)
    key, raw = make_key(tpm=40)
    client = sdk(gateway, raw)
    spent = 0
    for _ in range(4):
        response = client.responses.with_raw_response.create(model="gpt-5.5", input="count my tokens")
        assert response.headers["x-ratelimit-limit-tokens"] == "40"
        assert response.headers["x-ratelimit-remaining-tokens"] == str(40 - spent)
        usage = response.parse().usage
        spent += usage.input_tokens + usage.output_tokens
        assert wait_until(lambda n=spent: limits.usage(f"k{key.pk}").tokens == n)  # counted at the end
        if spent >= 40:
            break
    assert 40 <= spent < 40 + usage.input_tokens + usage.output_tokens, "turns ran until the tokens passed"
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model="gpt-5.5", input="over the limit")
    assert refused.value.code == "rate_limit_exceeded" and "tokens per" in refused.value.message
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def _hold_stream(gateway, raw: str, started: threading.Event, release: threading.Event, results: list):
    """A streaming turn that reads its first event, then holds the connection open until told."""
    with httpx.Client(timeout=20) as client:
        with client.stream(
            "POST",
            gateway.url + "/v1/responses",
            json={"model": "gpt-5.5", "input": "slow", "stream": True},
            headers={"Authorization": f"Bearer {raw}"},
        ) as response:
            results.append(response.status_code)
            chunks = response.iter_raw()  # kept: a dropped iterator closes the connection
            next(chunks)
            started.set()
            release.wait(20)


def released_explicitly(caplog) -> bool:
    """No admission was left to the garbage collector's backstop (every exit path released its own), and
    every release went through."""
    failures = ("never released", "could not release")
    return not [r for r in caplog.records if any(f in r.getMessage() for f in failures)]


def test_concurrency_limit_and_every_faulted_turn_gives_its_slot_back(gateway, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="sluice.limits")
    make_provider(upstream)
    key, raw = make_key(concurrency=2)
    scope = f"k{key.pk}"
    upstream.event_delay = 0.3
    release = threading.Event()
    results: list[int] = []
    holders = []
    for _ in range(2):
        started = threading.Event()
        thread = threading.Thread(target=_hold_stream, args=(gateway, raw, started, release, results))
        thread.start()
        assert started.wait(10)
        holders.append(thread)
    assert in_flight(scope) == 2
    third = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "third"},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
    assert third.headers["Retry-After"] == "1"
    release.set()
    for thread in holders:
        thread.join(10)
    assert results == [200, 200]
    assert wait_until(lambda: in_flight(scope) == 0), "both held turns gave their slot back"

    # 50 faulted turns: clients that leave before the first byte or mid-stream, upstreams that drop.
    headers = {"Authorization": f"Bearer {raw}"}
    body = {"model": "gpt-5.5", "input": "fault", "stream": True}
    for n in range(50):
        kind = n % 3
        upstream.hang = kind == 0
        upstream.event_delay = 0.2 if kind == 1 else 0.0
        upstream.drop_after_events = 2 if kind == 2 else None
        with httpx.Client(timeout=httpx.Timeout(5, read=0.05 if kind == 0 else 5)) as client:
            try:
                with client.stream("POST", gateway.url + "/v1/responses", json=body, headers=headers) as r:
                    if kind == 1:
                        next(r.iter_raw())  # one event, then the client goes away mid-stream
                    else:
                        r.read()
            except (httpx.ReadTimeout, httpx.RemoteProtocolError):
                pass  # kind 0: the client gives up before the first byte
    upstream.hang, upstream.event_delay, upstream.drop_after_events = False, 0.0, None
    assert wait_until(lambda: in_flight(scope) == 0), f"{in_flight(scope)} slots leaked"
    assert released_explicitly(caplog)
    ok = sdk(gateway, raw).responses.create(model="gpt-5.5", input="after the faults")
    assert ok.output_text == "echo: after the faults"


def _price(model: str = "gpt-5.5", per_million: str = "1000") -> None:
    from proxy.models import ModelPrice

    ModelPrice.objects.update_or_create(
        model=model,
        defaults={
            "input_per_million": Decimal(per_million),
            "cached_input_per_million": Decimal(per_million),
            "output_per_million": Decimal(per_million),
        },
    )


def _spend_until_refused(client, limit: int = 20) -> tuple[int, openai.RateLimitError]:
    for n in range(limit):
        try:
            client.responses.create(model="gpt-5.5", input="spend a little")
        except openai.RateLimitError as error:
            return n, error
    raise AssertionError("the budget never refused a turn")


def test_daily_budget_stops_turns_once_spent(gateway, upstream):
    make_provider(upstream)
    _price()  # 1000 USD per million tokens: a cent per ten tokens
    key, raw = make_key(daily_budget=Decimal("0.05"))
    served, error = _spend_until_refused(sdk(gateway, raw))
    assert served >= 1
    assert error.code == "insufficient_quota" and error.status_code == 429
    assert "daily budget of key" in error.message and "resets at" in error.message
    assert error.response.headers["x-should-retry"] == "false"
    rows = request_logs(served + 1)
    spent = sum(r.cost for r in rows if r.status == 200)
    before_last = spent - [r.cost for r in rows if r.status == 200][-1]
    assert before_last < Decimal("0.05") <= spent, "turns run until the spend passes the budget, then stop"
    assert rows[-1].status == 429 and rows[-1].error_code == "insufficient_quota"


def test_a_team_budget_stops_every_key_of_the_team(gateway, upstream):
    make_provider(upstream)
    _price()
    team = make_team(daily_budget=Decimal("0.05"))
    first, raw_first = make_key("first", team=team)
    second, raw_second = make_key("second", username="bob", team=team)
    outsider = make_key("outsider", username="carol")[1]
    _spend_until_refused(sdk(gateway, raw_first))
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(gateway, raw_second).responses.create(model="gpt-5.5", input="my turn")
    assert refused.value.code == "insufficient_quota"
    assert "daily budget of team 'research'" in refused.value.message
    assert sdk(gateway, outsider).responses.create(model="gpt-5.5", input="not my team").output_text
    rows = [r for r in request_logs(6) if r.status == 429]
    assert {(r.api_key_id, r.team_id) for r in rows} == {(first.pk, team.pk), (second.pk, team.pk)}


def test_model_allow_list_and_models_listing(gateway, upstream):
    make_provider(upstream)
    team = make_team(allowed_models=["gpt-5-mini", "gpt-5.5"])
    key, raw = make_key(allowed_models=["gpt-5-mini", "gpt-5-nano"], team=team)
    client = sdk(gateway, raw)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.responses.create(model="gpt-5.5", input="not for me")
    # On the wire the service's code for a model one may not use (Codex stops on it); the row says why.
    assert refused.value.code == "model_not_found" and refused.value.status_code == 403
    assert refused.value.param == "model"
    assert "GET /v1/models" in refused.value.message  # where to find the models the key may use
    assert client.responses.create(model="gpt-5-mini", input="fine").output_text == "echo: fine"
    assert [m.id for m in client.models.list()] == ["gpt-5-mini"]
    assert client.models.retrieve("gpt-5-mini").id == "gpt-5-mini"
    with pytest.raises(openai.NotFoundError):  # allowed by the team, not by the key
        client.models.retrieve("gpt-5.5")
    (row,) = [r for r in request_logs(3) if r.status == 403]
    assert (row.error_code, row.api_key_id, row.team_id, row.requested_model) == (
        "model_not_allowed",
        key.pk,
        team.pk,
        "gpt-5.5",
    )
    assert [r.body["model"] for r in upstream.requests if r.method == "POST"] == ["gpt-5-mini"]


def test_a_disabled_team_refuses_its_keys(gateway, upstream):
    make_provider(upstream)
    team = make_team(enabled=False)
    key, raw = make_key(team=team)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(gateway, raw).responses.create(model="gpt-5.5", input="hello")
    assert refused.value.code == "team_disabled" and "'research'" in refused.value.message
    with pytest.raises(InvalidStatus) as upgrade:  # a WebSocket is refused at the upgrade, before any turn
        ws_connect(gateway.url.replace("http", "ws") + "/v1/responses", additional_headers=bearer(raw))
    assert upgrade.value.response.status_code == 403
    error = json.loads(upgrade.value.response.body)["error"]
    assert error["code"] == "team_disabled" and "'research'" in error["message"]
    team.enabled = True
    team.save()
    assert wait_until(lambda: _serves(gateway, raw))


def _serves(gateway, raw: str) -> bool:
    try:
        return bool(sdk(gateway, raw).responses.create(model="gpt-5.5", input="again").output_text)
    except openai.PermissionDeniedError:
        return False


def test_unknown_price_is_logged_as_no_cost(gateway, upstream, api_key):
    from proxy.models import ModelPrice

    make_provider(upstream)
    ModelPrice.objects.filter(model__startswith="gpt-5").delete()
    sdk(gateway, api_key).responses.create(model="gpt-5.5", input="free?")
    (row,) = request_logs(1)
    assert row.status == 200 and row.input_tokens > 0 and row.cost is None


@pytest.mark.parametrize(
    ("key_budget", "team_budget", "refusal"),
    [
        ({"daily_budget": Decimal("1")}, {"monthly_budget": Decimal("10")}, "daily budget of key"),
        ({}, {"monthly_budget": Decimal("1")}, "monthly budget of team 'research'"),
    ],
    ids=["key-daily", "team-monthly"],
)
def test_spend_already_in_the_request_log_counts_after_a_restart(
    gateway, upstream, key_budget, team_budget, refusal
):
    """The embedded default keeps its counters in memory: a fresh process starts them from the log."""
    from django.utils import timezone

    from proxy.models import RequestLog

    make_provider(upstream)
    team = make_team(**team_budget)
    key, raw = make_key(team=team, **key_budget)
    RequestLog.objects.create(api_key=key, team=team, cost=Decimal("0.60"), created_at=timezone.now())
    RequestLog.objects.create(api_key=key, team=team, cost=Decimal("0.50"), created_at=timezone.now())
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(gateway, raw).responses.create(model="gpt-5.5", input="already spent")
    assert refused.value.code == "insufficient_quota" and refusal in refused.value.message
    assert upstream.http_requests == 0
