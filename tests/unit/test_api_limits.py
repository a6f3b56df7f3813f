"""The order API's input and resource limits, attacked in process: the real app (routes, error
handlers, middleware) over the in-memory shop, through httpx's ASGI transport. No broker, no
server -- tests/e2e/test_api_limits.py repeats the attacks that depend on the real server
(uvicorn reading the socket, the client address it reports)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from services.in_memory import InMemoryShop, open_shop
from services.inventory.catalog import CatalogItem
from services.order import api, handlers
from services.order.settings import OrderSettings
from shared import auth
from shared.http import MAX_ERRORS
from shared.service import Runtime
from shared.testing.memory_mongo import AsyncMongomockDatabase

LIMIT = 64 * 1024
TWO_MB = 2 * 1024 * 1024
# The key these apps verify bearer tokens with (tests/unit/test_api_auth.py signs with others).
TOKEN_SECRET = "the-unit-tests-own-key-0123456789abcdef"


@pytest.fixture
async def shop() -> InMemoryShop:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"limits_{service}"))

    return await open_shop(database, catalog=[CatalogItem("RABBIT-PLUSH", "Plush", 1999, 1000)])


@contextlib.asynccontextmanager
async def _no_lifespan(_: Any) -> AsyncIterator[None]:
    yield


def order_api(shop: InMemoryShop, **settings: Any) -> FastAPI:
    """The order API as `create_app` builds it, its dependencies from the in-memory shop."""
    # Unvalidated: only the API's own settings matter here (not the payment key, say).
    configured = OrderSettings.model_construct(
        **{"max_body_bytes": LIMIT, "api_token_secret": SecretStr(TOKEN_SECRET), **settings}
    )
    return api.create_api(cast(Runtime, None), shop.order, _no_lifespan, configured)


def signed_in(customer: str = "bugs-bunny", role: auth.Role = auth.CUSTOMER) -> dict[str, str]:
    """The Authorization header of ``customer`` (or an operator), for the app of ``order_api``."""
    return auth.bearer(customer, role, secret=TOKEN_SECRET)


@contextlib.asynccontextmanager
async def client_of(
    app: FastAPI, address: str = "203.0.113.7", customer: str = "bugs-bunny"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client from ``address``, signed in as ``customer`` (a request's own header wins)."""
    # raise_app_exceptions=False: see what the client gets, as over a real socket.
    transport = httpx.ASGITransport(app, raise_app_exceptions=False, client=(address, 40000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://order", headers=signed_in(customer)
    ) as client:
        yield client


@pytest.fixture
async def client(shop: InMemoryShop) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(order_api(shop)) as client:
        yield client


def body(**extra: Any) -> dict[str, Any]:
    return {"lines": [{"sku": "RABBIT-PLUSH", "quantity": 1}], "payment_token": "tok_visa", **extra}


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def orders_of(shop: InMemoryShop, customer: str) -> int:
    _, total = await shop.order.views.by_customer(customer, limit=1, offset=0)
    return total


# --- the body size: refused before it is read ----------------------------------------------------


class CountedBody:
    """A request body that counts how much of it the server asked for."""

    def __init__(self, total: int, chunk: int = 16 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        prefix = json.dumps(body())[:-1].encode() + b', "padding": "'
        yield prefix
        self.sent += len(prefix)
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"x" * self.chunk
        yield b'"}'


async def test_a_2mb_body_with_padding_in_an_unknown_field_is_refused_with_413(
    client: httpx.AsyncClient, shop: InMemoryShop
) -> None:
    padded = json.dumps(body(padding="x" * TWO_MB))
    response = await client.post(
        "/orders", content=padded, headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"the request body is larger than {LIMIT} bytes"}
    assert await orders_of(shop, "bugs-bunny") == 0


async def test_a_body_announced_too_large_is_refused_before_a_byte_of_it_is_read(
    client: httpx.AsyncClient,
) -> None:
    stream = CountedBody(TWO_MB)
    response = await client.post(
        "/orders",
        content=stream,
        headers={**key(), "content-type": "application/json", "content-length": str(TWO_MB)},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"the request body is larger than {LIMIT} bytes"}
    assert stream.sent == 0


async def test_a_streamed_body_without_length_is_cut_off_just_past_the_limit(
    client: httpx.AsyncClient, shop: InMemoryShop
) -> None:
    stream = CountedBody(TWO_MB)
    response = await client.post(
        "/orders", content=stream, headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"the request body is larger than {LIMIT} bytes"}
    assert stream.sent <= LIMIT + 2 * stream.chunk  # stopped reading, not buffered 2 MB
    assert await orders_of(shop, "bugs-bunny") == 0


async def test_a_body_under_the_limit_is_still_read_and_accepted(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders", json=body(), headers=key())
    assert response.status_code == 202, response.text


# --- error bodies: no echo, no internals ------------------------------------------------------


async def test_an_unknown_top_level_field_under_the_limit_is_a_422_that_names_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders", json=body(padding="x" * 1000), headers=key())
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "loc": ["body", "padding"],
                "msg": "Extra inputs are not permitted",
                "type": "extra_forbidden",
            }
        ]
    }


