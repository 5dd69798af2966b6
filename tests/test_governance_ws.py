"""Limits on every response.create of an open WebSocket, and on the sockets themselves."""

import json
import logging
import time
from decimal import Decimal

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import make_key, make_provider, request_logs, sdk, sdk_turn
from tests.helpers import make_team, wait_until
from tests.test_governance_http import (
    WINDOW,
    in_flight,
    released_explicitly,
    short_window,
)

__all__ = ["short_window"]  # a fixture, used by name


def socket_url(gateway) -> str:
    return gateway.url.replace("http", "ws") + "/v1/responses"


def open_sockets(scope: str) -> int:
    from proxy.governance import limits

    return limits.open_sockets(scope)


def test_fourth_turn_on_one_socket_is_refused_and_the_socket_serves_after_the_window(
    gateway, upstream, short_window
):
    make_provider(upstream)
    key, raw = make_key(rpm=3)
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        previous = None
        for word in ("one", "two", "three"):
            extra = {"previous_response_id": previous} if previous else {}
            events = sdk_turn(conn, model="gpt-5.5", store=False, input=word, **extra)
            assert events[-1].type == "response.completed"
            previous = events[-1].response.id
        refused = sdk_turn(conn, model="gpt-5.5", store=False, input="four", previous_response_id=previous)
        assert [e.type for e in refused] == ["error"]
        frame = refused[0].model_dump()
        assert frame["status"] == 429 and frame["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(frame["headers"]["Retry-After"]) <= WINDOW
        time.sleep(int(frame["headers"]["Retry-After"]))
        # Same socket, next window; the refusal did not cost the connection its cached response.
        events = sdk_turn(conn, model="gpt-5.5", store=False, input="five", previous_response_id=previous)
        assert events[-1].type == "response.completed"
    frames = [r.body for r in upstream.requests if r.transport == "websocket"]
    assert [f["input"] for f in frames] == ["one", "two", "three", "five"]
    rows = request_logs(5)
    assert [(r.status, r.error_code) for r in rows].count((429, "rate_limit_exceeded")) == 1
    assert {r.client_transport for r in rows} == {"websocket"}


def test_model_allow_list_over_websocket(gateway, upstream):
    make_provider(upstream)
    team = make_team()
    key, raw = make_key(allowed_models=["gpt-5-mini"], team=team)
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        refused = sdk_turn(conn, model="gpt-5.5", input="no")
        frame = refused[-1].model_dump()
        # The service's code for a model one may not use (Codex stops on it); the log counts it as refused.
        assert (frame["status"], frame["error"]["code"]) == (403, "model_not_found")
        assert sdk_turn(conn, model="gpt-5-mini", input="yes")[-1].type == "response.completed"
    (row,) = [r for r in request_logs(2) if r.status == 403]
    assert (row.api_key_id, row.team_id, row.error_code) == (key.pk, team.pk, "model_not_allowed")


def test_open_sockets_limit_refuses_the_upgrade_with_429_and_frees_on_disconnect(gateway, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="sluice.limits")
    make_provider(upstream)
    key, raw = make_key(sockets=1)
    scope = f"k{key.pk}"
    headers = {"authorization": f"Bearer {raw}"}
    with ws_connect(socket_url(gateway), additional_headers=headers) as first:
        assert open_sockets(scope) == 1
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(socket_url(gateway), additional_headers=headers)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "1"
        body = json.loads(refused.value.response.body)
        assert (
            body["error"]["code"] == "rate_limit_exceeded"
            and "WebSocket connections" in body["error"]["message"]
        )
        first.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "still here"}))
        while '"response.completed"' not in first.recv(timeout=10):
            pass
    assert wait_until(lambda: open_sockets(scope) == 0)
    assert released_explicitly(caplog)
    from proxy.governance import limits

    assert limits.usage(scope).day == 0, "a socket's release adds no spend (the key has no budget)"
    with ws_connect(socket_url(gateway), additional_headers=headers):
        pass
    rows = [r for r in request_logs(2) if r.status == 429]
    assert [(r.endpoint, r.api_key_id, r.error_code) for r in rows] == [
        ("responses", key.pk, "rate_limit_exceeded")
    ]


