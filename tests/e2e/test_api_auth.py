"""API authentication and authorization on the running system: uvicorn, the real saga, the
real tools that sign in (``warren token``, ``warren demo``). tests/unit/test_api_auth.py attacks
the same app in process, token by token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt

from shared import auth
from shared.testing.system import System
from tests.support.orders import as_customer, as_operator, final_order, order_body, place
from tests.support.polling import eventually

TOKEN_LIKE = {"sub": "bugs-bunny", "role": "operator", "iss": "warren"}


def forged_tokens() -> dict[str, str]:
    """Tokens an attacker can make without the key."""
    now = datetime.now(UTC)
    claims = {**TOKEN_LIKE, "iat": now, "exp": now + timedelta(hours=1)}
    return {
        "another key": auth.issue(
            "bugs-bunny", auth.OPERATOR, secret="an-attackers-own-key-0123456789abcdef"
        ),
        "alg none": jwt.encode(claims, key=None, algorithm="none"),
        "expired": auth.issue(
            "bugs-bunny",
            secret=auth.configured_secret(),
            now=now - timedelta(hours=2),
            ttl=timedelta(hours=1),
        ),
    }


async def test_without_a_valid_token_nothing_is_placed_or_read_and_health_stays_open(
    system: System, api: httpx.AsyncClient
) -> None:
    order_id = await place(api, order_body(sku="CLOVER-TEA"))
    async with httpx.AsyncClient(base_url=system.api, timeout=10.0) as anonymous:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        answers = [
            await anonymous.post("/orders", json=order_body(), headers=key),
            await anonymous.get(f"/orders/{order_id}"),
            await anonymous.get("/orders", params={"customer_id": "bugs-bunny"}),
        ]
        for name, token in forged_tokens().items():
            forged = {"Authorization": f"Bearer {token}"}
            answers += [
                await anonymous.post("/orders", json=order_body(), headers={**key, **forged}),
                await anonymous.get(f"/orders/{order_id}", headers=forged),
                await anonymous.get("/orders", params={"customer_id": "x"}, headers=forged),
            ]
            assert answers[-1].json()["detail"].startswith("invalid bearer token"), name
        open_paths = [
            (await anonymous.get(path)).status_code
            for path in ("/healthz", "/readyz", "/openapi.json", "/docs")
        ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in answers)
    assert open_paths == [200, 200, 200, 200]


async def test_a_customer_sees_only_their_own_orders_and_an_operator_sees_any(
    api: httpx.AsyncClient,
) -> None:
    victim, attacker = f"victim-{uuid.uuid4().hex[:6]}", f"attacker-{uuid.uuid4().hex[:6]}"
    order_id = await place(api, order_body(sku="CLOVER-TEA"), customer=victim)
    await final_order(api, order_id)

    stolen = await api.get(f"/orders/{order_id}", headers=as_customer(attacker))
    made_up = await api.get(f"/orders/{uuid.uuid4()}", headers=as_customer(attacker))
    listed = await api.get("/orders", params={"customer_id": victim}, headers=as_customer(attacker))
    assert (stolen.status_code, made_up.status_code, listed.status_code) == (404, 404, 403)

    own = await api.get(f"/orders/{order_id}", headers=as_customer(victim))
    assert own.status_code == 200 and own.json()["customer_id"] == victim
    by_operator = await api.get("/orders", params={"customer_id": victim}, headers=as_operator())
    assert [o["order_id"] for o in by_operator.json()["items"]] == [order_id]


async def test_the_body_cannot_name_the_customer_and_the_order_is_the_tokens(
    system: System, api: httpx.AsyncClient
) -> None:
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    refused = await api.post("/orders", json={**order_body(), "customer_id": victim})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "customer_id"]
    nothing = await api.get("/orders", params={"customer_id": victim}, headers=as_operator())
    assert nothing.json()["total"] == 0

    customer = f"daffy-{uuid.uuid4().hex[:6]}"
    order = await final_order(
        api, await place(api, order_body(sku="CLOVER-TEA"), customer=customer)
    )
    assert order["customer_id"] == customer
    mails = await eventually(
        lambda: system.emails_for(order["order_id"]),
        until=lambda found: len(found) == 2,
        what="the order's two emails",
    )
    assert all(m["To"].startswith(f"{customer}@") for m in mails)


async def test_warren_token_signs_in_and_warren_demo_places_its_order(
    system: System, api: httpx.AsyncClient
) -> None:
    made = system.warren("token", "token-user", check=True)
    signed_in = {"Authorization": f"Bearer {made.stdout.strip()}"}
    listing = await api.get("/orders", headers=signed_in)
    assert listing.status_code == 200 and listing.json()["total"] == 0

    demo = system.warren("demo", "--api", system.api, "--customer", "demo-user", timeout=90)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "CONFIRMED" in demo.stdout
    mine = await api.get("/orders", headers=as_customer("demo-user"))
    assert mine.json()["total"] == 1
