"""What the gateway tells other apps (alerts, for one) without importing them. Receivers run in the
sender's thread: the event loop or the request-log writer. They must only queue work, never block."""

from django.dispatch import Signal

from providers.signals import breaker_changed  # noqa: F401 - the providers' own, named here beside these

# After a batch of request-log rows is stored, from the writer thread: records (list of TurnRecord) and
# costs (a Decimal per record, 0 when unpriced).
turn_recorded = Signal()
# An upstream answered a WebSocket handshake with a status meaning "no WebSocket here": provider_id.
upstream_websocket_refused = Signal()
# /readyz found this process unable to serve: down (what is down, a dict).
readiness_lost = Signal()
