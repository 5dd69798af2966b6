"""Client events relayed to the upstream during a turn (steering, injection) are held by the gateway
until the turn ends: they count against the socket's limit (SLUICE_WS_MAX_FRAME_BYTES) and the process's
(SLUICE_WS_TOTAL_BUFFER_BYTES), and a client over either gets an error frame and close 1009."""

import json
import time

from websockets.sync.client import connect as ws_connect

from tests.conftest import make_provider

MIB = 1024 * 1024


def long_turn(gateway, key: str):
    ws = ws_connect(
        gateway.url.replace("http", "ws") + "/v1/responses",
        additional_headers={"authorization": f"Bearer {key}"},
        max_size=None,
    )
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5.5", "input": "long"}))
    first = json.loads(ws.recv(timeout=10))
    assert first["type"] == "response.created"
    return ws, first["response"]["id"]


def steer(ws, response_id: str, size: int) -> None:
    frame = {"type": "response.steer", "previous_response_id": response_id, "input": "s" * size}
    ws.send(json.dumps(frame))


def until_closed(ws) -> tuple[list[dict], int | None]:
    frames = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            frames.append(json.loads(ws.recv(timeout=20)))
        except Exception:  # noqa: BLE001 - the close ends the reading
            break
    return frames, ws.close_code


def steered(upstream) -> int:
    return sum(
        1 for r in upstream.requests if r.transport == "websocket" and r.body.get("type") == "response.steer"
    )


def test_steering_past_the_sockets_limit_closes_it_with_1009(gateway, upstream, api_key, settings):
    settings.SLUICE_WS_MAX_FRAME_BYTES = 4 * MIB
    make_provider(upstream)
    upstream.stall_after_events = 3  # the turn stays in flight while the client steers it
    ws, response_id = long_turn(gateway, api_key)
    try:
        for _ in range(200):
            steer(ws, response_id, MIB)
    except Exception:  # noqa: BLE001 - the gateway closed the socket under the sends
        pass
    frames, code = until_closed(ws)
    assert code == 1009
    errors = [f for f in frames if f.get("type") == "error"]
    assert errors and errors[-1]["error"]["code"] == "too_many_queued_requests", frames[-3:]
    assert steered(upstream) <= 4, "more was held than the socket's limit"


def test_steering_past_the_process_limit_closes_the_socket_over_it(gateway, upstream, api_key, settings):
    settings.SLUICE_WS_MAX_FRAME_BYTES = 4 * MIB
    settings.SLUICE_WS_TOTAL_BUFFER_BYTES = 6 * MIB
    make_provider(upstream)
    upstream.stall_after_events = 3
    first, first_id = long_turn(gateway, api_key)
    second, second_id = long_turn(gateway, api_key)
    try:
        for _ in range(3):  # 3 MiB held for the first socket, under its own limit
            steer(first, first_id, MIB)
        time.sleep(0.5)
        try:
            for _ in range(4):  # the second takes the process over 6 MiB
                steer(second, second_id, MIB)
        except Exception:  # noqa: BLE001 - the gateway may close it before the last send
            pass
        frames, code = until_closed(second)
        assert code == 1009
        assert any(f.get("type") == "error" for f in frames)
        first.send(json.dumps({"type": "response.steer", "previous_response_id": first_id, "input": "ok"}))
        kinds = []
        while "response.steer.accepted" not in kinds[-1:]:  # the first socket, within both limits, goes on
            kinds.append(json.loads(first.recv(timeout=10))["type"])
        assert kinds.count("response.steer.accepted") == 1 and "error" not in kinds
    finally:
        first.close()
        second.close()
