"""The ASGI handler for /v1: Django's, without the admin's middleware and per-request thread hops.

Django's ``ASGIHandler`` runs every request inside its own thread-sensitive context, fires the
request_started/finished signals through ``sync_to_async`` and passes through the session, CSRF and auth
middleware that only the admin needs. The API views touch no database connection in the event loop
(configuration comes from in-memory snapshots, the request log is written by its own thread), so this
handler skips all of that, and enforces the body size limit while the body is being received.
"""

import asyncio
import logging
import tempfile
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, set_script_prefix

from proxy.common.labels import endpoint_of
from proxy.common.wire import WireError
from proxy.governance.auth import authenticate, presented_key
from proxy.http.relay import BodyBroken
from proxy.http.views import error_response, max_body_error, not_found
from proxy.server.ended_early import ended_early
from proxy.turn import Turn

log = logging.getLogger("sluice.http")


class BodyTooLarge(Exception):
    pass


class ApiHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = self._get_response_or_json_error

    async def _get_response_or_json_error(self, request: HttpRequest) -> HttpResponse:
        """Django answers an unexpected exception with an HTML page; /v1 clients get an OpenAI error."""
        try:
            return await self._get_response_async(request)
        except Resolver404:
            # A path no pattern of proxy/http/urls.py matches ("/v1" itself): the catch-all's JSON 404.
            return await not_found(request)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            error = WireError(
                500, "internal_error", "The gateway failed to serve this request.", None, "server_error"
            )
            turn = getattr(request, "turn", None)
            if turn is not None and not turn.record.submitted:
                turn.refuse(error)
            return error_response(error)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.handle(scope, receive, send)

    async def read_body(self, receive: Any) -> Any:
        limit = settings.SLUICE_MAX_BODY_BYTES
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                body_file.close()
                raise BodyTooLarge()
            if chunk:
                body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        declared = next((v for k, v in scope.get("headers") or () if k == b"content-length"), None)
        try:
            if declared is not None and int(declared) > settings.SLUICE_MAX_BODY_BYTES:
                raise BodyTooLarge()
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        except (BodyTooLarge, ValueError):
            await self.send_response(await too_large(scope), send)
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response_ = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response_, send)
            return

        async def process() -> bool:
            """Whether the response was ended before its body's end."""
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except BodyBroken:
                # Logged by the relay. Returning before the body's end makes the server close the
                # connection without it: the client cannot take what it got for a whole answer.
                return True
            finally:
                # Whether the body was sent, failed or never started (a streaming body's generator may
                # never have run): the turn ends here, its row written and what it took given back.
                await close_turn(request)
            return False

        # A client that goes away cancels the view, and with it the upstream request.
        listener = asyncio.ensure_future(self.listen_for_disconnect(receive))
        worker = asyncio.ensure_future(process())
        try:
            await asyncio.wait((listener, worker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (worker, listener):
                if not task.done():
                    task.cancel()
                    try:
                        await task
                    except (asyncio.CancelledError, RequestAborted):
                        pass
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                log.error(
                    "unhandled error in %s %s", scope["method"], scope["path"], exc_info=worker.exception()
                )
            elif worker.done() and not worker.cancelled() and worker.result():
                ended_early.set(True)  # in the server's task: its "without completing" line is ours
            if listener.done() and not listener.cancelled():
                listener.exception()  # RequestAborted on disconnect: expected, retrieved so it is not logged
            body_file.close()
            if worker.cancelled():  # the client left while the view was still deciding
                await close_turn(request)


async def too_large(scope: dict) -> HttpResponse:
    """A body over the limit is not read, but the key is in the headers: the row names whose it was."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
    client = await authenticate(presented_key(headers))
    error = Turn.refusal(
        max_body_error(),
        scope=scope,
        client=client,
        transport="http",
        endpoint=endpoint_of(scope["method"], scope["path"]),
    )
    response = error_response(error)
    response["Connection"] = "close"
    return response


async def close_turn(request: HttpRequest) -> None:
    """The request's turn (``proxy.http.views`` puts it on ``request.turn``), if it has one, ends: a turn
    whose client left before its response streamed is logged as 499, its upstream freed, its limits
    released."""
    turn: Turn | None = getattr(request, "turn", None)
    if turn is not None:
        await turn.close()
