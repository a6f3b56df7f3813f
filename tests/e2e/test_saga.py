"""End to end: HTTP in, the saga across four services over the real RabbitMQ, email out."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from shared.testing.system import System
from tests.support.orders import as_customer, final_order, order_body, place
from tests.support.polling import eventually


async def stock(mongo: AsyncMongoClient, system: System, sku: str) -> dict[str, Any]:
    doc = await mongo[system.database("inventory")]["stock"].find_one({"_id": sku})
    assert doc is not None
    return doc


async def emails_for(system: System, order_id: str, count: int) -> list[Any]:
    return await eventually(
        lambda: system.emails_for(order_id),
        until=lambda mails: len(mails) >= count,
        timeout=20,
        what=f"{count} emails for {order_id}",
    )


async def test_a_good_order_is_confirmed_stock_is_sold_and_the_customer_is_emailed(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    before = await stock(mongo, system, "RABBIT-PLUSH")

    order_id = await place(api, order_body(sku="RABBIT-PLUSH", quantity=2))
    order = await final_order(api, order_id)

    assert order["status"] == "CONFIRMED", system.logs("order")
    assert order["total_cents"] == 2 * 1999
    assert [h["type"] for h in order["history"]] == [
        "order.placed",
        "order.stock-reserved",
        "order.confirmed",
    ]
    after = await eventually(
        lambda: stock(mongo, system, "RABBIT-PLUSH"),
        until=lambda s: s["sold"] == before["sold"] + 2,
    )
    assert after["available"] == before["available"] - 2
    assert after["available"] + after["reserved"] + after["sold"] == after["initial"]
    mails = await emails_for(system, order_id, 2)
    subjects = sorted(m["Subject"] for m in mails)
    assert any("confirmed" in s for s in subjects) and any("received" in s for s in subjects)
    assert len({m["Message-ID"] for m in mails}) == len(mails) == 2


async def test_a_declined_card_cancels_the_order_and_gives_the_stock_back(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    before = await stock(mongo, system, "CARROT-MUG")

    order_id = await place(
        api, order_body(sku="CARROT-MUG", quantity=3, token="tok_chargeDeclined")
    )
    order = await final_order(api, order_id)

    assert order["status"] == "CANCELLED"
    assert order["cancel_reason"] == "card declined"
    assert [h["type"] for h in order["history"]][-2:] == ["order.payment-failed", "order.cancelled"]
    after = await stock(mongo, system, "CARROT-MUG")  # CANCELLED comes after the release
    assert (after["available"], after["reserved"], after["sold"]) == (
        before["available"],
        before["reserved"],
        before["sold"],
    )
    assert order_id not in after.get("holds", {})
    charges = mongo[system.database("payment")]["gateway_charges"]
    assert await charges.count_documents({"order_id": order_id, "status": "captured"}) == 0
    mails = await emails_for(system, order_id, 2)
    assert any("cancelled" in m["Subject"] for m in mails)


async def test_an_order_for_more_than_the_stock_is_cancelled_without_a_charge(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    order_id = await place(api, order_body(sku="LAST-CARROT", quantity=2))
    order = await final_order(api, order_id)

    assert order["status"] == "CANCELLED"
    assert "insufficient stock" in order["cancel_reason"]
    payment_db = mongo[system.database("payment")]
    assert await payment_db["gateway_charges"].count_documents({"order_id": order_id}) == 0
    # Payment heard of the order only through its cancellation: "never charge it".
    record = await payment_db["payments"].find_one({"_id": order_id})
    assert record is None or record["status"] == "cancelled"
    last = await stock(mongo, system, "LAST-CARROT")
    assert (last["available"], last["reserved"]) == (1, 0)


async def test_an_unknown_sku_is_refused_with_422_and_the_reason(api: httpx.AsyncClient) -> None:
    response = await api.post("/orders", json=order_body(sku="NO-SUCH-BUNNY"))
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["type"] == "unknown_sku" and "NO-SUCH-BUNNY" in detail["msg"]
    assert detail["loc"] == ["body", "lines", 0, "sku"]


async def test_malformed_requests_are_refused_with_the_field_at_fault(
    api: httpx.AsyncClient,
) -> None:
    bad_quantity = await api.post("/orders", json=order_body(sku="RABBIT-PLUSH", quantity=0))
    assert bad_quantity.status_code == 422
    assert bad_quantity.json()["detail"][0]["loc"][-1] == "quantity"
    not_json = await api.post(
        "/orders", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400  # not JSON at all, as the OpenAPI document says
    padded = await api.post("/orders", json={**order_body(), "padding": "x" * 1000})
    assert padded.status_code == 422
    assert padded.json()["detail"][0]["loc"] == ["body", "padding"]


async def test_an_order_without_an_idempotency_key_is_refused_so_that_no_retry_doubles_it(
    system: System,
) -> None:
    async with httpx.AsyncClient(base_url=system.api) as bare:  # no key added for us
        response = await bare.post("/orders", json=order_body(), headers=as_customer("bugs-bunny"))
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["header", "idempotency-key"] and detail["type"] == "missing"


async def test_a_repeated_idempotency_key_returns_the_same_order(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    key = str(uuid.uuid4())
    customer, body = f"key-{key[:8]}", order_body(sku="HOP-SOCKS", quantity=1)
    keyed = {"Idempotency-Key": key}

    first, second = await asyncio.gather(
        place(api, body, headers=keyed, customer=customer),
        place(api, body, headers=keyed, customer=customer),
    )
    third = await place(api, body, headers=keyed, customer=customer)

    assert first == second == third
    await final_order(api, first)
    listing = await api.get("/orders", headers=as_customer(customer))
    assert listing.json()["total"] == 1
    events = mongo[system.database("order")]["order_events"]
    assert await events.count_documents({"order_id": first, "type": "order.placed"}) == 1
    reused = await api.post(
        "/orders",
        json=order_body(sku="HOP-SOCKS", quantity=2),
        headers={**keyed, **as_customer(customer)},
    )
    assert reused.status_code == 422


async def test_both_payment_consumers_take_work(
    system: System, api: httpx.AsyncClient, mongo: AsyncMongoClient
) -> None:
    # A steady stream, six requests in flight: RabbitMQ hands stock.reserved to the two payment
    # consumers in turn. (Not a burst test: thirty quotes at once can outlast the quote timeout
    # on a loaded 2-core machine, and the API rightly answers 503 then.)
    in_flight = asyncio.Semaphore(6)

    async def one() -> str:
        async with in_flight:
            return await place(api, order_body(sku="WARREN-MAP"))

    order_ids = await asyncio.gather(*(one() for _ in range(30)))
    orders = await asyncio.gather(
        *(final_order(api, order_id, timeout=30) for order_id in order_ids)
    )

    assert {o["status"] for o in orders} == {"CONFIRMED"}
    payments = mongo[system.database("payment")]["payments"]
    workers = {
        doc["processed_by"] async for doc in payments.find({"_id": {"$in": list(order_ids)}})
    }
    assert len(workers) == 2, workers


async def test_customer_orders_are_listed_newest_first(api: httpx.AsyncClient) -> None:
    customer = f"lister-{uuid.uuid4().hex[:6]}"
    ids = [await place(api, order_body(sku="CLOVER-TEA"), customer=customer) for _ in range(3)]
    signed_in = as_customer(customer)
    page = (await api.get("/orders", params={"limit": 2}, headers=signed_in)).json()
    assert page["total"] == 3
    assert [item["order_id"] for item in page["items"]] == ids[::-1][:2]
    rest = (
        await api.get(
            "/orders",
            params={"customer_id": customer, "limit": 2, "offset": 2},
            headers=signed_in,
        )
    ).json()
    assert [item["order_id"] for item in rest["items"]] == ids[:1]


async def test_an_unknown_order_is_404(api: httpx.AsyncClient) -> None:
    assert (await api.get(f"/orders/{uuid.uuid4()}")).status_code == 404


async def test_options_names_every_method_a_path_takes(api: httpx.AsyncClient) -> None:
    orders = await api.options("/orders")
    assert orders.status_code == 204 and orders.headers["Allow"] == "GET, POST, OPTIONS"
    one = await api.options(f"/orders/{uuid.uuid4()}")
    assert one.headers["Allow"] == "GET, OPTIONS"
    assert (await api.options("/no-such-path")).status_code == 404


async def test_every_answer_the_api_can_give_is_documented(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert "503" in paths["/orders/{order_id}"]["get"]["responses"]
    assert {"400", "401", "403", "422", "503"} <= set(paths["/orders"]["post"]["responses"])
    assert {"401", "404"} <= set(paths["/orders/{order_id}"]["get"]["responses"])
    assert {"401", "403"} <= set(paths["/orders"]["get"]["responses"])


async def test_health_endpoints_report_broker_and_database(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).status_code == 200
    ready = await api.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200
    assert (body["ready"], body["broker"], body["database"]) == (True, True, True)
    assert body["outbox"]["parked"] == 0


async def test_with_inventory_down_orders_get_503_quickly_then_work_again(
    system: System, api: httpx.AsyncClient
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    system.stop("inventory")
    try:
        started = time.perf_counter()
        response = await api.post("/orders", json=order_body(sku="RABBIT-PLUSH"), headers=key)
        elapsed = time.perf_counter() - started
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "2"
        assert "inventory" in response.json()["detail"]
        assert elapsed < 5.0  # QUOTE_TIMEOUT_SECONDS: 2 s, the shipped default, plus slack
    finally:
        system.start("inventory")
    # The client retries with the same key: the key's order is placed now, and only once.
    retried = await api.post("/orders", json=order_body(sku="RABBIT-PLUSH"), headers=key)
    assert retried.status_code == 202, retried.text
    again = await api.post("/orders", json=order_body(sku="RABBIT-PLUSH"), headers=key)
    assert again.json()["order_id"] == retried.json()["order_id"]
    order_id = retried.json()["order_id"]
    assert (await final_order(api, order_id))["status"] == "CONFIRMED"


async def test_the_read_model_is_rebuilt_identically_by_replaying_events(
    system: System, api: httpx.AsyncClient
) -> None:
    order_ids = [
        await place(api, order_body(sku="MOON-RABBIT", token=t))
        for t in ("tok_visa", "tok_chargeDeclined")
    ]
    before = [await final_order(api, order_id) for order_id in order_ids]

    result = system.warren("orders", "rebuild", timeout=120)

    assert result.returncode == 0, result.stderr
    assert "rebuilt" in result.stdout
    after = [(await api.get(f"/orders/{order_id}")).json() for order_id in order_ids]
    assert after == before
