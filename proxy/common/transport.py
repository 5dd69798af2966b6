"""The upstream transport for a turn: a pure decision, with a reason from a closed set when it is HTTP."""

from dataclasses import dataclass

from django.db import models
from django.utils.translation import gettext_lazy as _


class Transport(models.TextChoices):
    HTTP = "http", _("HTTP")
    WEBSOCKET = "websocket", _("WebSocket")


class FallbackReason(models.TextChoices):
    SETTING_OFF = "setting_off", _("Upstream WebSockets are turned off in the system settings")
    PROVIDER_NEVER = "provider_never", _("The provider is set to HTTP only")
    KNOWN_UNSUPPORTED = "known_unsupported", _("The upstream recently refused WebSocket upgrades")
    UPGRADE_REFUSED = "upgrade_refused", _("The upstream refused the WebSocket upgrade")
    HANDSHAKE_TIMEOUT = "handshake_timeout", _("The WebSocket handshake timed out")
    CONNECT_FAILED = "connect_failed", _("The WebSocket connection failed")
    CLOSED_BEFORE_FIRST_EVENT = (
        "closed_before_first_event",
        _("The upstream WebSocket closed before its first event"),
    )
    FORCED_HTTP = "forced_http", _("HTTP was requested for this test")


@dataclass(frozen=True)
class Decision:
    transport: Transport
    reason: FallbackReason | None = None
    may_fall_back: bool = True


def choose(
    *, upstream_websockets: bool, provider_mode: str, known_unsupported: bool, forced: str | None = None
) -> Decision:
    """Decide the upstream transport of a WebSocket client's turn.

    ``forced`` ("websocket" or "http") comes from the provider test. The system setting is a global
    switch and wins over a provider's "always", which otherwise uses WebSocket even when the upstream
    was seen refusing it, and never falls back.
    """
    if forced == Transport.HTTP:
        return Decision(Transport.HTTP, FallbackReason.FORCED_HTTP)
    if forced == Transport.WEBSOCKET:
        return Decision(Transport.WEBSOCKET, may_fall_back=False)
    if provider_mode == "never":
        return Decision(Transport.HTTP, FallbackReason.PROVIDER_NEVER)
    if not upstream_websockets:
        return Decision(Transport.HTTP, FallbackReason.SETTING_OFF)
    if provider_mode == "always":
        return Decision(Transport.WEBSOCKET, may_fall_back=False)
    if known_unsupported:
        return Decision(Transport.HTTP, FallbackReason.KNOWN_UNSUPPORTED)
    return Decision(Transport.WEBSOCKET)
