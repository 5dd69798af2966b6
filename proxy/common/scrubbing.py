"""Secrets out of upstream text before it reaches a client, a log line, a request-log row or the admin:
the provider's own key however it is escaped, and anything key-shaped."""

import functools
import re
from typing import Any

from proxy.common.wire import Event

_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*.]{6,}")


def scrub(text: str, provider_key: str = "") -> str:
    """Remove secrets from upstream text before it reaches a client, a log line or the admin: the
    provider's key as written or JSON-escaped (``\\u0073k-...``, ``\\/``), and anything shaped like a key."""
    if provider_key:
        text = text.replace(provider_key, "***")
        if "\\" in text:
            text = key_pattern(provider_key).sub("***", text)
    return _SECRET.sub(r"\1***", text)


def _escapes(char: str) -> list[str]:
    """The ways JSON may write one character of a key."""
    code = ord(char)
    ways = [re.escape(char)]
    if code < 0x10000:
        ways.append(
            "\\\\u" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in f"{code:04x}")
        )
    short = {'"': '\\\\"', "\\": "\\\\\\\\", "/": "\\\\/"}.get(char)
    if short:
        ways.append(short)
    return ways


@functools.lru_cache(maxsize=64)
def key_pattern(provider_key: str) -> re.Pattern[str]:
    """The provider's key in JSON text, each character written as itself or escaped."""
    return re.compile("".join("(?:" + "|".join(_escapes(c)) + ")" for c in provider_key))


@functools.lru_cache(maxsize=64)
def key_bytes_pattern(provider_key: str) -> re.Pattern[bytes]:
    return re.compile(key_pattern(provider_key).pattern.encode())


def scrub_value(value: Any, provider_key: str) -> Any:
    """A parsed JSON value with every string in it scrubbed (keys of objects included)."""
    if isinstance(value, str):
        return scrub(value, provider_key)
    if isinstance(value, dict):
        return {scrub(str(k), provider_key): scrub_value(v, provider_key) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, provider_key) for v in value]
    return value


class BodyScrubber:
    """Scrubs the provider's key from a body relayed in chunks: the last bytes of each chunk wait for the
    next, so that a key cut between two chunks is still found."""

    def __init__(self, provider_key: str) -> None:
        self.pattern = key_bytes_pattern(provider_key) if provider_key else None
        self.hold = 6 * len(provider_key.encode()) + 8  # the longest escaped writing of the key
        self.buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.pattern is None:
            return chunk
        self.buffer = self.pattern.sub(b"***", self.buffer + chunk)
        out, self.buffer = self.buffer[: -self.hold], self.buffer[-self.hold :]
        return out

    def end(self) -> bytes:
        out, self.buffer = self.buffer, b""
        return out


# Upstream events that may carry an upstream's own diagnostics (an echoed header, a key in a message).
SCRUBBED_EVENTS = frozenset({"error", "response.failed"})


def scrub_event(data: str, provider_key: str) -> str:
    """An error or failed event's JSON text without secrets; other events are never passed here."""
    if provider_key:
        # Inside JSON text the key may appear escaped (quotes, backslashes, non-ASCII, any \\u escape).
        data = key_pattern(provider_key).sub("***", data)
    return scrub(data, provider_key)


def scrubbed_sse(event: Event, provider_key: str) -> Event:
    if event.type not in SCRUBBED_EVENTS:
        return event
    data = scrub_event(event.data, provider_key)
    return event if data == event.data else Event(event.type, data)
