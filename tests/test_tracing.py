"""Traces: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a served gateway exports one span tree per turn over
OTLP/HTTP, a child of the client's ``traceparent``, with failover attempts, GenAI attributes and no prompt
text or key; the upstream sees the gateway's span as its parent; the request log keeps the trace id.

The receiver is a server of the test's own that decodes the real protobuf payloads
(``opentelemetry-proto``)."""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.usage import tracing
from tests.conftest import make_key, make_provider, request_logs
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
PROMPT = "the secret plans of the harbour"


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.resources: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.raw.append(body)
                for resource_spans in request.resource_spans:
                    receiver.resources.append(attributes(resource_spans.resource.attributes))
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append(decoded(span))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, found: Any, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := found()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return result

    def trace(self, trace_id: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s["trace_id"] == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in values:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def decoded(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "kind": span.kind,
        "attributes": attributes(span.attributes),
        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        "status": span.status.code,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def served(receiver: Receiver) -> ServeProcess:
    return ServeProcess(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="sluice-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",
        SLUICE_CONFIG_POLL_SECONDS="0.5",
    )


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start"])


def check_turn_tree(spans: list[dict[str, Any]], key_name: str, ws: bool) -> dict[str, Any]:
    (turn,) = [s for s in spans if s["kind"] == 2 and s["name"].startswith("chat ")]  # SERVER
    assert turn["name"] == "chat gpt-5.5"
    a = turn["attributes"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-5.5"
    assert a["gen_ai.response.model"] == "gpt-5.5"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.id"].startswith("resp_")
    assert a["sluice.key.name"] == key_name and a["sluice.team.name"] == "research"
    assert a["sluice.status"] == 200 and a["sluice.client_transport"] == ("websocket" if ws else "http")
    assert a["sluice.cost_usd"] > 0
    (admission,) = by_name(spans, "admission")
    assert admission["parent"] == turn["span_id"]
    first, second = by_name(spans, "upstream attempt")
    assert first["parent"] == second["parent"] == turn["span_id"]
    assert first["attributes"]["sluice.provider"] == "broken" and first["status"] == 2  # ERROR
    assert second["attributes"]["sluice.provider"] == "alpha" and second["status"] != 2
    assert first["end"] <= second["start"] and turn["start"] <= admission["start"]
    assert second["end"] <= turn["end"]
    if ws:
        handshakes = by_name(spans, "upstream websocket handshake")
        assert [h["parent"] for h in handshakes] == [first["span_id"], second["span_id"]]
        assert handshakes[0]["status"] == 2 and handshakes[1]["status"] != 2
        assert second["attributes"]["sluice.upstream_transport"] == "websocket"
    return turn


def test_turns_are_traced_over_both_transports_with_failover(receiver, upstream):
    from proxy.models import ModelPrice, Team

    team = Team.objects.create(name="research")
    # Shipped by a migration, but a transactional test before this one may have flushed it.
    ModelPrice.objects.update_or_create(
        model="gpt-5.5", defaults={"input_per_million": 5, "output_per_million": 30}
    )
    make_provider(None, name="broken", priority=1)
    make_provider(upstream, name="alpha", priority=2)
    key, raw = make_key(name="tracer", team=team)
    with served(receiver) as server:
        client = openai.OpenAI(
            base_url=server.url + "/v1",
            api_key=raw,
            max_retries=0,
            default_headers={"traceparent": TRACEPARENT},
        )
        client.responses.create(model="gpt-5.5", input=PROMPT)
        spans = receiver.trace(CLIENT_TRACE, 4)
        turn = check_turn_tree(spans, "tracer", ws=False)
        assert turn["parent"] == CLIENT_SPAN  # a child of the client's trace
        # The upstream saw the gateway's attempt span as its parent, in the client's trace.
        (second,) = [
            s for s in by_name(spans, "upstream attempt") if s["attributes"]["sluice.provider"] == "alpha"
        ]
        assert upstream.requests[-1].headers["traceparent"] == f"00-{CLIENT_TRACE}-{second['span_id']}-01"

        with client.responses.connect(extra_headers={"traceparent": TRACEPARENT}) as conn:
            conn.response.create(model="gpt-5.5", input=PROMPT)
            for event in conn:
                if event.type == "response.completed":
                    break
        connects = receiver.wait(lambda: [s for s in receiver.spans if s["name"] == "websocket connect"])
        assert len(connects) == 1 and connects[0]["parent"] == CLIENT_SPAN
        link = [(CLIENT_TRACE, connects[0]["span_id"])]
        ws_turns = receiver.wait(lambda: [s for s in receiver.spans if s["links"] == link])
        assert len(ws_turns) == 1  # its own trace, linked to the connection
        ws_trace = ws_turns[0]["trace_id"]
        assert ws_trace != CLIENT_TRACE and ws_turns[0]["parent"] == ""
        ws_spans = receiver.trace(ws_trace, 6)
        check_turn_tree(ws_spans, "tracer", ws=True)
        # The upstream socket's handshake carried its own span, in the turn's trace.
        (handshake,) = [s for s in by_name(ws_spans, "upstream websocket handshake") if s["status"] != 2]
        assert (
            upstream.requests[-1].headers["traceparent"].startswith(f"00-{ws_trace}-{handshake['span_id']}-")
        )
        client.close()
        # Read while the server runs: its log writer stores rows off the turn path, a moment later.
        rows = [r for r in request_logs(3) if r.endpoint == "responses"]  # not the start-up probe's 401

    assert [r.trace_id for r in rows] == [CLIENT_TRACE, ws_trace]
    assert receiver.resources[0]["service.name"] == "sluice-under-test"
    everything = b"".join(receiver.raw)
    assert PROMPT.encode() not in everything and raw.encode() not in everything
    assert upstream.api_key.encode() not in everything


def test_a_refused_turn_is_a_span_with_its_error(receiver, upstream):
    make_provider(upstream)
    _key, raw = make_key(name="limited", allowed_models=["gpt-5.5-mini"])
    with served(receiver) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=raw, max_retries=0)
        with pytest.raises(openai.APIStatusError):
            client.responses.create(model="gpt-5.5", input=PROMPT, extra_headers={"traceparent": TRACEPARENT})
        client.close()
        (turn,) = [s for s in receiver.trace(CLIENT_TRACE, 2) if s["name"] == "chat gpt-5.5"]
        assert turn["attributes"]["sluice.status"] == 403
        assert turn["attributes"]["error.type"] == turn["attributes"]["sluice.error_code"] != ""
        (admission,) = by_name(receiver.trace(CLIENT_TRACE, 2), "admission")
        assert admission["status"] == 2 and admission["parent"] == turn["span_id"]
        assert not by_name(receiver.spans, "upstream attempt")


def test_a_request_refused_before_its_turn_is_a_span_in_the_clients_trace(receiver, upstream):
    """No key, so no turn began: the refusal's span is still the client's child, with its status."""
    make_provider(upstream)
    with served(receiver) as server:
        refused = httpx.post(
            server.url + "/v1/responses",
            json={"model": "gpt-5.5", "input": PROMPT},
            headers={"traceparent": TRACEPARENT},
            timeout=20,
        )
        assert refused.status_code == 401
        (turn,) = receiver.trace(CLIENT_TRACE, 1)
    assert turn["parent"] == CLIENT_SPAN and turn["kind"] == 2  # SERVER
    assert turn["attributes"]["sluice.status"] == 401
    assert turn["attributes"]["sluice.error_code"] == "invalid_api_key"
    assert upstream.http_requests == 0


def test_unconfigured_no_exporter_runs():
    assert tracing.configure({}) is False
    assert tracing.ENABLED is False
    assert (
        tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}) is False
    )
    assert (
        tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
        is False
    )
    assert tracing.ENABLED is False


def test_json_log_lines_carry_the_trace_id(receiver, upstream):
    make_provider(None, name="broken", priority=1)
    make_provider(upstream, name="alpha", priority=2)
    _key, raw = make_key(name="logged")
    with ServeProcess(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="50",
        SLUICE_LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    ) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=raw, max_retries=0)
        client.responses.create(model="gpt-5.5", input="hi", extra_headers={"traceparent": TRACEPARENT})
        client.close()
        out = server.terminate()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [line for line in lines if "failed before the first event" in line["message"]]
    assert failed and failed[0]["trace_id"] == CLIENT_TRACE
