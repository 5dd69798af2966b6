"""The turn: one client request or ``response.create`` from admission to its request-log row.

``Turn`` (``proxy.turn.turn``) owns it; ``failover`` tries the routes in order over an upstream WebSocket or
HTTP, ``upstream`` opens one route over HTTP. The ingresses (``proxy.http.views``, ``proxy.ws.lane``) drive
it.
"""

from proxy.turn.turn import Turn, run_guarded

__all__ = ["Turn", "run_guarded"]
