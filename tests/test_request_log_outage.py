"""The request log survives a database that refuses writes for a while: rows wait, bounded, and are
written once it answers; /readyz says the node is degraded meanwhile."""

import sqlite3
import threading
import time

import httpx
import pytest
from django.db import connection
from prometheus_client import REGISTRY

from proxy.common.record import TurnRecord
from proxy.models import RequestLog
from proxy.usage import logwriter
from tests.conftest import make_key, make_provider

# The gateway's SQLite connections wait this long on a lock before the write fails (config/settings.py).
BUSY_TIMEOUT = 20


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("sluice_request_log_dropped_total", {"reason": reason}) or 0.0


def turns(gateway, raw: str, count: int, tag: str) -> None:
    headers = {"authorization": f"Bearer {raw}"}
    for i in range(count):
        body = {"model": "gpt-5.5", "input": f"{tag}{i}"}
        response = httpx.post(gateway.url + "/v1/responses", json=body, headers=headers, timeout=20)
        assert response.status_code == 200, response.text[:300]


def readyz(gateway) -> tuple[int, dict]:
    response = httpx.get(gateway.url + "/readyz", timeout=10)
    return response.status_code, response.json()


@pytest.mark.skipif(connection.vendor != "sqlite", reason="locks the SQLite file from another connection")
def test_rows_wait_out_a_locked_database_and_none_is_lost(gateway, upstream, api_key, settings):
    make_provider(upstream)
    _, raw = make_key("locked")
    settings.SLUICE_LOG_QUEUE_ROWS = 40
    turns(gateway, raw, 2, "before")
    assert logwriter.flush(10)
    failed_before, full_before = dropped("write_failed"), dropped("queue_full")

    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=10, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        turns(gateway, raw, 10, "locked")  # their batch waits on the lock until the write fails
        deadline = time.monotonic() + BUSY_TIMEOUT + 10
        while (state := readyz(gateway))[1]["status"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.5)
        status, body = state
        assert status == 200 and "request_log" in body["degraded"], body
        turns(gateway, raw, 10, "waiting")
        for i in range(30):  # more than the queue may hold: 40 rows at most, these 10 and 20 of the 30
            logwriter.submit(TurnRecord(key_id=None, client_transport="http", requested_model=f"overflow{i}"))
    finally:
        releaser = threading.Timer(1.0, locker.rollback)
        releaser.start()
        releaser.join()
        locker.close()
    assert logwriter.flush(BUSY_TIMEOUT + 10), "the rows were not written once the lock was gone"
    models = list(RequestLog.objects.values_list("requested_model", flat=True))
    keyed = RequestLog.objects.exclude(api_key=None)
    assert keyed.count() == 22, sorted(models)
    assert dropped("write_failed") == failed_before, "rows were dropped for the lock"
    assert dropped("queue_full") - full_before == 10
    assert sum(m.startswith("overflow") for m in models) == 20
    assert readyz(gateway) == (200, {"status": "ok", "down": {}, "degraded": {}})
