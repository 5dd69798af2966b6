"""Client strings that cannot be stored as they are, and a writer that keeps every row it can."""

import json

import httpx
import pytest
from websockets.sync.client import connect

from proxy.common.record import TurnRecord
from proxy.usage import logwriter
from tests.conftest import make_key, make_provider, request_logs

# JSON allows escaped lone surrogates; UTF-8 (SQLite, PostgreSQL, Redis keys) does not.
BAD = "\\udc80"


def test_lone_surrogates_and_nul_from_clients_are_stored_and_cost_no_other_row(gateway, upstream, api_key):
    make_provider(upstream)
    url = gateway.url + "/v1/responses"
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    bad_http = (
        '{"model": "gpt-5.5-x' + BAD + '", "input": "hi", "prompt_cache_key": "s' + BAD + '\\u0000"}'
    ).encode()
    for body in (b'{"model": "gpt-5.5", "input": "good"}', bad_http, b'{"model": "gpt-5.5", "input": "ok"}'):
        response = httpx.post(url, content=body, headers=headers, timeout=20)
        assert response.status_code == 200, response.text[:300]
    ws_url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    frame = '{"type": "response.create", "model": "gpt-5.5' + BAD + '", "prompt_cache_key": "' + BAD + '"}'
    headers = {"authorization": f"Bearer {api_key}", "session-id": "é"}
    with connect(ws_url, additional_headers=headers) as sock:
        sock.send(frame)
        while json.loads(sock.recv(timeout=10))["type"] not in ("response.completed", "error"):
            pass
    rows = request_logs(4)
    assert len(rows) == 4
    assert [r.status for r in rows] == [200, 200, 200, 200]
    assert rows[1].requested_model.startswith("gpt-5.5-x") and "\ufffd" in rows[1].requested_model
    assert "\x00" not in rows[1].session_id and rows[1].session_id.startswith("s")


@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_is_dropped_alone(caplog):
    key, _ = make_key()
    logwriter.flush(5)
    good = [TurnRecord(key_id=key.pk, client_transport="http", requested_model=f"m{i}") for i in range(5)]
    bad = TurnRecord(key_id=key.pk, client_transport="http", requested_model="bad", status=2**70)
    for record in (*good[:2], bad, *good[2:]):
        logwriter.submit(record)
    rows = request_logs(5)
    assert sorted(r.requested_model for r in rows) == [f"m{i}" for i in range(5)]
    assert logwriter.flush(5)
    assert sum("dropped a request log row" in r.getMessage() for r in caplog.records) == 1
