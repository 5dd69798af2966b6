"""The provider test: one small real turn through the code path that serves users, with diagnostics."""

import asyncio
import json
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.utils import timezone
from django.utils.translation import gettext as _

from providers.models import Provider, Verdict
from providers.registry import ProviderInfo, info_from_model
from proxy.common.scrubbing import scrub
from proxy.common.transport import FallbackReason, Transport
from proxy.common.wire import WireError, validate_create_frame
from proxy.governance.auth import Client
from proxy.models import ModelPrice
from proxy.ws.connection import Connection

SLOW_MS = 10_000.0
# HTTP chosen by the operator (the provider's setting, the system settings, the test's option): not a
# degradation of the provider.
HTTP_ON_PURPOSE = (FallbackReason.FORCED_HTTP, FallbackReason.PROVIDER_NEVER, FallbackReason.SETTING_OFF)
PROMPT = "Reply with the single word: OK"


@dataclass
class Report:
    verdict: str
    transport: str = ""
    fallback_reason: str = ""
    handshake_ms: float | None = None
    first_event_ms: float | None = None
    total_ms: float = 0.0
    events: int = 0
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def transport_label(self) -> str:
        return str(Transport(self.transport).label) if self.transport else ""

    @property
    def fallback_label(self) -> str:
        return str(FallbackReason(self.fallback_reason).label) if self.fallback_reason else ""


def test_payload(provider: Provider, model: str | None) -> dict[str, Any]:
    """The request the test sends, validated before anything leaves the gateway."""
    chosen = (
        model
        or next(iter(provider.allowed_models or []), None)
        or next(iter(provider.model_redirects or {}), None)
    )
    frame = {
        "type": "response.create",
        "model": chosen,
        "input": PROMPT,
        "store": False,
        "max_output_tokens": 16,
    }
    try:
        validate_create_frame(frame)
    except WireError as error:
        raise WireError(
            400,
            error.code,
            _("The test needs a model: pass one, or give the provider an allowed model."),
            "model",
        ) from None
    return frame


async def run_test(provider: Provider, *, transport: str = "auto", model: str | None = None) -> Report:
    """Send the test turn. Raises WireError when the test itself is misconfigured (nothing was sent)."""
    frame = test_payload(provider, model)
    info = info_from_model(provider)
    received: list[str] = []

    async def collect(text: str) -> None:
        received.append(text)

    async def ignore_close(code: int, reason: str) -> None:
        return None

    session = Connection(
        Client(key_id=None, key_name="provider test", owner_id=0, expires_at=None),
        {"user-agent": "sluice-provider-test"},
        collect,
        ignore_close,
        forced_transport=None if transport == "auto" else transport,
        pinned=info,
    )
    session.keep_records = True
    started = time.perf_counter()
    try:
        await session.turn(json.dumps(frame))
        total = (time.perf_counter() - started) * 1000
    finally:
        await session.shutdown()
    record = session.records[-1] if session.records else None
    report = Report(verdict=Verdict.RED, total_ms=round(total, 1), events=len(received))
    if record is not None:
        report.transport = record.upstream_transport
        report.fallback_reason = record.fallback_reason
        report.handshake_ms = None if record.ws_handshake_ms is None else round(record.ws_handshake_ms, 1)
        if record.first_event_at is not None:
            report.first_event_ms = round((record.first_event_at - record.started) * 1000, 1)
        report.model = record.outcome.model or record.upstream_model
        report.input_tokens = record.outcome.input_tokens
        report.output_tokens = record.outcome.output_tokens
    last = json.loads(received[-1]) if received else {}
    if last.get("type") == "response.completed":
        degraded = []
        if report.fallback_reason and report.fallback_reason not in HTTP_ON_PURPOSE:
            degraded.append(_("fell back to HTTP: %(reason)s") % {"reason": report.fallback_label})
        if total > SLOW_MS:
            degraded.append(_("slow: %(ms).0f ms") % {"ms": total})
        report.verdict = Verdict.YELLOW if degraded else Verdict.GREEN
        report.notes = degraded
    else:
        error = (
            last.get("error")
            if isinstance(last.get("error"), dict)
            else last.get("response", {}).get("error")
        ) or {}
        report.error = await explain(info, error, last.get("status"))
    return report


async def explain(info: ProviderInfo, error: dict[str, Any], status: object) -> str:
    """The failure in words an operator can act on, found by retracing the connection step by step."""
    code = str(error.get("code") or "")
    if code == "upstream_timeout":
        reason = await diagnose(info)  # an unreachable host also ends in a timeout
        return reason or _("timed out after %(seconds)g s waiting for the first event") % {
            "seconds": info.first_byte_timeout
        }
    if code in ("upstream_unavailable", "upstream_stream_error", "upstream_stream_incomplete", ""):
        reason = await diagnose(info)
        if reason:
            return reason
    message = scrub(str(error.get("message") or code or _("No answer from the provider.")), info.api_key)
    if isinstance(status, int) and code not in ("upstream_unavailable", "upstream_timeout"):
        return _("the provider answered HTTP %(status)s: %(message)s") % {
            "status": status,
            "message": message,
        }
    return message


async def diagnose(info: ProviderInfo) -> str | None:
    """Connect to the provider's host as the gateway would (TCP, then TLS): what fails, or None."""
    if info.proxy_url:
        return None  # the path goes through the proxy; the error message says what the proxy said
    parts = urlsplit(info.base_url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    where = {"address": f"{host}:{port}", "seconds": info.connect_timeout}
    try:
        async with asyncio.timeout(info.connect_timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return _("could not connect to %(address)s (no answer in %(seconds)g s)") % where
    except socket.gaierror:
        return _("could not resolve the host name %(host)s") % {"host": host}
    except ConnectionRefusedError:
        return _("could not connect to %(address)s (connection refused)") % where
    except OSError as exc:
        return _("could not connect to %(address)s (%(reason)s)") % {**where, "reason": exc.strerror or exc}
    writer.close()
    if not secure:
        return None
    try:
        async with asyncio.timeout(info.connect_timeout):
            _reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context(), server_hostname=host
            )
        writer.close()
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return _("TLS handshake failed (%(reason)s)") % {"reason": getattr(exc, "reason", None) or exc}
    except (TimeoutError, OSError):
        return _("TLS handshake failed (no answer in %(seconds)g s)") % where
    return None


def model_choices(provider: Provider) -> list[str]:
    """Models the provider test offers: the provider's allowed and redirected models, then every priced
    model (a provider that allows all models can be tested with any of them, or a typed one)."""
    names = [*(provider.allowed_models or []), *(provider.model_redirects or {})]
    names += list(ModelPrice.objects.order_by("model").values_list("model", flat=True))
    return list(dict.fromkeys(names))


def save_result(provider: Provider, report: Report) -> None:
    Provider.objects.filter(pk=provider.pk).update(
        last_test_at=timezone.now(), last_test_verdict=report.verdict, last_test_report=report.as_dict()
    )
