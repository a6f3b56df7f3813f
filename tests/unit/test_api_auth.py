"""Who may do what with the order API, attacked in process: the real app over the in-memory shop
(as tests/unit/test_api_limits.py builds it), through httpx's ASGI transport.

Customers sign in with a bearer token (shared/auth.py); the order is the token's customer's,
never the body's; a customer sees only their own orders (another's is 404, as if there were
none) and lists only their own (403 for another's); an operator reads anyone's and places
nothing. tests/e2e/test_api_auth.py repeats the attacks that need the whole system.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from cli import main
from loadtests import tokens as load_tokens
from services.in_memory import InMemoryShop, open_shop
from services.inventory.catalog import CatalogItem
from shared import auth
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.unit.test_api_limits import (
    TOKEN_SECRET,
    body,
    client_of,
    key,
    order_api,
    orders_of,
    signed_in,
)

ANOTHER_KEY = "someone-elses-key-that-is-long-enough-000"
NOW = datetime.now(UTC)


@pytest.fixture
async def shop() -> InMemoryShop:
    databases: dict[str, AsyncMongomockDatabase] = {}

    def database(service: str) -> AsyncMongomockDatabase:
        return databases.setdefault(service, AsyncMongomockDatabase(f"auth_{service}"))

    return await open_shop(database, catalog=[CatalogItem("RABBIT-PLUSH", "Plush", 1999, 1000)])


@pytest.fixture
def app(shop: InMemoryShop) -> FastAPI:
    return order_api(shop)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(**changes: Any) -> dict[str, Any]:
    """A token's claims. Valid for a day: the forged tokens below are made when the tests are
    collected, and a whole `make test` may run for many minutes before they are used."""
    now = int(datetime.now(UTC).timestamp())
    base = {
        "sub": "bugs-bunny",
        "role": "customer",
        "iss": "warren",
        "iat": now,
        "exp": now + 24 * 3600,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


async def place(app: FastAPI, customer: str) -> str:
    async with client_of(app, customer=customer) as client:
        response = await client.post("/orders", json=body(), headers=key())
    assert response.status_code == 202, response.text
    return response.json()["order_id"]


async def answer(app: FastAPI, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    """One request with exactly ``headers`` (no token unless they hold one)."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
        if method == "POST":
            return await client.post(url, json=body(), headers={**key(), **headers})
        return await client.get(url, headers=headers)


def assert_refused_401(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"detail": reason}


# --- authentication: no token, or a token that proves nothing: 401 ------------------------------

ROUTES = [("POST", "/orders"), ("GET", "/orders"), ("GET", "/orders/some-order")]


@pytest.mark.parametrize(("method", "url"), ROUTES)
async def test_a_request_without_a_token_is_refused_with_401_and_a_bearer_challenge(
    app: FastAPI,
    shop: InMemoryShop,
    method: str,
    url: str,
) -> None:
    response = await answer(app, method, url, {})
    assert_refused_401(response, "a bearer token is required (Authorization: Bearer <token>)")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="warren"'
    assert await orders_of(shop, "bugs-bunny") == 0


async def test_another_scheme_than_bearer_is_no_token(app: FastAPI) -> None:
    response = await answer(app, "GET", "/orders", {"Authorization": "Basic YnVnczpidW5ueQ=="})
    assert_refused_401(response, "a bearer token is required (Authorization: Bearer <token>)")


