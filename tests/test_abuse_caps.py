"""Floods and invalid requests are bounded: anonymous refusals across all addresses, and a rate-limited
key's invalid requests."""

import json

import httpx
from websockets.sync.client import connect

from proxy.usage import logwriter
from tests.conftest import make_key, make_provider, request_logs


def test_anonymous_refusals_from_many_addresses_are_capped_together(gateway):
    logwriter._anonymous.clear()
    count = logwriter.ANONYMOUS_ROWS_PER_MINUTE_ALL + 100
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for i in range(count):
            address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
            response = client.get("/v1/models", headers={"x-forwarded-for": address})
            assert response.status_code == 401
    rows = request_logs(count, timeout=3)
    logwriter._anonymous.clear()
    assert len(rows) == logwriter.ANONYMOUS_ROWS_PER_MINUTE_ALL
    assert len({r.error_code for r in rows}) == 1


def test_invalid_requests_of_a_rate_limited_key_count_against_its_rate(gateway, upstream, settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 3600  # one window for the whole test
    make_provider(upstream)
    key, raw = make_key(rpm=3)
    headers = {"authorization": f"Bearer {raw}", "content-type": "application/json"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=20) as client:
        invalid = [
            client.post("/v1/responses", content=b"{not json").status_code,
            client.post("/v1/responses", json={"input": "no model"}).status_code,
            client.get("/v1/responses/a.b").status_code,
            client.post("/v1/responses", content=b"[]").status_code,
            client.put("/v1/responses", json={}).status_code,
        ]
        valid = client.post("/v1/responses", json={"model": "gpt-5.5", "input": "hi"})
    assert invalid == [400, 400, 400, 429, 429], invalid
    assert valid.status_code == 429 and valid.json()["error"]["code"] == "rate_limit_exceeded"
    assert upstream.http_requests == 0
    rows = request_logs(6)
    assert [r.status for r in rows] == [400, 400, 400, 429, 429, 429]
    assert {r.api_key_id for r in rows} == {key.pk}


def test_invalid_websocket_turns_of_a_rate_limited_key_count_against_its_rate(gateway, upstream, settings):
    settings.SLUICE_RATE_WINDOW_SECONDS = 3600
    make_provider(upstream)
    key, raw = make_key(rpm=2)
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    codes = []
    with connect(url, additional_headers={"authorization": f"Bearer {raw}"}) as sock:
        for frame in ({"type": "response.create"}, {"type": "response.create", "model": 5}, {}, {}):
            sock.send(json.dumps(frame))
            event = json.loads(sock.recv(timeout=10))
            codes.append((event.get("status"), event["error"]["code"]))
    assert codes == [
        (400, "missing_required_parameter"),
        (400, codes[1][1]),
        (429, "rate_limit_exceeded"),
        (429, "rate_limit_exceeded"),
    ], codes
    assert upstream.ws_connections == 0 and upstream.http_requests == 0
    assert [r.status for r in request_logs(4)] == [400, 400, 429, 429]
