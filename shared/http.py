"""What an HTTP API of Warren's adds to FastAPI: the trace id on every answer, a 503 (not a
500) while the database is away, and an OPTIONS that names every method a path takes."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)


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


def serve_http(app: FastAPI) -> FastAPI:
    """Warren's HTTP behaviour on ``app``: 503 while the database is away, OPTIONS, the trace
    id on every answer, and a server span per request."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app.add_exception_handler(PyMongoError, database_unavailable)
    answer_options(app)
    # --8<-- [start:trace-id-header]
    # Every answer names its trace: paste the X-Trace-Id into Jaeger's search box.
    app.add_middleware(TraceIdHeader)
    # No spans for health probes, nor for each ASGI send/receive (noise in every trace).
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
    )
    # --8<-- [end:trace-id-header]
    return app
