"""Usage an upstream gets wrong: negative counts are the upstream's fault, counted as zero, and the turn's
row is kept."""

import json
import logging

import httpx
import pytest
from websockets.sync.client import connect

from proxy.governance import limits
from tests.conftest import make_key, make_provider, request_logs

NEGATIVE = {
    "input_tokens": -6_000_000,
    "output_tokens": -5,
    "input_tokens_details": {"cached_tokens": -7},
    "output_tokens_details": {"reasoning_tokens": -2},
}


def http_turn(gateway, raw: str, stream: bool) -> None:
    body = {"model": "gpt-5.5", "input": "hi", "stream": stream}
    response = httpx.post(
        gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {raw}"}, timeout=20
    )
    assert response.status_code == 200, response.text[:300]


def ws_turn(gateway, raw: str, stream: bool) -> None:
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    with connect(url, additional_headers={"authorization": f"Bearer {raw}"}) as sock:
        sock.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}))
        while json.loads(sock.recv(timeout=10))["type"] != "response.completed":
            pass


@pytest.mark.parametrize(
    ("turn", "stream"), [(http_turn, False), (http_turn, True), (ws_turn, True)], ids=["json", "sse", "ws"]
)
def test_negative_usage_is_counted_as_zero_and_the_row_kept(gateway, upstream, caplog, turn, stream):
    make_provider(upstream)
    key, raw = make_key(tpm=1_000_000, daily_budget=100)
    upstream.usage_override = NEGATIVE
    caplog.set_level(logging.WARNING)
    turn(gateway, raw, stream)
    rows = request_logs(1)
    assert len(rows) == 1, "the turn's row was lost"
    row = rows[0]
    assert (row.status, row.input_tokens, row.output_tokens) == (200, 0, 0)
    assert (row.cached_input_tokens, row.reasoning_tokens) == (0, 0)
    assert row.cost is None or row.cost >= 0
    counted = limits.usage(f"k{key.pk}")
    assert counted.tokens >= 0 and counted.day >= 0 and counted.month >= 0
    faults = [r for r in caplog.records if "negative usage" in r.getMessage()]
    assert len(faults) == 1, [r.getMessage() for r in caplog.records]
    assert upstream.name in faults[0].getMessage() or "gpt-5.5" in faults[0].getMessage()
