"""``warren demo``: place one order through the API and follow it to its final state.

It prints each event of the order's history as it appears, with the time since the order was
placed, and keeps waiting while the API cannot answer: chapter 8 has the reader stop MongoDB
while the demo waits. It signs in as its customer with a token of its own, signed with
``API_TOKEN_SECRET`` (as ``warren token`` does).
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import typer
from rich.console import Console

from services.order.domain import FINAL_STATUSES
from shared import auth

console = Console()


def demo(
    api: str = typer.Option(
        "http://127.0.0.1:8000", envvar="WARREN_API", help="Order API base URL."
    ),
    sku: str = typer.Option("RABBIT-PLUSH", help="SKU to order."),
    quantity: int = typer.Option(1, min=1, help="How many."),
    token: str = typer.Option(
        "tok_visa", help="Payment token: tok_visa succeeds, tok_chargeDeclined declines."
    ),
    customer: str = typer.Option(
        "bugs-bunny", help="Customer id (mail goes to <id>@...): the demo signs in as it."
    ),
    timeout: float = typer.Option(30.0, help="Seconds to wait for a final state."),
) -> None:
    """Place one order and follow it to CONFIRMED or CANCELLED, printing each step."""
    body = {"lines": [{"sku": sku, "quantity": quantity}], "payment_token": token}
    started = time.perf_counter()
    with httpx.Client(base_url=api, timeout=10.0, headers=_signed_in_as(customer)) as client:
        order_id = _place_order(client, api, body)
        # The wait for a final state starts once the order is accepted (a slow POST takes
        # nothing from it: the order is followed at least once).
        if _follow_order(client, order_id, started, deadline=time.perf_counter() + timeout):
            return
    console.print(f"[red]order {order_id} not final after {timeout:g}s[/]")
    raise typer.Exit(1)


def _signed_in_as(customer: str) -> dict[str, str]:
    """The Authorization header of a token for ``customer`` (an hour is plenty for a demo)."""
    if not auth.is_customer_id(customer):
        raise typer.BadParameter("letters, digits, '.', '_' and '-'", param_hint="--customer")
    try:
        return auth.bearer(customer, ttl=timedelta(hours=1))
    except auth.SecretNotConfiguredError as exc:
        console.print(f"[red]cannot sign in[/]: {exc}")
        raise typer.Exit(2) from None


def _place_order(client: httpx.Client, api: str, body: dict[str, Any]) -> str:
    """POST the order (a fresh Idempotency-Key) and return its id; exit when it is refused."""
    try:
        response = client.post("/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the order API at {api}[/]: {exc}")
        raise typer.Exit(2) from exc
    if response.status_code != 202:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    order_id: str = response.json()["order_id"]
    console.print(f"POST /orders -> 202, order [bold]{order_id}[/]")
    return order_id


def _follow_order(client: httpx.Client, order_id: str, started: float, deadline: float) -> bool:
    """Poll the order until it is final (True) or the deadline passes (False), printing each new
    event of its history, and why a poll showed nothing."""
    seen = 0
    # Why the last poll showed nothing: said when it changes, and every 10 s while it lasts.
    waiting, said_at = "", 0.0
    while (left := deadline - time.perf_counter()) > 0:
        order, problem = _poll_order(client, order_id, left)
        if order is None:
            if problem != waiting or time.perf_counter() - said_at >= 10:
                console.print(f"  +{_ms_since(started):7.0f} ms  still waiting: {problem}")
                waiting, said_at = problem, time.perf_counter()
            time.sleep(min(0.5, max(0.0, deadline - time.perf_counter())))
            continue
        waiting = ""
        for entry in order["history"][seen:]:
            console.print(f"  +{_ms_since(started):7.0f} ms  v{entry['version']}  {entry['type']}")
        seen = len(order["history"])
        if order["status"] in FINAL_STATUSES:
            _report_final(order, order_id, started)
            return True
        time.sleep(0.05)
    return False


def _poll_order(
    client: httpx.Client, order_id: str, left: float
) -> tuple[dict[str, Any] | None, str]:
    """One GET of the order: its view and "", or None and why there is none."""
    # The order goes on without the API: a poll that times out (the database is away, the
    # service restarts) is one more reason to wait, never a reason to stop.
    try:
        view = client.get(f"/orders/{order_id}", timeout=min(10.0, left))
    except httpx.TransportError as exc:
        return None, f"GET /orders/{order_id[:8]}... failed ({type(exc).__name__})"
    if view.status_code != 200:
        return None, f"GET /orders/{order_id[:8]}... answered {view.status_code}"
    return view.json(), ""


def _report_final(order: dict[str, Any], order_id: str, started: float) -> None:
    """The order's final status, with the reason it was cancelled, if any."""
    reason = f" ({order['cancel_reason']})" if order.get("cancel_reason") else ""
    console.print(
        f"order {order_id[:8]} is {_render_status(order['status'])}{reason}"
        f" after {_ms_since(started):.0f} ms"
    )


def _render_status(status: str) -> str:
    """The status in its colour: green confirmed, red cancelled, yellow anything else."""
    colour = {"CONFIRMED": "green", "CANCELLED": "red"}.get(status, "yellow")
    return f"[{colour}]{status}[/]"


def _ms_since(started: float) -> float:
    """Milliseconds since the order was placed (the demo's time line)."""
    return (time.perf_counter() - started) * 1000
