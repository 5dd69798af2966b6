"""OpenTelemetry traces of turns, exported over OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

A turn (an HTTP request on /v1, or one ``response.create`` on a WebSocket) is one SERVER span, a child of
the client's ``traceparent`` when it sends one; admission and each upstream attempt are its children, and
the upstream request carries the attempt's span as its ``traceparent``. Attributes follow the
OpenTelemetry GenAI conventions (``gen_ai.*``) plus Sluice's own (``sluice.*``). Prompt and answer text
never go on a span, nor the key: only its name.

Unconfigured, ``ENABLED`` stays false and every function here returns at its first line: the turn path
pays a global read per call. Spans end in the request-log writer's thread, where the turn is priced, with
the times the turn itself kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("sluice.tracing")

ENABLED = False
_tracer: Tracer | None = None
_provider: Any = None

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Start exporting if the standard variables ask for it; the SDK reads the rest of ``OTEL_*`` itself
    (service name, headers, sampler, batch delays). Called once per process."""
    global ENABLED, _tracer, _provider
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if ENABLED or not endpoint:
        return ENABLED
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() in ("none", ""):
        return False
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    )
    if protocol and protocol != "http/protobuf":
        log.error("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf is): no traces", protocol)
        return False
    # Imported here: a gateway without tracing never loads the SDK (only the light API above).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "sluice"})
    _provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("sluice")
    ENABLED = True
    log.info("exporting traces to %s", endpoint)
    return True


def shutdown() -> None:
    """Export what is left (on drain)."""
    if _provider is not None:
        _provider.shutdown()


_PROPAGATOR = TraceContextTextMapPropagator()


def _extract(headers: Mapping[str, str] | None) -> Any:
    if not headers or TRACEPARENT not in headers:
        return None
    carrier = {TRACEPARENT: headers[TRACEPARENT]}
    if TRACESTATE in headers:
        carrier[TRACESTATE] = headers[TRACESTATE]
    return _PROPAGATOR.extract(carrier)


