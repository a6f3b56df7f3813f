"""The order HTTP API. Thin: validate, call a use case, shape the answer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import pymongo
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    status,
)
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from services.order import handlers
from services.order.handlers import OrderDeps
from services.order.settings import OrderSettings
from shared import auth
from shared.auth import Principal
from shared.contracts import CUSTOMER_ID_MAX_LENGTH, CUSTOMER_ID_PATTERN, OrderLine
from shared.http import serve_http
from shared.metrics import metrics_endpoint
from shared.observability import ORDER_ID
from shared.outbox import outbox_stats
from shared.ratelimit import TokenBuckets, retry_after
from shared.service import Runtime, liveness, readiness


async def get_deps(request: Request) -> OrderDeps:
    # async: FastAPI runs a plain "def" dependency in a worker thread, once per request.
    return request.app.state.deps


Deps = Annotated[OrderDeps, Depends(get_deps)]


# --8<-- [start:authentication]
# In OpenAPI as the security scheme "bearerAuth": /docs gets its "Authorize" button.
# auto_error=False: a missing token gets Warren's 401 (below), with its challenge and reason.
BEARER = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="A token from `warren token <customer>` (`--operator` for an operator's).",
    auto_error=False,
)


def _unauthorized(reason: str, error: str | None = None) -> HTTPException:
    # RFC 6750: the challenge names the scheme, and why a token that was sent is refused.
    challenge = f'Bearer realm="warren", error="{error}"' if error else 'Bearer realm="warren"'
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": challenge},
    )


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    """The caller, as their bearer token says; 401 without a valid one."""
    if credentials is None:
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    try:
        return auth.verify(credentials.credentials, secret=request.app.state.token_secret)
    except auth.InvalidTokenError as exc:
        raise _unauthorized(f"invalid bearer token: {exc}", "invalid_token") from None


Caller = Annotated[Principal, Depends(authenticated)]


def forbidden(reason: str) -> HTTPException:
    """403: the caller is known, and may not do this (whatever the data)."""
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=reason,
        headers={"WWW-Authenticate": 'Bearer realm="warren", error="insufficient_scope"'},
    )
    # --8<-- [end:authentication]


router = APIRouter()

# A status poll should fail fast when the database is away (a clear 503, see app.py), not hold
# the client for the database client's whole 10 s timeout.
READ_TIMEOUT_SECONDS = 2.0
DATABASE_AWAY = {
    503: {"description": "The database did not answer in time; retry after Retry-After"}
}
RATE_LIMITED = {
    429: {"description": "Too many requests from this address; retry after Retry-After seconds"}
}
UNAUTHENTICATED = {
    401: {"description": "No bearer token, or one that is invalid or expired; the reason is given"}
}


class LineIn(OrderLine):
    model_config = ConfigDict(extra="forbid")


class PlaceOrderRequest(BaseModel):
    """What a client sends. Strict, unlike the message contracts: an unknown field in a request
    is a client's mistake, answered with a 422 that names it. The customer is not in it: it is
    the one the bearer token names (a body that still sends ``customer_id`` gets a 422 naming
    that field, rather than have it silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    lines: list[LineIn] = Field(min_length=1, max_length=50)
    payment_token: str = Field(
        min_length=1,
        max_length=64,
        description="tok_visa always succeeds; tok_chargeDeclined always declines.",
        examples=["tok_visa"],
    )


class OrderAccepted(BaseModel):
    order_id: str
    status: str = "PENDING"
    href: str


class HistoryEntry(BaseModel):
    version: int
    type: str
    occurred_at: Any


class OrderView(BaseModel):
    order_id: str
    customer_id: str
    status: str
    lines: list[dict[str, Any]]
    total_cents: int
    currency: str
    version: int
    cancel_reason: str | None = None
    placed_at: Any
    updated_at: Any
    history: list[HistoryEntry]


class OrderPage(BaseModel):
    items: list[OrderView]
    total: int
    limit: int
    offset: int


def _view(doc: dict[str, Any]) -> OrderView:
    return OrderView(order_id=doc["_id"], **{k: v for k, v in doc.items() if k != "_id"})


# --8<-- [start:order-quota]
def within_order_quota(request: Request, customer_id: str) -> None:
    """Refuse (429) an order beyond the customer's rate. The customer is the authenticated
    one, from the bearer token."""
    wait = request.app.state.order_quota.take(customer_id)
    if wait:
        seconds = retry_after(wait)
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many orders for customer {customer_id}; retry after {seconds} s",
            headers={"Retry-After": seconds},
        )
        # --8<-- [end:order-quota]


