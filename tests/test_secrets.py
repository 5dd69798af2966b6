"""Secrets never reach logs, error bodies or the request log: the client's key, the provider's key."""

import logging

import httpx
import pytest

from tests.conftest import TERMINAL, make_provider, request_logs, sdk

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


# The provider's key as the upstream might quote it back: in the usual shape, and in a shape that no
# pattern would recognise (only knowing the key itself can remove it).
KEYS = {"sk-shaped": PROVIDER_KEY, "not-sk-shaped": "prov_7Hq2ZpLm4Xw9Rt5Kd8Nv3Bc6yT1"}


def ws_first_terminal(gateway, key: str, frame: str) -> str:
    from websockets.sync.client import connect

    with connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}"},
    ) as ws:
        ws.send(frame)
        seen = []
        while not any(f'"type": "{t}"' in seen[-1] or f'"type":"{t}"' in seen[-1] for t in TERMINAL if seen):
            seen.append(ws.recv(timeout=10))
        return "\n".join(seen)


def assert_nowhere(secret: str, client_saw: str, caplog, rows) -> None:
    seen = client_saw + "\n".join(r.getMessage() for r in caplog.records) + repr([vars(r) for r in rows])
    assert secret not in seen and secret[:12] not in seen


@pytest.mark.parametrize("provider_key", KEYS.values(), ids=KEYS.keys())
@pytest.mark.parametrize("path", ["http", "websocket/upstream-http", "websocket/upgrade-refused"])
def test_upstream_errors_that_echo_the_provider_key_are_scrubbed(
    gateway, upstream, api_key, caplog, path, provider_key
):
    """The stored provider key is wrong: the upstream refuses it and quotes it back in its error body."""
    from providers.models import Provider

    make_provider(upstream, websocket_mode="always" if path.endswith("refused") else "never")
    provider = Provider.objects.get()
    provider.set_api_key(provider_key)
    provider.save()
    frame = '{"type": "response.create", "model": "gpt-5.5", "input": "x"}'
    with caplog.at_level(logging.DEBUG):
        if path == "http":
            body = httpx.post(
                gateway.url + "/v1/responses",
                json={"model": "gpt-5.5", "input": "x"},
                headers={"authorization": f"Bearer {api_key}"},
                timeout=20,
            ).text
        else:
            body = ws_first_terminal(gateway, api_key, frame)
        rows = request_logs(1)
    assert '"error"' in body
    if path != "websocket/upgrade-refused":
        assert "Incorrect API key provided: ***" in body, "the echoed body should reach the client, scrubbed"
    assert_nowhere(provider_key, body, caplog, rows)
    assert api_key not in body


@pytest.mark.parametrize(
    ("provider_key", "path", "kind"),
    [
        pytest.param(KEYS[shape], path, kind, id=f"{shape}-{path}-{kind}")
        for shape, path, kind in [
            ("not-sk-shaped", "sse", "error"),
            ("not-sk-shaped", "sse", "response.failed"),
            ("not-sk-shaped", "websocket", "error"),
            ("not-sk-shaped", "websocket", "response.failed"),
            ("not-sk-shaped", "websocket/upstream-http", "error"),
            ("sk-shaped", "sse", "error"),
            ("sk-shaped", "websocket", "error"),
        ]
    ],
)
def test_streamed_upstream_errors_that_echo_the_provider_key_are_scrubbed(
    gateway, upstream, api_key, caplog, provider_key, path, kind
):
    upstream.api_key = provider_key  # accepted upstream; the failure event then quotes it
    upstream.fail_event = kind
    upstream.fail_message = f"Something failed for the key {provider_key}, sorry."
    make_provider(upstream, websocket_mode="never" if path == "websocket/upstream-http" else "auto")
    with caplog.at_level(logging.DEBUG):
        if path == "sse":
            body = httpx.post(
                gateway.url + "/v1/responses",
                json={"model": "gpt-5.5", "input": "x", "stream": True},
                headers={"authorization": f"Bearer {api_key}"},
                timeout=20,
            ).text
        else:
            body = ws_first_terminal(gateway, api_key, '{"type": "response.create", "model": "gpt-5.5"}')
        rows = request_logs(1)
    assert "Something failed for the key" in body, "the failure should still reach the client"
    assert_nowhere(provider_key, body, caplog, rows)


@pytest.mark.parametrize(
    ("text", "provider_key", "scrubbed"),
    [
        ("bad key sk-proj-abcdef123456 here", "", "bad key sk-pr*** here"),
        ("key prov_7Hq2ZpLm4Xw9 and sk-live_0123456789", "prov_7Hq2ZpLm4Xw9", "key *** and sk-li***"),
        ("short sk-abc is no key", "", "short sk-abc is no key"),
    ],
)
def test_scrub_removes_the_provider_key_and_anything_shaped_like_a_key(text, provider_key, scrubbed):
    from proxy.common.scrubbing import scrub

    assert scrub(text, provider_key) == scrubbed
