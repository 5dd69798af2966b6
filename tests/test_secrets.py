"""Secrets never reach logs, error bodies or the request log: the client's key, the provider's key."""

import logging

import httpx
import pytest

from tests.conftest import make_provider, request_logs, sdk

PROVIDER_KEY = "sk-provider-secret-0123456789abcdef"


def test_a_turn_logs_no_key(gateway, upstream, api_key, caplog):
    make_provider(upstream)
    with caplog.at_level(logging.DEBUG):
        client = sdk(gateway, api_key)
        list(client.responses.create(model="gpt-5.5", input="x", stream=True))
        with client.responses.connect(max_retries=0) as conn:
            conn.response.create(model="gpt-5.5", input="y")
            for event in conn:
                if event.type == "response.completed":
                    break
        request_logs(2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert api_key not in text and upstream.api_key not in text


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_upstream_errors_that_echo_the_provider_key_are_scrubbed(
    gateway, upstream, api_key, caplog, transport
):
    from providers.models import Provider

    make_provider(
        upstream, allowed_models=["gpt-5.5"], websocket_mode="never" if transport == "http" else "always"
    )
    provider = Provider.objects.get()
    provider.set_api_key(PROVIDER_KEY)  # the upstream expects another key and quotes this one back
    provider.save()
    with caplog.at_level(logging.DEBUG):
        if transport == "http":
            body = httpx.post(
                gateway.url + "/v1/responses",
                json={"model": "gpt-5.5", "input": "x"},
                headers={"authorization": f"Bearer {api_key}"},
                timeout=20,
            ).text
        else:
            from websockets.sync.client import connect

            with connect(
                gateway.url.replace("http", "ws") + "/v1/responses",
                additional_headers={"authorization": f"Bearer {api_key}"},
            ) as ws:
                ws.send('{"type": "response.create", "model": "gpt-5.5", "input": "x"}')
                body = ws.recv(timeout=10)
        rows = request_logs(1)
    assert "error" in body
    seen = body + "\n".join(r.getMessage() for r in caplog.records) + repr([vars(r) for r in rows])
    assert PROVIDER_KEY not in seen and api_key not in seen
    assert PROVIDER_KEY[:12] not in seen
