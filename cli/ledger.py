"""``warren ledger``: count every effect, and fail on anything lost or done twice.

It checks what the services *did*, counted where it happened -- not only what they recorded:

* **orders**: every accepted order is final (CONFIRMED or CANCELLED), none is past its saga
  deadline;
* **stock**: per SKU, available + reserved + sold == initial, reserved == the sum of its holds,
  and sold == the quantities of the CONFIRMED orders; no final order still holds stock, and
  each one's reservation settled the way the order ended;
* **money**, counted in the simulated gateway's own record of every call: one capture per
  CONFIRMED order, none left for a CANCELLED one (refunded is fine), and never two charges that
  moved money for one order;
* **emails**, counted in the mail sink itself (the Maildir locally, Mailpit's API under
  compose): exactly one per order event that sends one (placed, confirmed, cancelled) -- none
  missing, none twice -- and every notification sent;
* **leftovers**: every DLQ empty; no outbox event parked or pending for long.

An operations tool, so it reads all four databases, the broker and the mail sink; the services
never do that. Exits 1 naming what failed. ``--wait`` keeps checking until everything holds
(after a load test, the last orders may still be in flight).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from services.order.domain import FINAL_STATUSES
from shared import mongo
from shared.contracts import OrderPlaced
from shared.outbox import PARKED, PENDING, PUBLISHED
from shared.settings import WarrenSettings

console = Console()

# A pending outbox event older than this is overdue (the relay publishes within seconds).
OVERDUE_OUTBOX_SECONDS = 60.0


@dataclass
class Check:
    name: str
    failures: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


# --8<-- [start:mail-count]
def emails_in_maildir(maildir: Path) -> Counter[str]:
    """How many emails the sink holds per Message-ID (without angle brackets)."""
    from cli.mail_sink import message_ids

    return Counter(message_ids(maildir))


async def emails_in_mailpit(api_url: str) -> Counter[str]:
    """The same, from Mailpit's API (compose), a page at a time."""
    counted: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=10.0) as client:
        start = 0
        while True:
            page = (
                await client.get("/api/v1/messages", params={"start": start, "limit": 1000})
            ).json()
            messages = page.get("messages") or []
            counted.update(str(m.get("MessageID", "")).strip("<>") for m in messages)
            start += len(messages)
            if not messages or start >= int(page.get("total", start)):
                return counted
            # --8<-- [end:mail-count]


async def dead_letter_counts(rabbit_url: str) -> dict[str, int]:
    from cli.dlq import list_counts

    return {f"{name}.dlq": dead for name, _, dead in await list_counts(rabbit_url)}


async def run_checks(
    settings: WarrenSettings,
    *,
    maildir: Path | None = None,
    mail_api_url: str | None = None,
    check_broker: bool = True,
) -> list[Check]:
    """Every check, once. Emails are counted in ``maildir``, else through ``mail_api_url``."""
    client = mongo.make_client(settings)
    order_db, inventory_db, payment_db, notification_db = (
        client[settings.mongo_db_of(service)]
        for service in ("order", "inventory", "payment", "notification")
    )
    try:
        statuses: dict[str, str] = {
            doc["_id"]: doc["status"] async for doc in order_db["orders"].find({}, {"status": 1})
        }
        # Every published event of every order (what the customer is emailed about).
        # (An event the relay publishes is marked pending, published or parked; the order's
        # internal events are not.)
        published: list[dict[str, Any]] = [
            {
                "order_id": doc["order_id"],
                "type": doc["type"],
                "outbox": doc["outbox"],
                "event_id": doc["envelope"]["id"],
                "data": doc["envelope"]["data"],
            }
            async for doc in order_db["order_events"].find(
                {"outbox": {"$in": [PENDING, PUBLISHED, PARKED]}},
                {"order_id": 1, "type": 1, "envelope": 1, "outbox": 1},
            )
        ]
        placed = {doc["order_id"]: doc for doc in published if doc["type"] == OrderPlaced.TYPE}
        checks = [
            await _orders(order_db, placed, statuses),
            *await _stock(inventory_db, placed, statuses),
            await _money(payment_db, statuses),
            await _emails(notification_db, published, maildir, mail_api_url),
            await _outbox(order_db),
        ]
        if check_broker:
            checks.append(await _dead_letters(settings.rabbit_url))
        return checks
    finally:
        await client.close()


async def _orders(
    order_db: Any, placed: dict[str, dict[str, Any]], statuses: dict[str, str]
) -> Check:
    final = Check("every accepted order is CONFIRMED or CANCELLED", checked=len(placed))
    for order_id in sorted(placed):
        status = statuses.get(order_id, "missing from the read model")
        if status not in FINAL_STATUSES:
            final.failures.append(f"order {order_id} is {status}")
    overdue = order_db["order_events"].find(
        {"saga": "open", "saga_deadline": {"$lt": datetime.now(UTC)}}, {"order_id": 1}
    )
    async for doc in overdue:
        final.failures.append(f"order {doc['order_id']} is past its saga deadline")
    return final