def _unprocessable(loc: list[Any], msg: str, kind: str) -> HTTPException:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": loc, "msg": msg, "type": kind}],
    )


@router.post(
    "/orders",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=OrderAccepted,
    responses={
        400: {"description": "The body is not JSON (or not UTF-8 text); the reason is given"},
        **UNAUTHENTICATED,
        403: {"description": "The token is an operator's: only customers place orders"},
        413: {"description": "The body is larger than the limit (64 KiB by default)"},
        422: {
            "description": "Invalid request, unknown SKU, Idempotency-Key missing, or reused "
            "with a different body"
        },
        429: {
            "description": "Too many requests from this address, or orders for this "
            "customer; retry after Retry-After seconds"
        },
        503: {
            "description": "Inventory or the database did not answer in time, or the shop is "
            "behind on its orders (its queues are full); retry after Retry-After with the same "
            "Idempotency-Key"
        },
    },
)
async def place_order(
    caller: Caller,
    body: PlaceOrderRequest,
    deps: Deps,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str,
        Header(
            min_length=1,
            max_length=200,
            description="Required. A fresh random value per order (a UUID), sent again "
            "unchanged when the request is retried: the retry then gets the same order back "
            "instead of placing a second one.",
        ),
    ],
) -> OrderAccepted | JSONResponse:
    """Accept an order (202). It is then reserved, paid and confirmed or cancelled asynchronously.

    Retry a request that failed or got no answer (a timeout, a 5xx, a 503) with the *same*
    ``Idempotency-Key``: if the order was recorded, you get it back (202, same id).
    The order is the bearer token's customer's.
    """
    if caller.is_operator:
        raise forbidden("only customers place orders; this token is an operator's")
    within_order_quota(request, caller.subject)
    command = handlers.PlaceOrder(
        customer_id=caller.subject, lines=tuple(body.lines), payment_token=body.payment_token
    )
    try:
        placed = await handlers.place_order(command, deps, idempotency_key=idempotency_key)
    except handlers.UnknownSkuError as exc:
        index = {line.sku: i for i, line in enumerate(body.lines)}
        raise _unprocessable(
            ["body", "lines", index.get(exc.skus[0], 0), "sku"], str(exc), "unknown_sku"
        ) from exc
    except handlers.IdempotencyConflictError as exc:
        raise _unprocessable(
            ["header", "idempotency-key"],  # as FastAPI names a missing one
            "this Idempotency-Key was used with a different request body",
            "idempotency_key_reused",
        ) from exc
    # --8<-- [start:quote-unavailable]
    except handlers.QuoteUnavailableError as exc:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": f"inventory is not answering: {exc}"},
            headers={"Retry-After": "2"},
        )
    # --8<-- [end:quote-unavailable]
    except handlers.BackloggedError as exc:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": str(exc)},
            headers={"Retry-After": retry_after(exc.retry_after)},
        )
    href = f"/orders/{placed.order_id}"
    response.headers["Location"] = href
    return OrderAccepted(order_id=placed.order_id, href=href)


