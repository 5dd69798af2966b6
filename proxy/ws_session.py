"""The WebSocket session as callers outside the ingress know it (the provider test): a connection."""

from proxy.ws_cache import as_items
from proxy.ws_connection import Connection as Session

__all__ = ["Session", "as_items"]