async def test_a_validation_error_does_not_echo_the_offending_value(
    client: httpx.AsyncClient,
) -> None:
    secret = "tok_" + "s3cr3t" * 9000  # about 54 KB, under the body limit
    response = await client.post("/orders", json=body(payment_token=secret), headers=key())
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert set(error) == {"loc", "msg", "type"}  # no input, ctx or url
    assert error["loc"] == ["body", "payment_token"] and error["type"] == "string_too_long"
    assert "s3cr3t" not in response.text
    assert len(response.content) < 500


async def test_a_flood_of_errors_and_a_huge_field_name_give_a_short_answer(
    client: httpx.AsyncClient,
) -> None:
    flood = {f"k{i}": 0 for i in range(4000)} | {"y" * 20_000: 0}
    response = await client.post("/orders", json=body(**flood), headers=key())
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert len(errors) <= MAX_ERRORS
    assert all(len(str(part)) <= 100 for error in errors for part in error["loc"])
    assert len(response.content) < 5000


async def test_a_body_that_is_not_json_is_a_400_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/orders", content=b"{nope", headers={**key(), "content-type": "application/json"}
    )
    assert response.status_code == 400
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["loc"] == ["body", 1]
    assert "Expecting property name" in error["msg"]


async def test_bytes_that_are_not_utf8_are_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders",
        content=b'{"a": "\xff\xfe"}',
        headers={**key(), "content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_json_that_fails_validation_stays_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=[1, 2], headers=key())
    assert response.status_code == 422
    assert "[1, 2]" not in response.text


@pytest.fixture
def failing_place_order(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot reach mongodb://admin:hunter2@db.internal:27017")

    monkeypatch.setattr(handlers, "place_order", explode)
    yield


@pytest.mark.usefixtures("failing_place_order")
async def test_an_unexpected_error_is_a_generic_500_without_its_text(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders", json=body(), headers=key())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "internal error"}
    assert "hunter2" not in response.text and "RuntimeError" not in response.text


# --- rate limits ------------------------------------------------------------------------------


async def test_one_address_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    shop: InMemoryShop,
) -> None:
    app = order_api(shop, requests_per_second_per_address=0.5, request_burst_per_address=3)
    async with client_of(app, "198.51.100.1") as flooder, client_of(app, "198.51.100.2") as other:
        answers = [(await flooder.get("/orders/nope")).status_code for _ in range(4)]
        assert answers == [404, 404, 404, 429]
        refused = await flooder.get("/orders", params={"customer_id": "bugs-bunny"})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"  # one token at 0.5/s, rounded up
        assert "too many requests" in refused.json()["detail"]
        assert (await other.get("/orders/nope")).status_code == 404


async def test_one_customer_over_its_order_rate_gets_429_and_no_order_is_placed(
    shop: InMemoryShop,
) -> None:
    app = order_api(shop, orders_per_minute_per_customer=6, order_burst_per_customer=2)
    async with client_of(app, "198.51.100.1") as first, client_of(app, "198.51.100.2") as second:
        assert (await first.post("/orders", json=body(), headers=key())).status_code == 202
        assert (await second.post("/orders", json=body(), headers=key())).status_code == 202
        # From another address, still the same customer: refused.
        refused = await first.post("/orders", json=body(), headers=key())
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "10"  # 6 a minute: one every 10 s
        assert "bugs-bunny" in refused.json()["detail"]
        daffy = {**key(), **signed_in("daffy-duck")}
        other = await first.post("/orders", json=body(), headers=daffy)
        assert other.status_code == 202
    assert await orders_of(shop, "bugs-bunny") == 2


async def test_the_default_limits_let_a_load_test_through(client: httpx.AsyncClient) -> None:
    """The defaults: a burst of 20 orders from one customer and one address, then 300 polls."""
    answers = await asyncio.gather(
        *(client.post("/orders", json=body(), headers=key()) for _ in range(20))
    )
    assert {a.status_code for a in answers} == {202}
    polls = [(await client.get("/orders/nope")).status_code for _ in range(300)]
    assert set(polls) == {404}


# --- push-back from the broker: 503, not a growing backlog ----------------------------------------


async def test_while_the_broker_pushes_back_a_new_order_is_a_503_and_a_retry_gets_its_order(
    shop: InMemoryShop,
) -> None:
    """The relay says the queues after it are full (shared/outbox.py, push-back): a new order
    is refused with Retry-After and nothing is recorded; an order accepted before is still
    answered (202, same id) when its request is retried with the same key."""
    accepted_key = key()
    async with client_of(order_api(shop)) as client:
        accepted = await client.post("/orders", json=body(), headers=accepted_key)
        assert accepted.status_code == 202
        shop.order.pushed_back = lambda: 2.4
        refused = await client.post("/orders", json=body(), headers=key())
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "3"
        assert "behind on its orders" in refused.json()["detail"]
        again = await client.post("/orders", json=body(), headers=accepted_key)
        assert (again.status_code, again.json()) == (202, accepted.json())
        shop.order.pushed_back = lambda: 0.0
        assert (await client.post("/orders", json=body(), headers=key())).status_code == 202
    assert await orders_of(shop, "bugs-bunny") == 2


def test_the_openapi_document_names_every_refusal(shop: InMemoryShop) -> None:
    paths = order_api(shop).openapi()["paths"]
    assert {"400", "401", "403", "413", "422", "429", "503"} <= set(
        paths["/orders"]["post"]["responses"]
    )
    assert "429" in paths["/orders"]["get"]["responses"]
    assert "429" in paths["/orders/{order_id}"]["get"]["responses"]