@router.get(
    "/orders/{order_id}",
    response_model=OrderView,
    responses={
        **UNAUTHENTICATED,
        404: {"description": "No order with this id that the caller may see"},
        **RATE_LIMITED,
        **DATABASE_AWAY,
    },
)
async def get_order(order_id: str, deps: Deps, caller: Caller) -> OrderView:
    """The order's status, lines, total and the history of its events. A customer sees their
    own orders only: another's is "not found", as if it did not exist. An operator sees any."""
    trace.get_current_span().set_attribute(ORDER_ID, order_id)
    with pymongo.timeout(READ_TIMEOUT_SECONDS):
        doc = await deps.views.get(order_id)
    # The same 404 for someone else's order as for none: the answer confirms no id.
    if doc is None or not (caller.is_operator or doc["customer_id"] == caller.subject):
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return _view(doc)


def customer_to_list(caller: Principal, customer_id: str | None) -> str:
    """Whose orders ``GET /orders`` lists: a customer's own (naming another is 403, whether
    or not that customer exists); any customer an operator names (422 if none)."""
    if caller.is_operator:
        if customer_id is None:
            raise _unprocessable(
                ["query", "customer_id"], "an operator names the customer", "missing"
            )
        return customer_id
    if customer_id not in (None, caller.subject):
        raise forbidden("a customer lists only their own orders")
    return caller.subject


@router.get(
    "/orders",
    response_model=OrderPage,
    responses={
        **UNAUTHENTICATED,
        403: {"description": "A customer asked for another customer's orders"},
        **RATE_LIMITED,
        **DATABASE_AWAY,
    },
)
async def list_orders(
    deps: Deps,
    caller: Caller,
    customer_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=CUSTOMER_ID_MAX_LENGTH,
            pattern=CUSTOMER_ID_PATTERN,
            description="Whose orders: a customer's own by default (another's is 403); "
            "required of an operator.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> OrderPage:
    """A customer's orders, newest first."""
    customer = customer_to_list(caller, customer_id)
    with pymongo.timeout(READ_TIMEOUT_SECONDS):
        items, total = await deps.views.by_customer(customer, limit=limit, offset=offset)
    return OrderPage(items=[_view(doc) for doc in items], total=total, limit=limit, offset=offset)


@router.get("/healthz", tags=["health"], responses={503: {"description": "Broker connection lost"}})
async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers, and so does its broker connection."""
    code, body = await liveness(request.app.state.runtime)
    return JSONResponse(body, status_code=code)


@router.get(
    "/readyz",
    tags=["health"],
    responses={503: {"description": "The broker or the database does not answer"}},
)
async def readyz(request: Request, deps: Deps) -> JSONResponse:
    """Readiness: the broker and the database answer. The outbox is shown, not judged:
    parked events need an operator (``warren outbox``), not a restart."""
    code, body = await readiness(request.app.state.runtime)
    if body["database"]:
        body["outbox"] = await outbox_stats(deps.store.events)
    return JSONResponse(body, status_code=code)


def create_api(
    runtime: Runtime,
    deps: OrderDeps,
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]],
    settings: OrderSettings,
) -> FastAPI:
    """The order service's FastAPI app: these routes, the shared lifespan and HTTP behaviour,
    and the limits of ``settings`` (body size, rates per address and per customer)."""
    # --8<-- [start:create-api-limits]
    app = FastAPI(
        title="Warren — order service",
        description="Place orders and follow them through the saga. Everything after the 202 "
        "happens over RabbitMQ.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime, app.state.deps = runtime, deps
    app.state.token_secret = settings.api_token_secret  # verifies the bearer tokens
    app.state.order_quota = TokenBuckets(
        settings.orders_per_minute_per_customer / 60, settings.order_burst_per_customer
    )
    app.include_router(router)
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)  # as every service
    per_address = TokenBuckets(
        settings.requests_per_second_per_address, settings.request_burst_per_address
    )
    return serve_http(app, max_body_bytes=settings.max_body_bytes, per_address=per_address)
    # --8<-- [end:create-api-limits]
