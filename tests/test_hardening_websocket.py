"""What one WebSocket client can make the gateway hold: pongs it never reads, messages that inflate."""

import json
import socket
import time
from pathlib import Path

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.conftest import make_provider


class RawClient:
    """A WebSocket client on websockets' sans-I/O protocol, so the test decides what is read and when."""

    def __init__(self, gateway, key: str, deflate: bool = False, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", gateway.port))
        self.sock.settimeout(10)
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        self.proto = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{gateway.port}/v1/responses"), extensions=extensions
        )
        request = self.proto.connect()
        request.headers["Authorization"] = f"Bearer {key}"
        self.proto.send_request(request)
        self.flush()
        while not any(isinstance(e, Response) for e in self.read_events()):
            pass

    def flush(self) -> None:
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def read_events(self) -> list:
        data = self.sock.recv(1 << 20)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        return self.proto.events_received()

    def frames_until_close(self, timeout: float = 20) -> tuple[list[dict], int | None]:
        frames: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.read_events():
                if event.opcode.name == "TEXT":
                    frames.append(json.loads(event.data))
                elif event.opcode.name == "CLOSE":
                    return frames, Close.parse(event.data).code
            if self.proto.state.name == "CLOSED":
                return frames, None
        raise AssertionError(f"not closed; frames so far: {[f.get('type') for f in frames]}")

    def close(self) -> None:
        self.sock.close()


def test_a_ping_flood_from_a_client_that_never_reads_is_cut_off(gateway, upstream, api_key):
    make_provider(upstream)
    client = RawClient(gateway, api_key, rcvbuf=4096)
    sent = 0
    cut_off = False
    try:
        while sent < 300_000:
            for _ in range(1000):
                client.proto.send_ping(b"p" * 125)
            client.flush()
            sent += 1000
    except (ConnectionResetError, BrokenPipeError):
        cut_off = True
    finally:
        client.close()
    assert cut_off, f"{sent} pings and still connected"
    ok = RawClient(gateway, api_key)
    ok.proto.send_text(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "hi"}).encode())
    ok.flush()
    events: list = []
    while not any(e.opcode.name == "TEXT" and b"response.completed" in e.data for e in events):
        events += ok.read_events()
    ok.close()


def peak_rss_after_reset() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return current_peak()


def current_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_burst_of_messages_that_inflate_is_taken_one_at_a_time(gateway, upstream, api_key):
    make_provider(upstream)
    client = RawClient(gateway, api_key, deflate=True)
    big = b"a" * (12 * 1024 * 1024)  # about 12 KB once compressed
    for _ in range(16):
        client.proto.send_text(big)
    wire = b"".join(client.proto.data_to_send())
    assert len(wire) < 1024 * 1024
    start = peak_rss_after_reset()
    client.sock.sendall(wire)
    frames = []
    while len(frames) < 16:
        for event in client.read_events():
            if event.opcode.name == "TEXT":
                frames.append(json.loads(event.data))
            assert event.opcode.name != "CLOSE", Close.parse(event.data)
    grown = current_peak() - start
    client.close()
    assert {f["error"]["code"] for f in frames} <= {"invalid_json", "too_many_queued_requests"}
    # Sixteen at once inflate to 192 MiB; one at a time stays near a few messages' worth.
    assert grown < 150 * 1024 * 1024, f"peak grew by {grown >> 20} MiB"


def test_a_message_over_the_process_budget_closes_with_1009(gateway, upstream, api_key, settings):
    make_provider(upstream)
    settings.SLUICE_WS_TOTAL_BUFFER_BYTES = 8 * 1024 * 1024
    client = RawClient(gateway, api_key, deflate=True)
    client.proto.send_text(b" " * (20 * 1024 * 1024))
    client.flush()
    frames, code = client.frames_until_close()
    client.close()
    assert code == 1009
    ok = RawClient(gateway, api_key, deflate=True)  # others are served as before
    ok.proto.send_text(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "x"}).encode())
    ok.flush()
    events: list = []
    while not any(e.opcode.name == "TEXT" and b"response.completed" in e.data for e in events):
        events += ok.read_events()
    ok.close()


@pytest.fixture(autouse=True)
def _nothing_left_waiting():
    yield
    from proxy.server.ws_protocol import waiting_total

    deadline = time.monotonic() + 5
    while waiting_total() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting_total() == 0
