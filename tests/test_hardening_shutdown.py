"""SIGTERM on a real ``manage.py serve``: turns in flight finish and every row reaches the database."""

import concurrent.futures
import json

import httpx
import pytest

from tests.conftest import make_key, make_provider
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.django_db(transaction=True)


def test_sigterm_after_requests_loses_no_row(upstream):
    from proxy.models import RequestLog

    make_provider(upstream)
    _, raw = make_key()
    headers = {"authorization": f"Bearer {raw}"}
    # A batch time far longer than the test: without a flush at shutdown no row would be written.
    with ServeProcess(SLUICE_LOG_BATCH_SECONDS="60") as server:
        with httpx.Client(base_url=server.url, headers=headers, timeout=20) as client:
            for i in range(50):
                response = client.post("/v1/responses", json={"model": "gpt-5.5", "input": f"n{i}"})
                assert response.status_code == 200
        upstream.event_delay = 0.1  # about a second for the turn in flight at SIGTERM

        def slow_turn() -> list[str]:
            body = {"model": "gpt-5.5", "input": "slow", "stream": True}
            with httpx.stream("POST", server.url + "/v1/responses", json=body, headers=headers) as r:
                return [json.loads(line[6:])["type"] for line in r.iter_lines() if line.startswith("data: ")]

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(slow_turn)
            assert upstream.wait_for(lambda: upstream.open_http_streams == 1)
            output = server.terminate()
            events = in_flight.result(timeout=20)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert server.proc is not None and server.proc.returncode in (0, -15), output
    assert "Application shutdown complete" in output, output
    assert events[-1] == "response.completed", "the turn in flight was cut off"
    assert RequestLog.objects.filter(status=200).count() == 51