FORGED = {
    "signed with another key": (
        auth.issue("bugs-bunny", secret=ANOTHER_KEY),
        "the token's signature does not match",
    ),
    "expired": (
        auth.issue(
            "bugs-bunny", secret=TOKEN_SECRET, now=NOW - timedelta(hours=2), ttl=timedelta(hours=1)
        ),
        "the token has expired",
    ),
    "alg none (unsigned)": (
        jwt.encode(claims(), key=None, algorithm="none"),
        "the token's algorithm is not accepted",
    ),
    "HS512 with the right key": (
        jwt.encode(claims(), TOKEN_SECRET + TOKEN_SECRET, algorithm="HS512"),
        "the token's algorithm is not accepted",
    ),
    "issued by someone else": (
        jwt.encode(claims(iss="evil"), TOKEN_SECRET, algorithm="HS256"),
        "the token is not Warren's",
    ),
    "without a role": (
        jwt.encode(claims(role=None), TOKEN_SECRET, algorithm="HS256"),
        "the token lacks a required claim",
    ),
    "without an expiry": (
        jwt.encode(claims(exp=None), TOKEN_SECRET, algorithm="HS256"),
        "the token lacks a required claim",
    ),
    "an unknown role": (
        jwt.encode(claims(role="admin"), TOKEN_SECRET, algorithm="HS256"),
        "the token's role is unknown",
    ),
    "a subject that is no customer id": (
        jwt.encode(claims(sub="victim@evil.example,x"), TOKEN_SECRET, algorithm="HS256"),
        "the token's subject is not a customer id",
    ),
    "issued in the future": (
        auth.issue("bugs-bunny", secret=TOKEN_SECRET, now=NOW + timedelta(hours=1)),
        "the token is not valid yet",
    ),
    "not a JWT": ("not-a-token", "the token is malformed"),
    "4 KB long": ("x" * 4096, "the token is too long"),
}


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
@pytest.mark.parametrize(("method", "url"), ROUTES)
async def test_a_token_that_proves_nothing_is_refused_with_401_and_the_reason(
    app: FastAPI,
    shop: InMemoryShop,
    method: str,
    url: str,
    forged: tuple[str, str],
) -> None:
    token, reason = forged
    response = await answer(app, method, url, bearer(token))
    assert_refused_401(response, f"invalid bearer token: {reason}")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="warren", error="invalid_token"'
    assert token[:40] not in response.text  # no echo
    assert await orders_of(shop, "bugs-bunny") == 0


# --- the customer comes from the token, never from the body -----------------------------------


async def test_a_customer_cannot_place_an_order_as_someone_else(
    app: FastAPI,
    shop: InMemoryShop,
) -> None:
    async with client_of(app, customer="daffy-duck") as attacker:
        response = await attacker.post(
            "/orders", json=body(customer_id="bugs-bunny"), headers=key()
        )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "customer_id"],
            "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        }
    ]
    assert await orders_of(shop, "bugs-bunny") == 0
    assert await orders_of(shop, "daffy-duck") == 0


async def test_the_order_is_the_token_customers(app: FastAPI, shop: InMemoryShop) -> None:
    order_id = await place(app, "daffy-duck")
    async with client_of(app, customer="daffy-duck") as daffy:
        view = (await daffy.get(f"/orders/{order_id}")).json()
    assert view["customer_id"] == "daffy-duck"
    assert await orders_of(shop, "daffy-duck") == 1


async def test_an_operator_places_no_orders(app: FastAPI, shop: InMemoryShop) -> None:
    response = await answer(app, "POST", "/orders", signed_in("ops", auth.OPERATOR))
    assert response.status_code == 403
    assert response.json() == {"detail": "only customers place orders; this token is an operator's"}
    assert await orders_of(shop, "ops") == 0


async def test_another_customers_idempotency_key_gets_a_422_not_their_order(
    app: FastAPI,
    shop: InMemoryShop,
) -> None:
    reused = key()
    async with client_of(app) as bugs, client_of(app, customer="daffy-duck") as daffy:
        assert (await bugs.post("/orders", json=body(), headers=reused)).status_code == 202
        response = await daffy.post("/orders", json=body(), headers=reused)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "idempotency_key_reused"
    assert await orders_of(shop, "daffy-duck") == 0


# --- reading: one's own orders; an operator's any -------------------------------------------------


async def test_a_customer_cannot_read_another_customers_order_it_is_404(app: FastAPI) -> None:
    order_id = await place(app, "bugs-bunny")
    async with client_of(app, customer="daffy-duck") as daffy:
        theirs = await daffy.get(f"/orders/{order_id}")
        unknown_id = str(uuid.uuid4())
        unknown = await daffy.get(f"/orders/{unknown_id}")
    assert theirs.status_code == unknown.status_code == 404
    # The same answer as for an id that does not exist: it confirms nothing.
    assert theirs.json()["detail"].replace(order_id, "ID") == unknown.json()["detail"].replace(
        unknown_id, "ID"
    )
    async with client_of(app) as owner:
        assert (await owner.get(f"/orders/{order_id}")).status_code == 200
    operator = await answer(app, "GET", f"/orders/{order_id}", signed_in("ops", auth.OPERATOR))
    assert operator.status_code == 200 and operator.json()["customer_id"] == "bugs-bunny"


