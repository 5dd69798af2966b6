"""An HTTP response's writes made in one turn of the event loop leave together (proxy/server/serving.py), in
order, and nothing is lost when the response closes its connection or the client is gone."""

import asyncio

from proxy.server.serving import OneWritePerTurn


class Recording(asyncio.Transport):
    """The connection's transport as the wrapper sees it: what reached it, in which calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_writes_of_one_turn_leave_in_one_call_and_a_stream_still_flows():
    recording = Recording()
    transport = OneWritePerTurn(recording, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"5\r\nfirst\r\n")
    assert recording.writes == []  # not yet: the turn of the loop is not over
    await asyncio.sleep(0)
    assert recording.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nfirst\r\n"]
    transport.write(b"6\r\nsecond\r\n")
    await asyncio.sleep(0)  # the next event of a stream leaves before the loop waits again
    transport.write(b"0\r\n\r\n")
    await asyncio.sleep(0)
    assert recording.writes[1:] == [b"6\r\nsecond\r\n", b"0\r\n\r\n"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own


async def test_closing_sends_what_waits_first_and_a_gone_client_gets_nothing():
    recording = Recording()
    transport = OneWritePerTurn(recording, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
    transport.write(b"body")
    transport.close()
    assert recording.writes == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody"] and recording.closed
    transport.write(b"late")  # after the connection closed: dropped, never written to a closed transport
    await asyncio.sleep(0)
    assert recording.writes == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody"]
    assert transport.is_closing()