def test_turns_in_flight_across_sockets_and_released_when_the_client_drops(gateway, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="sluice.limits")
    make_provider(upstream)
    key, raw = make_key(concurrency=1)
    scope = f"k{key.pk}"
    headers = {"authorization": f"Bearer {raw}"}
    upstream.event_delay = 0.2
    with ws_connect(socket_url(gateway), additional_headers=headers) as busy:
        busy.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "long"}))
        while "output_text.delta" not in busy.recv(timeout=10):
            pass
        with ws_connect(socket_url(gateway), additional_headers=headers) as other:
            other.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "me too"}))
            frame = json.loads(other.recv(timeout=10))
            assert (frame["type"], frame["status"], frame["error"]["code"]) == (
                "error",
                429,
                "rate_limit_exceeded",
            )
        assert in_flight(scope) == 1
    # The busy client left mid-turn: its slot is given back, and the upstream socket closed.
    assert wait_until(lambda: in_flight(scope) == 0)
    assert released_explicitly(caplog)
    upstream.event_delay = 0.0
    with ws_connect(socket_url(gateway), additional_headers=headers) as again:
        again.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "now"}))
        while '"response.completed"' not in again.recv(timeout=10):
            pass


def test_faulted_websocket_turns_leave_nothing_in_flight(gateway, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="sluice.limits")
    make_provider(upstream)
    key, raw = make_key(concurrency=3, sockets=5)
    scope = f"k{key.pk}"
    headers = {"authorization": f"Bearer {raw}"}
    for n in range(50):
        upstream.drop_after_events = 2 if n % 2 else None
        upstream.event_delay = 0.0 if n % 2 else 0.05
        with ws_connect(socket_url(gateway), additional_headers=headers) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": f"fault {n}"}))
            first = json.loads(ws.recv(timeout=10))
            assert first["type"] != "error" or first["status"] != 429, first
            if n % 2:  # the upstream drops mid-turn: the client gets an error frame
                while json.loads(ws.recv(timeout=10))["type"] not in ("error", "response.completed"):
                    pass
            # else: the client leaves after the first event
    upstream.drop_after_events, upstream.event_delay = None, 0.0
    assert wait_until(lambda: in_flight(scope) == 0 and open_sockets(scope) == 0), (
        in_flight(scope),
        open_sockets(scope),
    )
    assert released_explicitly(caplog)


def test_back_to_back_turns_are_not_refused_for_the_slot_just_given_back(gateway, upstream):
    make_provider(upstream)
    key, raw = make_key(concurrency=1)
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        for n in range(20):
            events = sdk_turn(conn, model="gpt-5.5", input=f"turn {n}")
            assert events[-1].type == "response.completed", events[-1]


def test_a_budget_spent_on_an_open_socket_refuses_its_next_turn(gateway, upstream):
    from tests.test_governance_http import _price

    make_provider(upstream)
    _price()
    key, raw = make_key(daily_budget=Decimal("0.05"))
    with sdk(gateway, raw).responses.connect(max_retries=0) as conn:
        for n in range(20):
            last = sdk_turn(conn, model="gpt-5.5", input=f"spend {n}")[-1]
            if last.type == "error":
                break
        frame = last.model_dump()
        assert (frame["status"], frame["error"]["code"]) == (429, "insufficient_quota")
        assert "daily budget of key" in frame["error"]["message"] and n >= 1
    rows = request_logs(n + 1)
    spent = sum(r.cost for r in rows if r.status == 200)
    assert spent >= Decimal("0.05") > spent - [r.cost for r in rows if r.status == 200][-1]
