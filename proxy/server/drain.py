"""Drain instead of drop: how a node leaves a fleet on SIGTERM.

uvicorn's own graceful shutdown lets HTTP responses finish but closes every WebSocket at once with 1012,
turn in flight or not. Here a worker first stops accepting, answers ``/readyz`` with 503, closes idle client
sockets with 1001 (going away) as soon as they are idle, lets turns in flight finish for up to
``SLUICE_DRAIN_SECONDS``, and only then hands over to uvicorn's shutdown (whatever is left then is cut),
flushes the request log and exits. With several workers the supervisor lets go of the listening socket
at once, so a balancer's next connection is refused and goes to another node instead of waiting in a
backlog that nobody accepts from any more.
"""

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import multiprocess

from proxy.server import lifecycle
from proxy.usage import tracing

log = logging.getLogger("sluice.drain")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HTTP_PROTOCOLS: tuple[type, ...] = (H11Protocol, HttpToolsProtocol)
except ImportError:  # httptools is optional in uvicorn
    HTTP_PROTOCOLS = (H11Protocol,)

# After the last socket went away, how long its close handshake may take before uvicorn cuts it.
CLOSE_HANDSHAKE_SECONDS = 1.0


async def drain_sockets(deadline: float, poll: float = 0.05) -> None:
    """Close each registered client socket with 1001 once it is idle; return when every one has gone
    away (and, briefly, closed) or at ``deadline``, whichever comes first."""
    loop = asyncio.get_running_loop()
    all_gone_at: float | None = None
    while loop.time() < deadline:
        connections = lifecycle.open_connections()
        busy = 0
        for connection in connections:
            if not connection.idle():
                busy += 1
                continue
            try:
                await connection.go_away()
            except Exception:  # noqa: BLE001 - e.g. the client left first; its disconnect is on its way
                lifecycle.closed(connection)
        if not connections:
            return
        if busy == 0:
            all_gone_at = all_gone_at or loop.time()
            if loop.time() - all_gone_at >= CLOSE_HANDSHAKE_SECONDS:
                return
        await asyncio.sleep(poll)
    log.warning("drain grace over with %d client sockets still busy", len(lifecycle.open_connections()))


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Imported here: the writer loads Django's models; the server module does without them.
        from proxy.usage import logwriter

        lifecycle.begin_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.SLUICE_DRAIN_SECONDS
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # Idle keep-alive connections close now; a response in progress finishes, then its connection closes.
        for connection in list(self.server_state.connections):
            if isinstance(connection, HTTP_PROTOCOLS):
                connection.shutdown()
        log.info("draining: %d client sockets open", len(lifecycle.open_connections()))
        if not self.force_exit:
            await drain_sockets(deadline)
        self.config.timeout_graceful_shutdown = max(int(deadline - loop.time()), 1)
        await super().shutdown(sockets)
        if not await asyncio.to_thread(logwriter.flush, 10):
            log.error("request log rows still unwritten at exit")
        await asyncio.to_thread(tracing.shutdown)  # the spans the writer just ended
        log.info("drained")


class DrainingProcess(multiprocess.Process):
    """uvicorn's worker process, serving with ``DrainingServer``."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor, which closes its copy of the listening socket as soon as it is told to stop
    (the workers close theirs as they start draining)."""

    def handle_int(self) -> None:
        self._let_go()
        super().handle_int()

    def handle_term(self) -> None:
        self._let_go()
        super().handle_term()

    def _let_go(self) -> None:
        for sock in self.sockets:
            sock.close()

    def run(self) -> None:
        # The supervisor builds workers with the module's ``Process``; this process is only a supervisor.
        multiprocess.Process = DrainingProcess  # type: ignore[misc]
        super().run()


def run(app: str, **options: Any) -> None:
    """``uvicorn.run`` for one or several workers, with draining servers (the grace is ours, not uvicorn's
    ``timeout_graceful_shutdown``)."""
    config = uvicorn.Config(app, **options)
    if config.workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
    else:
        DrainingServer(config).run()
