"""What an HTTP API of Warren's adds to FastAPI: the trace id on every answer, a 503 (not a
500) while the database is away, an OPTIONS that names every method a path takes -- and the
limits of docs/14-security.md: a rate per client address (429), error bodies that neither echo
the input nor leak internals, 400 for a body that is not JSON, a short reason with each 413."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.ratelimit import TokenBuckets, retry_after

log = structlog.get_logger(__name__)

# An error answer stays short whatever the request: at most this many errors, each part of
# their location and each message cut to these lengths.
MAX_ERRORS = 20
MAX_LOC_PART = 100
MAX_MESSAGE = 200
# Health probes and metrics are never rate limited: an orchestrator, or Prometheus, must always
# get its answer.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


# --8<-- [start:trace-id-middleware]
class TraceIdHeader:
    """ASGI middleware: adds ``X-Trace-Id`` (the request's trace) to every HTTP answer.

    A plain ASGI wrapper rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` runs each request through extra tasks and streams, a cost paid on
    every ``POST /orders``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_trace_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                context = trace.get_current_span().get_span_context()
                if context.is_valid:
                    headers = MutableHeaders(scope=message)
                    headers["X-Trace-Id"] = format(context.trace_id, "032x")
            await send(message)

        await self.app(scope, receive, send_with_trace_id)
        # --8<-- [end:trace-id-middleware]


# --8<-- [start:database-unavailable]
async def database_unavailable(request: Request, exc: Exception) -> Response:
    """The database is away (a failover, a restart): a clear 503 to retry, not a 500.
    A client that retries with its Idempotency-Key gets one order, whatever happened."""
    if isinstance(exc, ConnectionFailure) or getattr(exc, "timeout", False):
        log.warning("database unavailable", path=request.url.path, error=repr(exc))
        advice = "retry with the same Idempotency-Key" if request.method == "POST" else "retry"
        return JSONResponse(
            {"detail": f"the database is not answering; {advice}"},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    raise exc
    # --8<-- [end:database-unavailable]


# --8<-- [start:body-size-limit]
class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit. An HTTPException, so that
    FastAPI, reading the body, hands it on as it is (any other error there becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: a body larger than ``limit`` bytes is refused with 413 before it is
    parsed -- at once when its Content-Length says so, else as soon as the bytes received pass
    the limit (a chunked body has no Content-Length). The rest is never read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await self.refuse(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLargeError(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLargeError:
            if started:
                raise
            await self.refuse(scope, receive, send)  # read outside FastAPI's handlers

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await body_too_large(Request(scope), BodyTooLargeError(self.limit))
        await answer(scope, receive, send)
        # --8<-- [end:body-size-limit]


# --8<-- [start:address-rate-limit]
class AddressRateLimit:
    """ASGI middleware: a token bucket per client address; past it, 429 with ``Retry-After``.

    The address is the socket's peer, as the server reports it: a proxy's ``X-Forwarded-For``
    counts only where the server is told to trust that proxy (shared/runner.py).
    """

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app, self.buckets = app, buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "unknown")
        if not wait:
            await self.app(scope, receive, send)
            return
        seconds = retry_after(wait)
        answer = JSONResponse(
            {"detail": f"too many requests from this address; retry after {seconds} s"},
            status_code=429,
            headers={"Retry-After": seconds},
        )
        await answer(scope, receive, send)
        # --8<-- [end:address-rate-limit]


# --8<-- [start:error-bodies]
def _brief(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as a client needs it: where, what, which kind -- not the ``input``
    (the whole offending value), nor ``ctx`` and ``url``."""
    loc = [part if isinstance(part, int) else str(part)[:MAX_LOC_PART] for part in error["loc"]]
    msg = str(error.get("msg", ""))
    if error.get("type") == "json_invalid":
        msg = f"the body is not JSON: {(error.get('ctx') or {}).get('error', msg)}"
    return {"loc": loc, "msg": msg[:MAX_MESSAGE], "type": str(error.get("type"))[:MAX_LOC_PART]}


async def invalid_request(request: Request, exc: Exception) -> Response:
    """422 for a request that fails validation; 400 for a body that is not JSON at all."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    not_json = any(error.get("type") == "json_invalid" for error in errors)
    return JSONResponse(
        {"detail": [_brief(error) for error in errors[:MAX_ERRORS]]},
        status_code=400 if not_json else 422,
    )


async def body_too_large(request: Request, exc: Exception) -> Response:
    """413 with the reason, as JSON like every other error."""
    return JSONResponse({"detail": getattr(exc, "detail", "request body too large")}, 413)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A generic 500: what went wrong stays in the log and the trace, under the X-Trace-Id."""
    context = trace.get_current_span().get_span_context()
    headers = {"X-Trace-Id": format(context.trace_id, "032x")} if context.is_valid else {}
    return JSONResponse({"detail": "internal error"}, status_code=500, headers=headers)
    # --8<-- [end:error-bodies]


def answer_options(app: FastAPI) -> None:
    """OPTIONS names every method the path takes. (Starlette's default answers 405 with the
    methods of the first route that matches the path alone: POST for /orders.)"""

    @app.options("/{path:path}", include_in_schema=False, status_code=204)
    async def allowed_methods(path: str) -> Response:
        methods = [
            method
            for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
            if any(
                route.matches({"type": "http", "path": f"/{path}", "method": method})[0]
                == Match.FULL
                for route in app.router.routes
            )
        ]
        if not methods:
            return Response(status_code=404)
        return Response(status_code=204, headers={"Allow": ", ".join([*methods, "OPTIONS"])})


def serve_http(
    app: FastAPI, *, max_body_bytes: int | None = None, per_address: TokenBuckets | None = None
) -> FastAPI:
    """Warren's HTTP behaviour on ``app``: 503 while the database is away, OPTIONS, the trace
    id on every answer, a server span per request, short error bodies (400, 422, 500) and, if
    given, a body size limit (413) and a rate limit per client address (429)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app.add_exception_handler(PyMongoError, database_unavailable)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(413, body_too_large)
    app.add_exception_handler(Exception, internal_error)
    answer_options(app)
    # The last added runs first: the rate limit refuses before the body is even looked at.
    if max_body_bytes is not None:
        app.add_middleware(BodySizeLimit, limit=max_body_bytes)
    if per_address is not None:
        app.add_middleware(AddressRateLimit, buckets=per_address)
    # --8<-- [start:trace-id-header]
    # Every answer names its trace: paste the X-Trace-Id into Jaeger's search box.
    app.add_middleware(TraceIdHeader)
    # No spans for health probes and Prometheus' scrapes (a trace of their own every few
    # seconds), nor for each ASGI send/receive (noise in every trace).
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
    )
    # --8<-- [end:trace-id-header]
    return app
