"""This process's lifecycle, as the probes and the ingresses see it: serving, then draining before exit.

``/readyz`` answers 503 while draining so a balancer stops sending new work; the WebSocket ingress closes
idle client sockets with 1001 (going away) and lets turns in flight finish.
"""

_draining = False


def draining() -> bool:
    return _draining


def begin_drain() -> None:
    global _draining
    _draining = True
