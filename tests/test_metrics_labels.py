"""/metrics stays small whatever clients send, is rendered off the event loop, and answers only who may
read it: loopback or the networks of SLUICE_METRICS_ALLOW, or anyone with SLUICE_METRICS_TOKEN."""

import threading
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.conftest import make_key, make_provider, request_logs
from tests.helpers import scrape, value


def turn_labels(samples: dict, label: str) -> set[str]:
    return {dict(ls)[label] for (name, ls) in samples if name == "sluice_turns_total"}


def test_made_up_models_are_labelled_other(gateway, upstream):
    make_provider(upstream, allowed_models=["gpt-5.5"], model_redirects={"house-model": "gpt-5.5"})
    _, raw = make_key(allowed_models=["gpt-5.5", "gpt-5-mini", "house-model"])
    auth = {"Authorization": f"Bearer {raw}"}
    before = scrape(gateway)
    made_up = [f"made-up-{i}" for i in range(25)]
    with httpx.Client(base_url=gateway.url, headers=auth, timeout=20) as client:
        for model in [*made_up, "gpt-5.5", "house-model", "gpt-5-mini"]:
            client.post("/v1/responses", json={"model": model, "input": "hi"})
    request_logs(len(made_up) + 3)
    after = scrape(gateway)
    assert not {m for m in turn_labels(after, "model") if m.startswith("made-up")}, "unbounded labels"
    assert turn_labels(after, "model") - turn_labels(before, "model") <= {
        "gpt-5.5",
        "house-model",
        "gpt-5-mini",
        "other",
    }

    def delta(**labels: str) -> float:
        return value(after, "sluice_turns_total", **labels) - value(before, "sluice_turns_total", **labels)

    assert delta(model="other") == len(made_up)
    # A redirected turn counts under the model that served it.
    assert (delta(model="gpt-5.5"), delta(model="gpt-5-mini")) == (2, 1)


@pytest.mark.parametrize(
    "allow,token,presented,status",
    [
        ("127.0.0.0/8,::1/128", "", "", 200),  # the default: loopback
        ("10.0.0.0/8, 192.168.0.0/16", "", "", 403),  # a Prometheus elsewhere, not this client
        ("not-a-network, 127.0.0.1", "", "", 200),  # a mistyped entry is left out, not a 500
        ("10.0.0.0/8", "scrape-secret", "scrape-secret", 200),  # the token opens it from any network
        ("127.0.0.0/8", "scrape-secret", "", 401),  # with a token set, loopback needs it too
    ],
)
def test_metrics_answer_only_allowed_networks_or_the_token(
    gateway, settings, allow, token, presented, status
):
    settings.SLUICE_METRICS_ALLOW, settings.SLUICE_METRICS_TOKEN = allow, token
    headers = {"Authorization": f"Bearer {presented}"} if presented else {}
    response = httpx.get(gateway.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == status, response.text
    if status == 403:
        assert "SLUICE_METRICS_ALLOW" in response.text and "sluice_" not in response.text
    if status == 200:
        assert "sluice_turns" in response.text


class SlowCollector:
    """A registry member of the test's own that takes two seconds to collect, like a very large registry."""

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        time.sleep(2.0)
        return []


def test_a_slow_scrape_leaves_the_event_loop_free(gateway):
    collector = SlowCollector()
    REGISTRY.register(collector)
    try:
        scraped: list[float] = []

        def scrape_once() -> None:
            started = time.monotonic()
            httpx.get(gateway.url + "/metrics", timeout=20)
            scraped.append(time.monotonic() - started)

        thread = threading.Thread(target=scrape_once)
        thread.start()
        time.sleep(0.2)  # the scrape is rendering
        started = time.monotonic()
        assert httpx.get(gateway.url + "/healthz", timeout=20).status_code == 200
        healthz = time.monotonic() - started
        thread.join(20)
    finally:
        REGISTRY.unregister(collector)
    assert scraped and scraped[0] >= 2.0, "the collector ran in the scrape"
    assert healthz < 1.0, f"/healthz waited {healthz:.2f} s for the scrape"
