"""The upstream transports: pooled HTTP, a WebSocket per client connection, lanes on one socket."""
