"""WebSocket ingress: a client connection, its lanes, the relaying of their turns, its local cache."""
