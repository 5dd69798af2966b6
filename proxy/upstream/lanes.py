"""Several lanes of one client connection over one upstream socket, for upstreams that speak lanes.

One reader per upstream socket (websockets raises when two coroutines read): it routes each event to
its lane's inbox by the ``stream_id`` the upstream echoes. Whether an upstream speaks lanes is learnt
from the first turn sent with a ``stream_id``: an upstream that answers it without the ``stream_id`` does
not, and its named lanes get a socket each from then on.
"""

import asyncio
import logging
from collections import deque
from json.decoder import scanstring

from providers.registry import ProviderInfo
from proxy.upstream.websocket import UpstreamSocket, read_ready

log = logging.getLogger("sluice.ws")

MARK = '"stream_id":'


def stream_id_of(data: str) -> str | None:
    """The lane of an upstream event, found without parsing the whole event (the JSON may have a space
    after the colon). The id is decoded: an upstream writes ``é`` as ``\\u00e9``, a quote as ``\\"``."""
    at = data.rfind(MARK)
    if at < 0:
        return None
    start = at + len(MARK)
    while data[start : start + 1] == " ":
        start += 1
    if data[start : start + 1] != '"':
        return None
    end = data.find('"', start + 1)
    if end < 0:
        return None
    if "\\" not in data[start:end]:  # the usual case: nothing escaped, no decoding
        return data[start + 1 : end] or None
    try:
        value, _ = scanstring(data, start + 1)
    except ValueError:
        return None
    return value or None


def _retrieve(task: "asyncio.Future[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("closing a shared upstream socket failed: %r", task.exception())


class SharedUpstream:
    """An upstream socket carrying the named lanes of one client connection."""

    def __init__(self, socket: UpstreamSocket) -> None:
        self.socket = socket
        self.speaks: bool | None = None  # None until the first lane turn's first event says
        self.inboxes: dict[str, Inbox] = {}
        self.probe: str | None = None  # the lane whose turn finds out, while speaks is None
        self.retired = False  # the upstream said it reached its lifetime: no new turns on it
        self.reader = asyncio.ensure_future(self._read())

    @property
    def provider(self) -> ProviderInfo:
        return self.socket.provider

    @property
    def is_open(self) -> bool:
        return self.socket.is_open and not self.reader.done()

    def view(self, stream_id: str) -> "LaneView":
        inbox = self.inboxes[stream_id] = Inbox()
        return LaneView(self, stream_id, inbox)

    async def _read(self) -> None:
        connection = self.socket.connection
        failure: BaseException | None = None
        try:
            while True:
                data = await connection.recv(decode=True)
                for text in [data if isinstance(data, str) else data.decode(), *read_ready(connection)]:
                    self._route(text)
        except asyncio.CancelledError:
            failure = ConnectionError("upstream lanes socket closed")
            raise
        except Exception as exc:  # noqa: BLE001 - every reader failure ends every lane on it
            failure = exc
        finally:
            for inbox in self.inboxes.values():
                inbox.fail(failure or ConnectionError("upstream lanes socket closed"))

    def _route(self, text: str) -> None:
        lane = stream_id_of(text)
        if lane is None:
            if self.speaks is None and self.probe is not None:
                self.speaks = False  # answered without the stream_id: no lanes on this upstream
                lane = self.probe
            elif self.speaks is False and self.probe is not None:
                lane = self.probe
            else:
                for inbox in self.inboxes.values():  # a connection-level event concerns every lane
                    inbox.put(text)
                return
        elif self.speaks is None:
            self.speaks = True
        inbox = self.inboxes.get(lane)
        if inbox is not None:
            inbox.put(text)

    async def close(self) -> None:
        self.reader.cancel()
        await self.socket.close()

    def close_when_idle(self) -> None:
        """Replaced: closed now if no lane is on it, else when its last lane leaves."""
        self.retired = True
        if not self.inboxes:
            asyncio.ensure_future(self.close()).add_done_callback(_retrieve)


class Inbox:
    """Events of one lane, waiting for its relay; read a batch at a time."""

    def __init__(self) -> None:
        self.items: deque[str] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def put(self, text: str) -> None:
        self.items.append(text)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def batch(self) -> list[str]:
        while not self.items:
            if self.failure is not None:
                raise self.failure
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items = list(self.items)
        self.items.clear()
        return items


class LaneView:
    """One lane's side of a shared upstream socket: what a lane reads and writes like its own socket."""

    def __init__(self, shared: SharedUpstream, stream_id: str, inbox: Inbox) -> None:
        self.shared = shared
        self.stream_id = stream_id
        self.inbox = inbox
        socket = shared.socket
        self.provider = socket.provider
        self.url = socket.url
        self.handshake_ms = socket.handshake_ms
        self.opened_at = socket.opened_at
        self.handshake_headers = socket.handshake_headers

    @property
    def lanes(self) -> bool:
        """Events come back with the stream_id already in them, and frames go up with it; not so on an
        upstream without lanes, where the lane that found out keeps the socket as its own."""
        return self.shared.speaks is not False

    @property
    def is_open(self) -> bool:
        return self.shared.is_open and self.shared.inboxes.get(self.stream_id) is self.inbox

    async def send(self, text: str) -> None:
        await self.shared.socket.connection.send(text)

    async def recv(self) -> str:
        batch = await self.inbox.batch()
        for text in batch[1:][::-1]:
            self.inbox.items.appendleft(text)
        return batch[0]

    async def recv_batch(self) -> list[str]:
        return await self.inbox.batch()

    def ready(self) -> list[str]:
        """The events already waiting, taken without waiting (see ``UpstreamSocket.ready``)."""
        items = list(self.inbox.items)
        self.inbox.items.clear()
        return items

    async def close(self) -> None:
        """This lane is done with the socket; the socket stays for the other lanes."""
        if self.shared.inboxes.get(self.stream_id) is self.inbox:
            del self.shared.inboxes[self.stream_id]
        if self.shared.probe == self.stream_id:
            self.shared.probe = None
        if (self.shared.retired or self.shared.speaks is False) and not self.shared.inboxes:
            await self.shared.close()
