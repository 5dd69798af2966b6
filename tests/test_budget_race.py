"""A budget holds under parallel turns: each turn reserves its estimated cost at admission and settles it
(the reservation given back, the real spend added) when it ends, whichever way it ends."""

import asyncio
import json
import math
import time
from decimal import Decimal

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from proxy.governance import limits
from proxy.models import ModelPrice, RequestLog, Team
from tests.conftest import make_key, make_provider, request_logs


@pytest.fixture(autouse=True)
def priced(transactional_db):
    """gpt-5.5 at its list price (a test's tables start empty, without the migration's prices)."""
    ModelPrice.objects.update_or_create(
        model="gpt-5.5",
        defaults={
            "input_per_million": Decimal("5"),
            "cached_input_per_million": Decimal("0.5"),
            "output_per_million": Decimal("30"),
        },
    )


def bearer(raw: str) -> dict[str, str]:
    return {"authorization": f"Bearer {raw}"}


def settled(scope: str) -> limits.Usage:
    """The scope's counters once every release reached the store (on Redis they travel after the turn)."""
    deadline = time.monotonic() + 10
    while True:
        usage = limits.usage(scope)
        done = usage.slots == 0 and usage.day == usage.month == logged_spend()
        if done or time.monotonic() > deadline:
            return usage
        time.sleep(0.05)


def logged_spend() -> int:
    return sum(math.ceil(r.cost * limits.MICRO) for r in RequestLog.objects.exclude(cost=None))


async def parallel_turns(url: str, raw: str, count: int, **fields) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def turn(i: int) -> int:
            body = {"model": "gpt-5.5", "input": f"turn {i}", **fields}
            response = await client.post(url + "/v1/responses", json=body, headers=bearer(raw))
            if response.status_code != 200:
                assert response.json()["error"]["code"] == "insufficient_quota", response.text
            return response.status_code

        return await asyncio.gather(*(turn(i) for i in range(count)))


@pytest.mark.parametrize("holder", ["key", "team"])
@pytest.mark.parametrize("fields", [{}, {"max_output_tokens": 4000}], ids=["default-ceiling", "max-output"])
def test_parallel_turns_against_a_small_daily_budget_are_not_all_admitted(gateway, upstream, holder, fields):
    """20 turns at once against USD 0.01 a day: each reserves more than the budget (4,000 output tokens of
    gpt-5.5 cost USD 0.12), so one is admitted while it runs; once it settles, its real spend is counted."""
    make_provider(upstream)
    upstream.head_delay = 2.0  # every admitted turn is still in flight while the others ask
    if holder == "team":
        team = Team.objects.create(name="small", daily_budget=Decimal("0.01"))
        key, raw = make_key(team=team)
        scope = f"t{team.pk}"
    else:
        key, raw = make_key(daily_budget=Decimal("0.01"))
        scope = f"k{key.pk}"
    statuses = asyncio.run(parallel_turns(gateway.url, raw, 20, **fields))
    assert statuses.count(200) == 1, statuses
    rows = request_logs(20)
    assert sorted(r.status for r in rows) == [200] + [429] * 19
    assert settled(scope).day == logged_spend() > 0, "the reservation was not settled to the real spend"
    upstream.head_delay = 0.0
    assert asyncio.run(parallel_turns(gateway.url, raw, 1, **fields)) == [200], "the budget is not spent"


def stream_and_leave(gateway, raw: str) -> None:
    body = {"model": "gpt-5.5", "input": "leave", "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, headers=bearer(raw), timeout=20) as r:
        assert r.status_code == 200
        next(r.iter_bytes())


def failed_upstream(gateway, raw: str) -> None:
    body = {"model": "gpt-5.5", "input": "fail"}
    response = httpx.post(gateway.url + "/v1/responses", json=body, headers=bearer(raw), timeout=20)
    assert response.status_code == 502, response.text


def websocket_turn(gateway, raw: str) -> None:
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    with ws_connect(url, additional_headers=bearer(raw)) as sock:
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "ws"}))
        while json.loads(sock.recv(timeout=10))["type"] not in ("response.completed", "error"):
            pass


@pytest.mark.parametrize(
    ("turn", "switch"),
    [(stream_and_leave, "stall"), (failed_upstream, "fail"), (websocket_turn, "")],
    ids=["client-leaves", "upstream-fails", "websocket"],
)
def test_a_reservation_is_settled_on_every_exit_path(gateway, upstream, turn, switch):
    make_provider(upstream)
    key, raw = make_key(daily_budget=Decimal("50"), monthly_budget=Decimal("500"))
    if switch == "stall":
        upstream.stall_after_events = 2
    elif switch == "fail":
        upstream.http_fail_status = 500
    turn(gateway, raw)
    request_logs(1)
    usage = settled(f"k{key.pk}")
    assert (usage.slots, usage.day, usage.month) == (0, logged_spend(), logged_spend())


def test_the_worst_case_is_the_budget_plus_one_reservation(gateway, upstream):
    """The README's bound: turns are admitted while spend plus reservations is below the budget, so at
    most ceil(budget / reservation) turns run at once, reserving less than the budget plus one more."""
    make_provider(upstream)
    upstream.head_delay = 2.0
    budget = Decimal("0.30")
    key, raw = make_key(daily_budget=budget)
    statuses = asyncio.run(parallel_turns(gateway.url, raw, 20, max_output_tokens=4000))
    # Each reserves 4,000 output tokens at USD 30 a million (0.12) and about 17 input tokens at 5.
    assert statuses.count(200) == math.ceil(budget / Decimal("0.120085")) == 3, statuses
    request_logs(20)
    assert settled(f"k{key.pk}").day == logged_spend() < budget * limits.MICRO
