"""Serving the process: uvicorn's options and WebSocket protocol, lifecycle, probes, drain."""
