"""Prometheus metrics, fed from the same turn records the request log writes.

Counters and histograms are observed in the request-log writer thread, from the batch it is about to
insert (``observe_batch``): the event loop pays nothing per turn for them, and nothing is counted twice
by hand. Gauges move only at paired edges (a socket opened / closed, a record queued / written), so with
several worker processes each process's share adds up in multiprocess mode.

Several workers: ``manage.py serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before the
workers start; each process then keeps its values in files there and ``/metrics`` merges them (no custom
collector, as the multiprocess mode requires).
"""

import asyncio
import bisect
import functools
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from providers.metrics import provider_name
from providers.registry import enabled_providers
from proxy.common.record import TurnRecord
from proxy.governance.prices import model_prices

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the values of this process are files there
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)

turns = Counter(
    "sluice_turns",
    "Turns (HTTP requests and WebSocket response.create), refusals included.",
    ["client_transport", "upstream_transport", "provider", "model", "status"],
)
fallbacks = Counter(
    "sluice_fallbacks", "Turns that went upstream over HTTP instead of WebSocket.", ["reason"]
)
refusals = Counter("sluice_refusals", "Requests the gateway refused before reaching an upstream.", ["code"])
first_event = Histogram(
    "sluice_time_to_first_event_seconds",
    "From the start of a turn to its first upstream event.",
    ["provider"],
    buckets=TIME_BUCKETS,
)
turn_duration = Histogram(
    "sluice_turn_duration_seconds",
    "From the start of a turn to its end.",
    ["client_transport"],
    buckets=TIME_BUCKETS,
)
tokens = Counter("sluice_tokens", "Tokens reported by upstreams.", ["kind", "model"])
cost = Counter("sluice_cost_usd", "Cost of the turns, priced from the model prices.", ["model"])
client_sockets = Gauge(
    "sluice_client_websockets_open", "Client WebSocket connections open.", multiprocess_mode="livesum"
)
upstream_sockets = Gauge(
    "sluice_upstream_websockets_open", "Upstream WebSocket connections open.", multiprocess_mode="livesum"
)
log_queue = Gauge(
    "sluice_request_log_queue", "Request-log rows waiting to be written.", multiprocess_mode="livesum"
)
log_dropped = Counter(
    "sluice_request_log_dropped", "Request-log rows not written.", ["reason"]
)  # reasons: rate_limited (refusals of unknown clients over their allowance), write_failed

TOKEN_KINDS = ("input", "cached", "output", "reasoning")


def is_refusal(record: "TurnRecord") -> bool:
    """Refused by the gateway itself: an error that never reached an upstream."""
    return record.status >= 400 and record.provider_id is None


def observe_batch(batch: Iterable["TurnRecord"], costs: Iterable[Decimal]) -> None:
    """Count a batch: the counters' increments are summed per label set first, so that each labelled child
    is looked up once per batch rather than once per turn (the lookup validates and locks each time)."""
    known = known_models()
    counted: dict[tuple, float] = {}
    durations: dict[str, list[float]] = {}
    firsts: dict[str, list[float]] = {}
    for record, spent in zip(batch, costs, strict=True):
        _observe(record, spent, known, counted, durations, firsts)
    for (metric, labels), amount in counted.items():
        metric.labels(*labels).inc(amount)
    for histogram, samples in ((turn_duration, durations), (first_event, firsts)):
        for label, values in samples.items():
            observe_many(histogram.labels(label), values)


def observe_many(child: Histogram, values: list[float]) -> None:
    """``child.observe`` of each value, as one increment per bucket: the bucket of each value is found by
    bisection and each bucket (and the sum) is incremented once (prometheus_client's own fields)."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    if bounds is None or buckets is None or not hasattr(child, "_sum"):
        for value in values:
            child.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value, as observe() finds it
    child._sum.inc(sum(values))
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)


def observe(record: "TurnRecord", spent: Decimal) -> None:
    """Count one turn."""
    observe_batch([record], [spent])


OTHER = "other"  # the label of every model and code the operator did not configure
_known: tuple[tuple[int, ...], frozenset[str]] = ((), frozenset())


def known_models() -> frozenset[str]:
    """The models the operator configured: in a provider's allowed list or redirects, priced, or in a key's
    or team's allowed list. Recomputed only when one of those snapshots was reloaded (writer thread)."""
    global _known
    from proxy.governance.auth import (
        keys,  # imported here: the key table loads Django's models, like the labels below
    )

    providers, prices, clients = enabled_providers.get(), model_prices.get(), keys._value or {}
    versions = (id(providers), id(prices), id(clients))
    if versions == _known[0]:
        return _known[1]
    names: set[str] = set(prices)
    for info in providers:
        names.update(info.allowed_models, info.model_redirects, info.model_redirects.values())
    for client in clients.values():
        if client.policy is not None and client.policy.models is not None:
            names.update(client.policy.models)
    _known = (versions, frozenset(str(name) for name in names))
    return _known[1]