async def test_a_customer_lists_only_their_own_orders(app: FastAPI) -> None:
    bugs_order = await place(app, "bugs-bunny")
    await place(app, "daffy-duck")
    async with client_of(app, customer="daffy-duck") as daffy:
        refused = await daffy.get("/orders", params={"customer_id": "bugs-bunny"})
        made_up = await daffy.get("/orders", params={"customer_id": "nobody-at-all"})
        own = await daffy.get("/orders")
    assert refused.status_code == made_up.status_code == 403  # whether the customer exists or not
    assert refused.json() == {"detail": "a customer lists only their own orders"}
    assert [item["customer_id"] for item in own.json()["items"]] == ["daffy-duck"]
    async with client_of(app) as bugs:
        named = await bugs.get("/orders", params={"customer_id": "bugs-bunny"})
    assert [item["order_id"] for item in named.json()["items"]] == [bugs_order]


async def test_an_operator_lists_any_customers_orders_and_names_one(app: FastAPI) -> None:
    order_id = await place(app, "bugs-bunny")
    operator = signed_in("ops", auth.OPERATOR)
    listed = await answer(app, "GET", "/orders?customer_id=bugs-bunny", operator)
    assert listed.status_code == 200
    assert [item["order_id"] for item in listed.json()["items"]] == [order_id]
    unnamed = await answer(app, "GET", "/orders", operator)
    assert unnamed.status_code == 422
    assert unnamed.json()["detail"][0]["loc"] == ["query", "customer_id"]


async def test_the_order_quota_counts_the_tokens_customer(shop: InMemoryShop) -> None:
    app = order_api(shop, orders_per_minute_per_customer=6, order_burst_per_customer=1)
    async with client_of(app) as bugs, client_of(app, customer="daffy-duck") as daffy:
        assert (await bugs.post("/orders", json=body(), headers=key())).status_code == 202
        assert (await bugs.post("/orders", json=body(), headers=key())).status_code == 429
        assert (await daffy.post("/orders", json=body(), headers=key())).status_code == 202


# --- what stays open, and what OpenAPI says -------------------------------------------------------


@pytest.mark.parametrize("url", ["/openapi.json", "/docs"])
async def test_the_docs_and_the_schema_need_no_token(app: FastAPI, url: str) -> None:
    assert (await answer(app, "GET", url, {})).status_code == 200


def test_openapi_declares_the_bearer_scheme_on_every_order_route_so_docs_can_authorize(
    app: FastAPI,
) -> None:
    document = app.openapi()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    paths = document["paths"]
    for path, method in [("/orders", "post"), ("/orders", "get"), ("/orders/{order_id}", "get")]:
        operation = paths[path][method]
        assert operation["security"] == [{"bearerAuth": []}], (path, method)
        assert "401" in operation["responses"], (path, method)
    assert "403" in paths["/orders"]["post"]["responses"]
    assert "403" in paths["/orders"]["get"]["responses"]
    assert "customer_id" not in str(
        document["components"]["schemas"]["PlaceOrderRequest"]["properties"]
    )
    for path in ("/healthz", "/readyz"):
        assert "security" not in paths[path]["get"], path


# --- who issues tokens: warren token, the load test ----------------------------------------------


def test_warren_token_prints_a_token_the_api_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN_SECRET", TOKEN_SECRET)
    runner = CliRunner()
    customer = runner.invoke(main.app, ["token", "bugs-bunny", "--ttl", "120"])
    operator = runner.invoke(main.app, ["token", "ops", "--operator"])
    assert customer.exit_code == operator.exit_code == 0, customer.output + operator.output
    token = customer.output.strip()
    assert auth.verify(token, secret=TOKEN_SECRET) == auth.Principal("bugs-bunny", auth.CUSTOMER)
    assert auth.verify(operator.output.strip(), secret=TOKEN_SECRET).is_operator
    payload = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"])
    assert payload["exp"] - payload["iat"] == 120 and payload["iss"] == "warren"


def test_warren_token_refuses_a_customer_id_the_api_would_not_take() -> None:
    result = CliRunner().invoke(main.app, ["token", "victim@evil.example,x"])
    assert result.exit_code == 2
    assert "Invalid value for CUSTOMER" in result.output


def test_warren_token_says_what_is_wrong_with_the_key_and_never_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_TOKEN_SECRET", "hunter2")
    result = CliRunner().invoke(main.app, ["token", "bugs-bunny"])
    assert result.exit_code == 2
    assert "API_TOKEN_SECRET" in result.output and "at least 32 characters" in result.output
    assert "hunter2" not in result.output


async def test_the_load_tests_own_tokens_are_accepted(app: FastAPI) -> None:
    token = load_tokens.customer_token("load-7", TOKEN_SECRET)
    assert auth.verify(token, secret=TOKEN_SECRET) == auth.Principal("load-7", auth.CUSTOMER)
    response = await answer(app, "POST", "/orders", bearer(token))
    assert response.status_code == 202, response.text