def start_turn(
    record: Any,
    headers: Mapping[str, str] | None,
    *,
    key_name: str = "",
    link: Any = None,
) -> None:
    """Open the turn's span on ``record`` (a ``TurnRecord``) and give the record its trace id."""
    if not ENABLED or record.span is not None:
        return
    assert _tracer is not None
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "sluice.client_transport": record.client_transport,
        "sluice.endpoint": record.endpoint,
    }
    if key_name:
        attributes["sluice.key.name"] = key_name
    if record.key_id is not None:
        attributes["sluice.key.id"] = record.key_id
    if record.team_id is not None:
        attributes["sluice.team.id"] = record.team_id
    span = _tracer.start_span(
        f"{record.endpoint} {record.client_transport}",
        context=_extract(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        links=[Link(link)] if link is not None else None,
        start_time=int(record.created_at * 1e9),
    )
    record.span = span
    # Current for the rest of this task (the request's, or the lane's until its next turn), so that log
    # lines written for this turn carry its trace id (config/jsonlog.py).
    otel_context.attach(trace.set_span_in_context(span))
    context = span.get_span_context()
    if context.is_valid:
        record.trace_id = trace.format_trace_id(context.trace_id)


def set_model(record: Any, model: str | None) -> None:
    if record.span is not None and model:
        record.span.update_name(f"chat {model}")
        record.span.set_attribute("gen_ai.request.model", model)


def connection_span(headers: Mapping[str, str] | None, attributes: Mapping[str, Any]) -> Any:
    """A client WebSocket's handshake as a span of its own (ended at once): turns on the socket link to
    it rather than living inside one endless span. Returns its span context, or None."""
    if not ENABLED:
        return None
    assert _tracer is not None
    span = _tracer.start_span(
        "websocket connect", context=_extract(headers), kind=SpanKind.SERVER, attributes=dict(attributes)
    )
    span.end()
    return span.get_span_context()


def turn_parent(frame: Mapping[str, Any]) -> dict[str, str] | None:
    """A WebSocket turn's own trace context, when the client put a ``traceparent`` in the frame's
    ``client_metadata`` (the only per-turn place the protocol has)."""
    if not ENABLED:
        return None
    metadata = frame.get("client_metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get(TRACEPARENT), str):
        return {TRACEPARENT: metadata[TRACEPARENT]}
    return None


@contextmanager
def child(
    record: Any, name: str, attributes: Mapping[str, Any] | None = None, *, keep: bool = False
) -> Iterator[Span | None]:
    """A child span of the turn, current inside the block (so upstream requests made in it carry it as
    their ``traceparent``); an exception marks it failed and passes on. ``keep``: a block that succeeds
    leaves the span open on ``record.attempt_span``, ended with the turn."""
    if not ENABLED or record.span is None:
        yield None
        return
    assert _tracer is not None
    kind = SpanKind.CLIENT if name.startswith("upstream") else SpanKind.INTERNAL
    span = _tracer.start_span(
        name, context=trace.set_span_in_context(record.span), kind=kind, attributes=dict(attributes or {})
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as exc:
        status = getattr(exc, "status", None)
        code = getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__
        span.set_attribute("error.type", str(code))
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        span.set_status(Status(StatusCode.ERROR, str(code)))
        span.end()
        raise
    if keep:
        record.attempt_span = span
    else:
        span.end()


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A CLIENT span under the current one (an upstream WebSocket handshake inside its attempt)."""
    if not ENABLED or not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    assert _tracer is not None
    with _tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=dict(attributes or {}), record_exception=False
    ) as current:
        yield current


@contextmanager
def attempt(record: Any, provider_name: str, upstream_model: str) -> Iterator[Span | None]:
    """One upstream attempt of the turn; the one that opens stays open (``record.attempt_span``) until the
    turn ends."""
    with child(
        record,
        "upstream attempt",
        {"sluice.provider": provider_name, "gen_ai.request.model": upstream_model},
        keep=True,
    ) as span:
        yield span


def inject(headers: MutableMapping[str, str]) -> None:
    """Give an upstream request the current span (the attempt) as its ``traceparent``."""
    if not ENABLED:
        return
    headers.pop(TRACEPARENT, None)
    headers.pop(TRACESTATE, None)
    _PROPAGATOR.inject(headers)


def end_turn(record: Any, cost: Any, team_name: str = "") -> None:
    """Close the turn's spans with what the turn ended with (from the request-log writer's thread)."""
    span = record.span
    if span is None:
        return
    record.span = None
    outcome = record.outcome
    finished = record.finished_at if record.finished_at is not None else time.perf_counter()
    end_ns = int((record.created_at + (finished - record.started)) * 1e9)
    attempt_span = record.attempt_span
    if attempt_span is not None:
        record.attempt_span = None
        attempt_span.set_attribute("sluice.outcome", "opened")
        attempt_span.set_attribute("sluice.upstream_transport", record.upstream_transport)
        if record.fallback_reason:
            attempt_span.set_attribute("sluice.fallback_reason", record.fallback_reason)
        attempt_span.end(end_time=end_ns)
    attributes: dict[str, Any] = {
        "http.response.status_code": record.status,
        "sluice.status": record.status,
        "sluice.upstream_transport": record.upstream_transport,
        "gen_ai.usage.input_tokens": outcome.input_tokens,
        "gen_ai.usage.output_tokens": outcome.output_tokens,
    }
    if record.requested_model:
        attributes["gen_ai.request.model"] = record.requested_model
    if record.model:
        attributes["gen_ai.response.model"] = record.model
    if outcome.response_id:
        attributes["gen_ai.response.id"] = outcome.response_id
    if record.session_id:
        attributes["gen_ai.conversation.id"] = record.session_id
    if record.error_code:
        attributes["error.type"] = record.error_code
        attributes["sluice.error_code"] = record.error_code
    if record.fallback_reason:
        attributes["sluice.fallback_reason"] = record.fallback_reason
    if cost is not None:
        attributes["sluice.cost_usd"] = float(cost)
    if team_name:
        attributes["sluice.team.name"] = team_name
    span.set_attributes(attributes)
    if record.status >= 500:
        span.set_status(Status(StatusCode.ERROR, record.error_code or str(record.status)))
    span.end(end_time=end_ns)


def current_trace_id() -> str:
    """The trace id of the span current in this context (for log lines), or ""."""
    if not ENABLED:
        return ""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""
