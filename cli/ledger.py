"""``warren ledger``: check the system's invariants across every service's database.

* every accepted order is in a final state (CONFIRMED or CANCELLED);
* for every SKU, available + reserved + sold == initial, and reserved == the sum of its holds;
* one captured charge per confirmed order, and none for a cancelled one;
* every final order's stock is settled: sold (reservation committed) if confirmed, given back
  (rejected or released) if cancelled, and no hold left;
* one notification per (order, event), each sent once.

An operations tool, so it reads all four databases; the services never do that.
Exits 1 when an invariant fails. ``--wait`` keeps checking until they hold (after a load test,
the last orders may still be in flight).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import typer
from rich.console import Console
from rich.table import Table

from services.order.domain import FINAL_STATUSES
from shared import mongo
from shared.settings import WarrenSettings

console = Console()


@dataclass
class Check:
    name: str
    failures: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


async def run_checks(settings: WarrenSettings) -> list[Check]:
    client = mongo.make_client(settings)
    order_db, inventory_db, payment_db, notification_db = (
        client[settings.mongo_db_of(service)]
        for service in ("order", "inventory", "payment", "notification")
    )
    try:
        statuses: dict[str, str] = {
            doc["_id"]: doc["status"] async for doc in order_db["orders"].find({}, {"status": 1})
        }
        placed = {
            doc["order_id"]
            async for doc in order_db["order_events"].find(
                {"type": "order.placed"}, {"order_id": 1}
            )
        }

        final = Check("every accepted order is CONFIRMED or CANCELLED", checked=len(placed))
        for order_id in sorted(placed):
            status = statuses.get(order_id, "missing from the read model")
            if status not in FINAL_STATUSES:
                final.failures.append(f"order {order_id} is {status}")

        stock = Check("available + reserved + sold == initial, per SKU")
        held_by: set[str] = set()  # orders that still hold stock
        async for doc in inventory_db["stock"].find({}):
            stock.checked += 1
            held_by.update(doc.get("holds") or {})
            total = doc["available"] + doc["reserved"] + doc["sold"]
            held = sum(hold["quantity"] for hold in (doc.get("holds") or {}).values())
            if total != doc["initial"]:
                stock.failures.append(
                    f"{doc['_id']}: {doc['available']} + {doc['reserved']} + {doc['sold']}"
                    f" = {total} != {doc['initial']}"
                )
            if held != doc["reserved"]:
                stock.failures.append(f"{doc['_id']}: reserved {doc['reserved']} != holds {held}")

        captured = Counter(
            [
                doc["order_id"]
                async for doc in payment_db["gateway_charges"].find(
                    {"status": "captured"}, {"order_id": 1}
                )
            ]
        )
        charges = Check(
            "one charge per confirmed order, none for cancelled ones", checked=len(statuses)
        )
        for order_id, status in statuses.items():
            if status == "CONFIRMED" and captured[order_id] != 1:
                charges.failures.append(
                    f"confirmed order {order_id} has {captured[order_id]} charges"
                )
            if status == "CANCELLED" and captured[order_id]:
                charges.failures.append(f"cancelled order {order_id} was charged")
        for order_id in captured.keys() - statuses.keys():
            charges.failures.append(f"charge for unknown order {order_id}")

        reservations = {
            doc["_id"]: doc["state"]
            async for doc in inventory_db["reservations"].find({}, {"state": 1})
        }
        settled = Check("stock settled as the order ended (sold if confirmed, back if cancelled)")
        expected = {
            "CONFIRMED": {"committed"},
            "CANCELLED": {"rejected", "released", "cancelled", "returned"},
        }
        for order_id, status in statuses.items():
            if status not in expected:
                continue
            settled.checked += 1
            if reservations.get(order_id) not in expected[status]:
                settled.failures.append(
                    f"{status.lower()} order {order_id} has reservation {reservations.get(order_id)}"
                )
            if order_id in held_by:
                settled.failures.append(f"{status.lower()} order {order_id} still holds stock")

        emails = Check("one email per notified event, sent")
        per_event: Counter[tuple[str, str]] = Counter()
        async for doc in notification_db["notifications"].find({}):
            emails.checked += 1
            per_event[(doc["order_id"], doc["event_type"])] += 1
            if doc["state"] != "sent":
                emails.failures.append(
                    f"{doc['event_type']} of {doc['order_id']} is {doc['state']}"
                )
        for (order_id, event_type), count in per_event.items():
            if count != 1:
                emails.failures.append(f"{count} notifications for {event_type} of {order_id}")
        return [final, stock, charges, settled, emails]
    finally:
        await client.close()


def render(checks: list[Check]) -> None:
    table = Table("invariant", "checked", "result", title="Warren ledger")
    for check in checks:
        table.add_row(
            check.name,
            str(check.checked),
            "[green]ok[/]" if check.ok else f"[red]{len(check.failures)} failed[/]",
        )
    console.print(table)
    for check in checks:
        for failure in check.failures[:20]:
            console.print(f"  [red]✗[/] {failure}")
        if len(check.failures) > 20:
            console.print(f"  ... and {len(check.failures) - 20} more")


def ledger(
    wait: float = typer.Option(
        0.0, help="Keep checking for up to this many seconds until all hold."
    ),
) -> None:
    """Check the invariants: final states, stock balances, one charge per paid order, one email per event."""
    settings = WarrenSettings()
    deadline = time.monotonic() + wait
    while True:
        checks = asyncio.run(run_checks(settings))
        if all(c.ok for c in checks) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    render(checks)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