async def _stock(
    inventory_db: Any, placed: dict[str, dict[str, Any]], statuses: dict[str, str]
) -> list[Check]:
    sold_to_confirmed: Counter[str] = Counter()
    for order_id, doc in placed.items():
        if statuses.get(order_id) == "CONFIRMED":
            for line in doc["data"]["lines"]:
                sold_to_confirmed[line["sku"]] += line["quantity"]

    stock = Check("stock balances, and sold == what confirmed orders bought, per SKU")
    held_by: set[str] = set()  # orders that still hold stock
    async for doc in inventory_db["stock"].find({}):
        stock.checked += 1
        sku, holds = doc["_id"], doc.get("holds") or {}
        held_by.update(holds)
        total = doc["available"] + doc["reserved"] + doc["sold"]
        held = sum(hold["quantity"] for hold in holds.values())
        if total != doc["initial"]:
            stock.failures.append(
                f"{sku}: {doc['available']} + {doc['reserved']} + {doc['sold']}"
                f" = {total} != {doc['initial']}"
            )
        if held != doc["reserved"]:
            stock.failures.append(f"{sku}: reserved {doc['reserved']} != holds {held}")
        if doc["sold"] != sold_to_confirmed[sku]:
            stock.failures.append(
                f"{sku}: sold {doc['sold']} != {sold_to_confirmed[sku]} bought by confirmed orders"
            )

    reservations = {
        doc["_id"]: doc["state"]
        async for doc in inventory_db["reservations"].find({}, {"state": 1})
    }
    settled = Check("no final order holds stock; sold if confirmed, given back if cancelled")
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
    return [stock, settled]


# --8<-- [start:money]
async def _money(payment_db: Any, statuses: dict[str, str]) -> Check:
    """Counted in the gateway's record of every call: money that moved, per order."""
    moved: Counter[str] = Counter()  # charges that moved money (later refunded or not)
    kept: Counter[str] = Counter()  # ... and kept it
    async for doc in payment_db["gateway_charges"].find(
        {"status": {"$in": ["captured", "refunded"]}}, {"order_id": 1, "status": 1}
    ):
        moved[doc["order_id"]] += 1
        kept[doc["order_id"]] += doc["status"] == "captured"
    money = Check(
        "one charge per confirmed order, none kept for a cancelled one", checked=len(statuses)
    )
    for order_id, count in moved.items():
        if count > 1:
            money.failures.append(f"order {order_id} was charged {count} times")
    for order_id, status in statuses.items():
        if status == "CONFIRMED" and kept[order_id] != 1:
            money.failures.append(f"confirmed order {order_id} holds {kept[order_id]} charges")
        if status == "CANCELLED" and kept[order_id]:
            money.failures.append(f"cancelled order {order_id} was charged and not refunded")
    for order_id in moved.keys() - statuses.keys():
        money.failures.append(f"charge for unknown order {order_id}")
    return money
    # --8<-- [end:money]


async def _emails(
    notification_db: Any,
    published: list[dict[str, Any]],
    maildir: Path | None,
    mail_api_url: str | None,
) -> Check:
    emails = Check("one email per order event, in the mail sink; none missing, none twice")
    notified: dict[str, dict[str, Any]] = {
        doc["_id"]: doc
        async for doc in notification_db["notifications"].find(
            {}, {"state": 1, "order_id": 1, "event_type": 1, "failure": 1}
        )
    }
    if maildir is not None:
        in_sink = emails_in_maildir(maildir)
    elif mail_api_url:
        in_sink = await emails_in_mailpit(mail_api_url)
    else:
        in_sink = None
    per_event: dict[tuple[str, str], int] = defaultdict(int)
    for event in published:
        if event.get("outbox") != "published":
            continue  # not out yet: the outbox check says if it is late
        emails.checked += 1
        what = f"{event['type']} of {event['order_id']}"
        per_event[(event["order_id"], event["type"])] += 1
        notification = notified.get(event["event_id"])
        if notification is None:
            emails.failures.append(f"no notification for {what}")
        elif notification["state"] != "sent":
            reason = f" ({notification['failure']})" if notification.get("failure") else ""
            emails.failures.append(f"email for {what} is {notification['state']}{reason}")
        if in_sink is not None:
            count = in_sink.get(f"{event['event_id']}@warren", 0)
            if count != 1:
                emails.failures.append(f"{count} emails in the mail sink for {what}")
    for (order_id, event_type), count in per_event.items():
        if count != 1:
            emails.failures.append(f"{count} {event_type} events for {order_id}")
    return emails


async def _outbox(order_db: Any) -> Check:
    outbox = Check("no outbox event parked or overdue")
    cutoff = datetime.now(UTC) - timedelta(seconds=OVERDUE_OUTBOX_SECONDS)
    async for doc in order_db["order_events"].find(
        {"outbox": {"$in": ["pending", "parked"]}}, {"outbox": 1, "occurred_at": 1, "type": 1}
    ):
        outbox.checked += 1
        if doc["outbox"] == "parked":
            outbox.failures.append(f"{doc['type']} {doc['_id']} is parked (warren outbox list)")
        elif doc["occurred_at"] < cutoff:
            outbox.failures.append(f"{doc['type']} {doc['_id']} pending since {doc['occurred_at']}")
    return outbox


async def _dead_letters(rabbit_url: str) -> Check:
    dlqs = Check("every dead-letter queue is empty")
    try:
        counts = await dead_letter_counts(rabbit_url)
    except Exception as exc:
        dlqs.failures.append(f"cannot read the queues: {exc!r}")
        return dlqs
    dlqs.checked = len(counts)
    for name, count in counts.items():
        if count:
            dlqs.failures.append(f"{name} holds {count} message(s) (warren dlq show)")
    return dlqs


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
    maildir: Path | None = typer.Option(
        None,
        help="Count emails in this Maildir (default: .run/mail if it exists, else MAIL_API_URL; "
        "with --compose, Mailpit's API).",
    ),
) -> None:
    """Count every effect: final orders, stock, money, emails in the sink, DLQs, outbox."""
    from services.notification.settings import NotificationSettings

    settings = NotificationSettings()
    if maildir is None and not os.environ.get("WARREN_COMPOSE") and Path(".run/mail/new").is_dir():
        maildir = Path(".run/mail")
    deadline = time.monotonic() + wait
    while True:
        checks = asyncio.run(
            run_checks(settings, maildir=maildir, mail_api_url=settings.mail_api_url)
        )
        if all(c.ok for c in checks) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    render(checks)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
