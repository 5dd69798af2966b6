"""The HTTP ingress's relaying: a turn's upstream answer as the client's response body, SSE events untouched
and non-streamed bodies as they arrive. The turn's bookkeeping is the ``Turn``'s (``proxy.turn``)."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from proxy.common.outcome import INVALID, NOT_KEPT, scan_json_response
from proxy.common.scrubbing import SCRUBBED_EVENTS, BodyScrubber
from proxy.common.wire import TERMINAL_TYPES, WireError
from proxy.governance.ownership import created_id
from proxy.turn import Turn
from proxy.turn.upstream import Relay
from proxy.upstream.http import TransportError

log = logging.getLogger("sluice.pipeline")


async def relay_sse(turn: Turn, relay: Relay) -> AsyncIterator[bytes]:
    """Relay SSE events untouched; the terminal event is parsed for usage before it is sent."""
    assert relay.first is not None and relay.batches is not None
    record = turn.record
    terminal = False
    sequence = 0
    try:
        record.first_event()
        batch = relay.first
        while True:
            out = []
            for event in batch:
                if event.type in SCRUBBED_EVENTS:
                    event = turn.scrub_sse(event)
                elif event.type == "response.created" and not record.claimed:
                    await turn.created(created_id(event.data))
                out.append(event.as_sse())
                if event.type in TERMINAL_TYPES:
                    terminal = True
                    await turn.end(event.type, event.data)
                    break
            yield out[0] if len(out) == 1 else b"".join(out)
            sequence += len(out)
            if terminal:
                break
            batch = await anext(relay.batches)
    except StopAsyncIteration:
        pass
    except TransportError as exc:
        error = WireError(
            502,
            "upstream_stream_error",
            f"The upstream stream broke: {type(exc).__name__}.",
            None,
            "server_error",
        )
        turn.broke(error.code)
        log.warning("provider %s stream broke after %d events: %r", relay.route.provider.name, sequence, exc)
        yield error.sse_event(sequence)
        return
    except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: closed while the client was written to
        if not terminal:
            turn.gone()
        raise
    finally:
        if terminal:
            await relay.opened.finish(relay.batches)
        else:
            await relay.opened.close()
        turn.submit()
    if not terminal:
        error = WireError(
            502,
            "upstream_stream_incomplete",
            "The upstream stream ended before the response finished.",
            None,
            "server_error",
        )
        turn.broke(error.code)
        yield error.sse_event(sequence)


class BodyBroken(Exception):
    """A relayed body broke after the client's response had started. The response must not end as if it
    were whole: the server closes the connection without the body's end (no last chunk), and clients see
    an incomplete message (httpx raises, the openai SDK retries) rather than half a JSON document."""


def whole_json(head: bytes, tail: bytes, kept: bytes | None) -> tuple[bool, Any]:
    """Whether a JSON body is whole, and its value when it was small enough to keep (else ``NOT_KEPT``).
    A bigger body is judged by its two ends, its first bracket and a closing one last: an upstream that
    ends a body cleanly but early (a wrong Content-Length) rarely cuts it just after a closing bracket."""
    if kept is not None:
        try:
            return True, json.loads(kept)
        except ValueError:
            return False, None
    ends = head.lstrip()[:1] + tail.rstrip()[-1:]
    return ends in (b"{}", b"[]"), NOT_KEPT


async def relay_bytes(turn: Turn, relay: Relay, scan: bool) -> AsyncIterator[bytes]:
    """Relay a body as it arrives. Its last chunk is held back until the body is known to be whole (a JSON
    body parses, see ``whole_json``) and affinity is recorded; when ``scan``, the id and usage of a
    response object are read from it, with bounded memory. A body that breaks or ends early raises
    ``BodyBroken`` once the request log knows."""
    keep_limit = 1024 * 1024
    record = turn.record
    is_json = "json" in relay.opened.content_type
    check = scan or is_json
    # Only a body scanned for usage is kept and parsed (up to 5 ms of CPU for a megabyte); the others
    # (retrieved responses, input item lists) are judged by their ends, at no cost.
    kept: bytearray | None = bytearray() if scan else None
    tail_limit = 65536 if scan else 1024
    head = b""
    tail = b""
    held: bytes | None = None
    scrubber = BodyScrubber(relay.route.provider.api_key)  # what the client gets; the scan reads the raw body
    try:
        async for chunk in relay.opened.chunks():
            record.first_event()
            if check:
                if len(head) < 8192:
                    head += chunk[: 8192 - len(head)]
                tail = (tail + chunk[-tail_limit:])[-tail_limit:]
                if kept is not None:
                    kept += chunk
                    if len(kept) > keep_limit:
                        kept = None
            if held:
                yield held
            held = scrubber.feed(chunk)
        rest = scrubber.end()
        held = (held or b"") + rest if held is not None or rest else None
        if check and head:  # an empty body (a 204) has nothing to cut
            whole, value = whole_json(head, tail, bytes(kept) if kept is not None else None)
            if not whole and is_json:
                turn.broke("upstream_body_incomplete")
                log.warning("provider %s sent a JSON body that ends early", relay.route.provider.name)
                raise BodyBroken(record.error_code)
            if scan:
                scan_json_response(head, tail, value if whole else INVALID, record.outcome)
        await turn.finish()
        if held is not None:
            yield held
    except TransportError as exc:
        turn.broke("upstream_stream_error")
        log.warning("provider %s body broke: %r", relay.route.provider.name, exc)
        raise BodyBroken(record.error_code) from exc
    except (asyncio.CancelledError, GeneratorExit):
        turn.gone()  # also after the bookkeeping: the body's last chunk was held back
        raise
    finally:
        await relay.opened.close()
        turn.submit()
