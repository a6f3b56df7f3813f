"""The whole shop in one process: the services' real handlers (the four of the saga and the
audit), each wired through its handler table, on one :class:`~shared.testing.bus.InMemoryBus`.

For the fast saga tests (``tests/unit/test_saga_in_memory.py``) and the benchmark's database
ceiling -- never for running the shop. Each service keeps a database of its own (any async
PyMongo-like database: ``mongomock`` behind :mod:`shared.testing.memory_mongo`, or a real
client's). What is played rather than run:

* the quote: order calls inventory's ``quote`` handler directly (request-reply in memory);
* the outbox: order's real :class:`~shared.outbox.OutboxRelay` publishes onto the bus;
* the Celery worker: "sending" an email is its claim (``queued`` -> ``sending`` -> ``sent``),
  the same two writes as :mod:`services.notification.worker`; ``emails`` counts the claims won.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.audit import handlers as audit
from services.audit.repository import AuditTrail
from services.inventory import handlers as inventory
from services.inventory.catalog import CATALOG, CatalogItem
from services.inventory.repository import StockRepository
from services.notification import handlers as notification
from services.notification.repository import NotificationRepository
from services.order import handlers as order
from services.order.repository import EventStore, IdempotencyKeys, OrderViews
from services.payment import handlers as payment
from services.payment.gateway import SimulatedGateway
from services.payment.repository import PaymentRepository
from shared.contracts import OrderLine
from shared.outbox import OutboxRelay
from shared.sealing import RecipientKey, generate_key
from shared.testing.bus import InMemoryBus

Database = Any  # an async PyMongo database, or shared.testing.memory_mongo's


@dataclass
class InMemoryShop:
    bus: InMemoryBus
    order: order.OrderDeps
    inventory: inventory.InventoryDeps
    payment: payment.PaymentDeps
    notification: notification.NotificationDeps
    audit: audit.AuditDeps
    emails: Counter[str] = field(default_factory=Counter)  # notification id -> emails sent

    async def place(
        self,
        sku: str,
        quantity: int = 1,
        *,
        token: str = "tok_visa",
        customer: str = "bugs-bunny",
        key: str | None = None,
    ) -> str:
        """Place an order as ``POST /orders`` does; the saga runs on :meth:`InMemoryBus.drain`."""
        command = order.PlaceOrder(customer, (OrderLine(sku=sku, quantity=quantity),), token)
        placed = await order.place_order(
            command, self.order, idempotency_key=key or str(uuid.uuid4())
        )
        return placed.order_id


async def open_shop(
    database: Callable[[str], Database], *, catalog: list[CatalogItem] | None = None
) -> InMemoryShop:
    """The four services and the audit on one bus, indexes made and the catalog seeded;
    ``database(service)`` gives each service its own database."""
    bus = InMemoryBus()
    inventory_deps = inventory.InventoryDeps(stock=StockRepository(database("inventory")))
    payment_key = generate_key()  # this shop's own: the token is sealed as in the real one
    order_db = database("order")
    store = EventStore(order_db)
    relay = OutboxRelay(store.events, bus.publish_stored)
    order_deps = order.OrderDeps(
        store=store,
        views=OrderViews(order_db),
        keys=IdempotencyKeys(order_db),
        quote=functools.partial(inventory.quote, deps=inventory_deps),
        wake_relay=relay.wake,
        payment_key=RecipientKey("in-memory", payment_key.public_key()),
    )
    payments_db = database("payment")
    payment_deps = payment.PaymentDeps(
        payments=PaymentRepository(payments_db),
        gateway=SimulatedGateway(payments_db),
        token_keys={"in-memory": payment_key},
    )
    notifications = NotificationRepository(database("notification"))
    emails: Counter[str] = Counter()
    notification_deps = notification.NotificationDeps(
        notifications=notifications,
        enqueue=functools.partial(_send_email, notifications, emails),
        mail_domain="customers.warren.example",
    )
    bus.serve(order.HANDLERS, order_deps)
    bus.serve(inventory.HANDLERS, inventory_deps)
    bus.serve(payment.HANDLERS, payment_deps)
    bus.serve(notification.HANDLERS, notification_deps)
    audit_deps = audit.AuditDeps(trail=AuditTrail(database("audit")))
    bus.serve(audit.HANDLERS, audit_deps)
    bus.outbox(relay)
    await order_deps.create_indexes()
    await audit_deps.trail.create_indexes()
    await inventory_deps.stock.seed(catalog if catalog is not None else CATALOG)
    return InMemoryShop(
        bus, order_deps, inventory_deps, payment_deps, notification_deps, audit_deps, emails
    )


async def _send_email(
    notifications: NotificationRepository, emails: Counter[str], notification_id: str
) -> None:
    """The Celery task's claim and its "sent" mark: one email per claim won."""
    claimed = await notifications.notifications.find_one_and_update(
        {"_id": notification_id, "state": "queued"},
        {"$set": {"state": "sending", "claimed_by": "in-memory"}},
    )
    if claimed is None:
        return  # sent (or being sent) already
    await notifications.notifications.update_one(
        {"_id": notification_id}, {"$set": {"state": "sent"}}
    )
    emails[notification_id] += 1