def model_label(model: str) -> str:
    """A model as a label: a configured one as it is (no model: empty), anything else ``other``."""
    return model if not model or model in known_models() else OTHER


def code_label(code: str) -> str:
    """A refusal's code as a label: the gateway's own codes only."""
    from proxy.common.labels import ERROR_LABELS  # imported here: the labels module loads Django's models

    return code if code in ERROR_LABELS or code.isdigit() else OTHER


def _observe(
    record: "TurnRecord",
    spent: Decimal,
    known: frozenset[str],
    counted: dict[tuple, float],
    durations: dict[str, list[float]],
    firsts: dict[str, list[float]],
) -> None:
    o = record.outcome
    model = record.model[:100]
    if model and model not in known:
        model = OTHER
    provider = provider_name(record.provider_id)

    def count(metric: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
        counted[metric, labels] = counted.get((metric, labels), 0) + amount

    status = record.status
    count(turns, (record.client_transport, record.upstream_transport, provider, model, str(status)))
    if record.fallback_reason:
        count(fallbacks, (record.fallback_reason,))
    if status >= 400 and record.provider_id is None:  # is_refusal
        count(refusals, (code_label(record.error_code or o.error_code or str(status)),))
    finished = record.finished_at or record.started
    durations.setdefault(record.client_transport, []).append(max(0.0, finished - record.started))
    if record.first_event_at is not None:
        firsts.setdefault(provider, []).append(max(0.0, record.first_event_at - record.started))
    for kind, tokens_of in zip(
        TOKEN_KINDS, (o.input_tokens, o.cached_input_tokens, o.output_tokens, o.reasoning_tokens), strict=True
    ):
        if tokens_of:
            count(tokens, (kind, model), tokens_of)
    if spent:
        count(cost, (model,), float(spent))


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def exposition() -> bytes:
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


# Scrapes render in a thread of their own: a large registry never stalls the event loop, nor takes a thread
# of the pool turns use; one at a time, so a flood of scrapes queues instead of piling up CPU.
_render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-metrics")


@functools.lru_cache(maxsize=8)
def allowed_networks(setting: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The networks of SLUICE_METRICS_ALLOW; one that does not parse is left out, and said once."""
    networks = []
    for entry in filter(None, (n.strip() for n in setting.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            logging.getLogger("sluice.metrics").error("SLUICE_METRICS_ALLOW: %r is not a network", entry)
    return tuple(networks)


def from_allowed_network(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed_networks(settings.SLUICE_METRICS_ALLOW))


def authorised(request: HttpRequest) -> bool:
    token = settings.SLUICE_METRICS_TOKEN
    presented = request.headers.get("Authorization", "")
    return hmac.compare_digest(presented.encode(), f"Bearer {token}".encode())


async def metrics_view(request: HttpRequest) -> HttpResponse:
    if settings.SLUICE_METRICS_TOKEN:
        if not authorised(request):
            response = HttpResponse("unauthorised\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = "Bearer"
            return response
    elif not from_allowed_network(request):
        body = (
            "forbidden: /metrics answers requests from the networks in SLUICE_METRICS_ALLOW only "
            "(loopback by default), or with the token of SLUICE_METRICS_TOKEN when one is set\n"
        )
        return HttpResponse(body, status=403, content_type="text/plain")
    body = await asyncio.get_running_loop().run_in_executor(_render, exposition)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def process_exited() -> None:
    """This worker stops: its live gauges leave the sum (multiprocess mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())
