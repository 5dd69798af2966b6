"""Human, translated labels for the codes the request log stores (endpoints and error codes); transports
and fallback reasons carry theirs as field choices."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class Endpoint(models.TextChoices):
    RESPONSES = "responses", _("Create a response")
    COMPACT = "compact", _("Compact a conversation")
    INPUT_TOKENS = "input_tokens", _("Count input tokens")
    RETRIEVE = "retrieve", _("Retrieve a response")
    DELETE = "delete", _("Delete a response")
    CANCEL = "cancel", _("Cancel a response")
    INPUT_ITEMS = "input_items", _("List input items")
    MODELS = "models", _("List models")
    MODEL = "model", _("Retrieve a model")
    PROVIDER_TEST = "provider_test", _("Provider test")
    UNKNOWN = "unknown", _("Unknown endpoint")


ERROR_LABELS = {
    "invalid_api_key": _("Missing, invalid, disabled or expired API key"),
    "invalid_json": _("The body is not valid JSON"),
    "invalid_type": _("A parameter has the wrong type"),
    "invalid_path": _("The path is not valid"),
    "invalid_response_id": _("The response id is not valid"),
    "missing_required_parameter": _("A required parameter is missing"),
    "method_not_allowed": _("Method not allowed"),
    "request_too_large": _("The request body is too large"),
    "not_found": _("Unknown endpoint"),
    "model_not_found": _("No provider serves the model"),
    "no_provider": _("No provider is enabled"),
    "previous_response_not_found": _("The previous response was not found"),
    "websocket_connection_limit_reached": _("The WebSocket connection reached its age limit"),
    "too_many_queued_requests": _("Too many turns queued on one WebSocket"),
    "websockets_disabled": _("Client WebSockets are turned off"),
    "unsupported_frame": _("Binary WebSocket frame"),
    "internal_error": _("Internal error of the gateway"),
    "rate_limit_exceeded": _("Rate limit exceeded"),
    "insufficient_quota": _("Budget spent"),
    "model_not_allowed": _("Model not allowed for the key"),
    "team_disabled": _("The key's team is disabled"),
    "invalid_stream_id": _("The stream id is not valid"),
    "response_not_found": _("The response was not found"),
    "unsupported_event_type": _("Unsupported WebSocket event type"),
    "missing_event_type": _("WebSocket event without a type"),
    "unsupported_parameter": _("Unsupported parameter"),
    "websocket_stream_limit_reached": _("Too many streams on one WebSocket"),
    "server_restarting": _("The node was restarting"),
    "upstream_timeout": _("The upstream did not answer in time"),
    "upstream_unavailable": _("No upstream could serve the request"),
    "upstream_error": _("The upstream answered with an error"),
    "upstream_stream_error": _("The upstream stream broke"),
    "upstream_stream_incomplete": _("The upstream stream ended early"),
    "upstream_not_streaming": _("The upstream did not stream"),
    "upstream_body_incomplete": _("The upstream body ended early"),
    "invalid_upstream_body": _("The upstream sent an unreadable body"),
    "invalid_upstream_event": _("The upstream sent an unreadable event"),
    "client_disconnected": _("The client went away"),
    "incomplete": _("The response is incomplete"),
}


def error_label(code: str) -> str:
    """The label of a code the gateway knows; an upstream's own code as it came."""
    if not code:
        return ""
    label = ERROR_LABELS.get(code)
    return f"{label} ({code})" if label is not None else code


def endpoint_label(code: str) -> str:
    try:
        return str(Endpoint(code).label)
    except ValueError:
        return code


def endpoint_of(method: str, path: str) -> str:
    """The endpoint a /v1 request names, also when it was refused before reaching its view."""
    parts = path.removeprefix("/v1/").strip("/").split("/")
    if parts == ["models"]:
        return Endpoint.MODELS
    if parts[0] == "models":
        return Endpoint.MODEL
    if not parts or parts[0] != "responses":
        return Endpoint.UNKNOWN
    if len(parts) == 1:
        return Endpoint.RESPONSES
    if len(parts) == 2:
        if parts[1] in ("compact", "input_tokens"):
            return parts[1]
        return Endpoint.DELETE if method == "DELETE" else Endpoint.RETRIEVE
    if len(parts) == 3 and parts[2] in ("cancel", "input_items"):
        return parts[2]
    return Endpoint.UNKNOWN
