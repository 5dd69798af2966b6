"""A response the gateway ends before its body's end on purpose (an upstream body that broke half-way,
already logged by the relay) makes uvicorn log "ASGI callable returned without completing response." as an
error. That line is the intended outcome, not a fault of the application: it is left out, once, for the
request that set the flag. Any other incomplete response is still logged.
"""

import logging
from contextvars import ContextVar

ended_early: ContextVar[bool] = ContextVar("sluice_ended_early", default=False)


class EndedEarlyOnPurpose(logging.Filter):
    """On ``uvicorn.error``: drops uvicorn's line about an incomplete response that was ended on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (ended_early.get() and record.msg == "ASGI callable returned without completing response.")


def install() -> None:
    """Idempotent; ``proxy/server/serving.py`` calls it for every server it configures."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, EndedEarlyOnPurpose) for f in logger.filters):
        logger.addFilter(EndedEarlyOnPurpose())
