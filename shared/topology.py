"""The message topology: every exchange, queue and binding in Warren is declared here, and only here.

It also says who may use what: one broker user per service (:data:`SERVICES`), with the least
privilege it needs. ``warren topology export`` writes the topology and the users as RabbitMQ
definitions, which compose's broker loads at boot; ``warren topology provision`` loads the same
into a running broker (``make run``, the tests). A service with a user of its own then declares
only its own queues at start-up; one that connects as the operator declares everything
(declaration is idempotent).

Shape::

    shop.events (topic) --order.placed--> inventory.order-placed ----> (inventory)
                        --order.placed--> notification.order-events -> (notification)
                        --stock.reserved-> payment.stock-reserved ----> (payment xN, competing)
                        ...
                        --every type-----> audit.events --------------> (audit: records them)
    amq.rabbitmq.event (the broker's own) --user.#...--> audit.broker-events --> (audit)
    consumer queue --(handler gave up / broker rejected)--> shop.dead-letter --<queue>--> <queue>.dlq
    consumer queue --(transient failure)--> shop.retry.<delay> --TTL--> shop.requeue --<queue>--> queue
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from shared.contracts import (
    EVENT_TYPES,
    EventData,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentFailed,
    PaymentSucceeded,
    StockRejected,
    StockReleased,
    StockReserved,
)
from shared.settings import RETRY_DELAYS_SECONDS

# --- exchanges -------------------------------------------------------------------------------

# --8<-- [start:exchanges]
EVENTS = RabbitExchange("shop.events", type=ExchangeType.TOPIC, durable=True)
"""Domain events. Routing key = event type (``order.placed``)."""

DEAD_LETTER = RabbitExchange("shop.dead-letter", type=ExchangeType.DIRECT, durable=True)
"""Messages that will not be processed. Routing key = the queue they came from."""

REQUEUE = RabbitExchange("shop.requeue", type=ExchangeType.DIRECT, durable=True)
"""Where delayed retries come back from. Routing key = the queue to return to."""


# The delay before each retry is a setting (``RETRY_DELAYS_SECONDS``, resolved once, in
# shared.settings); each distinct delay gets one delay queue.
def delay_steps(delays: tuple[int, ...] = RETRY_DELAYS_SECONDS) -> list[int]:
    """The distinct delays: one delay queue each, however often a delay repeats."""
    return sorted(set(delays))


# --8<-- [end:exchanges]

# --8<-- [start:queue-max-length]
# The most messages a consumer queue holds (a stopped consumer's backlog): about a day's orders
# at a busy shop's pace, a few hundred MB of RabbitMQ's memory and disk at most.
QUEUE_MAX_LENGTH = 100_000
# --8<-- [end:queue-max-length]

# A quorum queue dead-letters a message redelivered this many times (a consumer that crashes
# on it every time). Our own retry path acks and republishes, so it never counts here.
DELIVERY_LIMIT = 10


# --8<-- [start:retry-queues]
def retry_exchange(delay_seconds: int) -> RabbitExchange:
    """Fanout exchange in front of the delay queue for one backoff step."""
    return RabbitExchange(f"shop.retry.{delay_seconds}s", type=ExchangeType.FANOUT, durable=True)


def retry_queue(delay_seconds: int) -> RabbitQueue:
    """A queue nobody consumes: messages wait out their TTL, then dead-letter to ``shop.requeue``
    keeping the routing key they were published with (the consumer queue's name).

    A per-queue TTL (not per-message) keeps expiry in arrival order, and works the same on
    RabbitMQ 3.10 and 4.x without the delayed-message plugin.

    A quorum queue, like the queues it feeds: on a cluster it lives on every node, so a retry
    waiting here survives the loss of any one (a classic queue lives on one node, and while
    that node is down a retry routed to it is dropped -- measured: orders stalled until their
    saga deadline cancelled them, docs/18-scaling.md). Dead-lettering stays at-most-once: the
    queues it goes back to are quorum queues, available while a majority of nodes is, and they
    take a dead letter even past their length limit. (At-least-once would hold a retry here
    until a full queue had room -- but RabbitMQ's dead-letter worker tries again only after
    its 3-minute confirm timeout: measured, docs/18-scaling.md.)
    """
    return RabbitQueue(
        f"shop.retry.{delay_seconds}s",
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-message-ttl": delay_seconds * 1000,
            "x-dead-letter-exchange": REQUEUE.name,
        },
    )
    # --8<-- [end:retry-queues]


# --- consumer queues -------------------------------------------------------------------------


# --8<-- [start:consumer-queue]
@dataclass(frozen=True)
class ConsumerQueue:
    """One durable queue per consumer and purpose, with its own dead-letter queue.

    ``events`` are the event classes the queue receives: its bindings are their types (the
    routing key of an event is its type), and the consuming service's handler table must have
    a handler for each of them -- and for nothing else.
    """

    name: str
    events: tuple[type[EventData], ...]
    # Quorum queues replicate and survive broker restarts (every queue of Warren's consumers is
    # one; classic stays possible for a queue whose messages are worth nothing after a restart).
    quorum: bool = True
    # A failed message is retried after each of the RETRY_DELAYS_SECONDS, then dead-lettered.
    # Off: one failure goes to the DLQ (a request nobody waits for any more is not retried).
    retried: bool = True
    # Messages expire after this long in the queue (None: never).
    message_ttl_ms: int | None = None
    # The broker dead-letters what it rejects or expires into the DLQ too. Off for a queue
    # whose expired messages are worthless: only Warren's own poison copies land there.
    broker_dead_letters: bool = True
    # An audit queue: its consumer hands a forged event to the handler, with its verdict,
    # instead of dead-lettering it -- the audit records every arrival, and acts on none.
    records_forgeries: bool = False
    # At most this many messages wait in the queue (None: no limit). Past it the broker refuses
    # new ones with a negative confirm (reject-publish): the publisher is pushed back -- its
    # outbox holds the event and backs off -- instead of the broker filling up. See
    # :func:`backlog_policies` and docs/15-backlog.md.
    max_length: int | None = QUEUE_MAX_LENGTH
    # One partition of a :class:`PartitionedQueue`: bound to that consistent-hash exchange
    # (not to shop.events), with a single active consumer.
    partition_of: str | None = None

    @property
    def routing_keys(self) -> tuple[str, ...]:
        """The types of the events it receives, derived from the contracts."""
        return tuple(sorted({event.TYPE for event in self.events}))

    @property
    def bound_keys(self) -> tuple[str, ...]:
        """Its bindings on ``shop.events``: one per event type -- none for a partition, which
        its consistent-hash exchange feeds."""
        return () if self.partition_of else self.routing_keys

    @property
    def dlq_name(self) -> str:
        return f"{self.name}.dlq"

    @property
    def queue(self) -> RabbitQueue:
        arguments: dict[str, Any] = {}
        if self.broker_dead_letters:
            arguments["x-dead-letter-exchange"] = DEAD_LETTER.name
            arguments["x-dead-letter-routing-key"] = self.name
        if self.quorum:
            arguments["x-delivery-limit"] = DELIVERY_LIMIT
        if self.message_ttl_ms is not None:
            arguments["x-message-ttl"] = self.message_ttl_ms
        if self.partition_of is not None:
            arguments["x-single-active-consumer"] = True
        queue_type = QueueType.QUORUM if self.quorum else QueueType.CLASSIC
        return RabbitQueue(self.name, queue_type=queue_type, durable=True, arguments=arguments)

    @property
    def dlq(self) -> RabbitQueue:
        return dead_letter_queue(self.dlq_name)
        # --8<-- [end:consumer-queue]


# A DLQ's delivery limit: never reached. The DLQ tool browses a DLQ by taking its messages and
# handing them back, and each hand-back counts as a delivery (RabbitMQ 4 drops a message past
# its queue's limit, 20 unless set; 3.10 has none unless set).
DLQ_DELIVERY_LIMIT = 1_000_000


def dead_letter_queue(name: str) -> RabbitQueue:
    """A DLQ: a quorum queue, like the queues that dead-letter into it. On a cluster a classic
    queue lives on one node: while that node is down, dead letters for it are dropped, and
    every service that declares it at (re)connection fails to connect -- measured,
    docs/18-scaling.md."""
    return RabbitQueue(
        name,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={"x-delivery-limit": DLQ_DELIVERY_LIMIT},
    )


# --- partitions: one order's events to one consumer, in publish order -------------------------

HASH_PROPERTY = "correlation_id"
"""The AMQP property a consistent-hash exchange hashes: Warren sets it to the order id."""

PARTITION_WEIGHT = "1"
"""A partition's binding key on its consistent-hash exchange: its share of the hash space."""


def consistent_hash_exchange(name: str) -> RabbitExchange:
    """An exchange that sends each message to one of its queues, chosen by a hash of the
    message's ``correlation_id`` (plugin ``rabbitmq_consistent_hash_exchange``; without it the
    broker refuses the type with ``COMMAND_INVALID``)."""
    return RabbitExchange(
        name,
        type=ExchangeType.X_CONSISTENT_HASH,
        durable=True,
        arguments={"hash-property": HASH_PROPERTY},
    )


# --8<-- [start:partitioned-queue]
@dataclass(frozen=True)
class PartitionedQueue:
    """The events of a consumer queue, spread by order id over ``count`` partitions.

    A consistent-hash exchange ``name`` puts each event in one of the queues ``<name>.p<i>``,
    chosen by its order id; each partition has a single active consumer. So every event of an
    order goes to one partition, in the order it was published, and one consumer at a time
    handles it; other orders are handled in parallel, up to ``count`` consumers. A partition is
    a consumer queue like the others (retries, DLQ, length limit), except for its binding.

    Nothing routes events here until a service asks for it (:func:`route_events`): the
    definitions leave the exchange unbound from ``shop.events``.
    """

    name: str
    events: tuple[type[EventData], ...]
    count: int = 4

    @property
    def exchange(self) -> RabbitExchange:
        return consistent_hash_exchange(self.name)

    @property
    def partitions(self) -> tuple[ConsumerQueue, ...]:
        return tuple(
            ConsumerQueue(f"{self.name}.p{index}", self.events, partition_of=self.name)
            for index in range(self.count)
        )
        # --8<-- [end:partitioned-queue]


# --8<-- [start:consumer-queues]
INVENTORY_ORDER_PLACED = ConsumerQueue("inventory.order-placed", (OrderPlaced,))
INVENTORY_PAYMENT_OUTCOMES = ConsumerQueue(
    "inventory.payment-outcomes", (PaymentSucceeded, PaymentFailed)
)
# An order cancelled by its saga deadline: inventory gives back (or never takes) its stock.
INVENTORY_ORDER_CANCELLED = ConsumerQueue("inventory.order-cancelled", (OrderCancelled,))
PAYMENT_STOCK_RESERVED = ConsumerQueue("payment.stock-reserved", (StockReserved,))
# An order cancelled by its saga deadline: payment refunds it (or makes sure it is never charged).
PAYMENT_ORDER_CANCELLED = ConsumerQueue("payment.order-cancelled", (OrderCancelled,))
ORDER_SAGA_REPLIES = ConsumerQueue(
    "order.saga-replies",
    (StockReserved, StockRejected, StockReleased, PaymentSucceeded, PaymentFailed),
)
NOTIFICATION_ORDER_EVENTS = ConsumerQueue(
    "notification.order-events", (OrderPlaced, OrderConfirmed, OrderCancelled)
)
# Notification's order events, the second way: through partitions (ORDER_EVENTS_VIA=partitions,
# docs/17-keeping-order.md) instead of one queue with competing consumers.
NOTIFICATION_ORDER_PARTITIONS = PartitionedQueue(
    "notification.order-partitions", NOTIFICATION_ORDER_EVENTS.events
)
# The audit trail: every event of the contracts, from whoever published it (a forgery too).
AUDIT_EVENTS = ConsumerQueue("audit.events", tuple(EVENT_TYPES.values()), records_forgeries=True)

CONSUMER_QUEUES: tuple[ConsumerQueue, ...] = (
    INVENTORY_ORDER_PLACED,
    INVENTORY_PAYMENT_OUTCOMES,
    INVENTORY_ORDER_CANCELLED,
    PAYMENT_STOCK_RESERVED,
    PAYMENT_ORDER_CANCELLED,
    ORDER_SAGA_REPLIES,
    NOTIFICATION_ORDER_EVENTS,
    *NOTIFICATION_ORDER_PARTITIONS.partitions,
    AUDIT_EVENTS,
)
PARTITIONED_QUEUES: tuple[PartitionedQueue, ...] = (NOTIFICATION_ORDER_PARTITIONS,)
# --8<-- [end:consumer-queues]


# --- request-reply ---------------------------------------------------------------------------

# --8<-- [start:quotes-queue]
QUOTE_TTL_MS = 10_000

INVENTORY_QUOTES = ConsumerQueue(
    "inventory.quotes",
    events=(),  # requests come through the default exchange
    # Quorum although each request is worth seconds: on a cluster, a classic queue lives on one
    # node, and while that node is down no order can be placed (measured: docs/18-scaling.md).
    retried=False,  # a quote is answered now or never: the caller is waiting
    # A quote nobody picked up within the TTL is worthless: the caller has already given up
    # (and answered its client 503). Expired requests are dropped, not dead-lettered; a
    # request that cannot be read is answered with an error and copied to the DLQ.
    message_ttl_ms=QUOTE_TTL_MS,
    broker_dead_letters=False,
    # More waiting quotes than this cannot all be answered within their TTL: refuse the next
    # at once (the caller gets a negative confirm and answers 503) rather than let it expire.
    max_length=1_000,
)
"""Order asks inventory for a quote here; the answer goes to the caller's direct reply-to."""
# --8<-- [end:quotes-queue]

# --- the Celery work queue -------------------------------------------------------------------

NOTIFICATION_EMAILS = ConsumerQueue("notification.emails", events=())
"""Celery's queue for email delivery. Celery publishes to it through the default exchange.
A quorum queue with a delivery limit like the others: a task that kills its worker every time
is dead-lettered, not redelivered for ever (one email per loop)."""

# --- the broker's own events ------------------------------------------------------------------

# --8<-- [start:broker-events]
BROKER_EVENTS = "amq.rabbitmq.event"
"""RabbitMQ's own events, from its event exchange plugin (``rabbitmq_event_exchange``). The
exchange is internal: only the broker publishes there. Routing key = the event
(``user.authentication.failure``, ``permission.created``...); what it is about in headers."""

# The security events: logins (failed and not), users and their passwords and tags created,
# changed or deleted, permissions and topic permissions granted or revoked. (A refused
# operation -- ACCESS_REFUSED -- is no event: the broker only logs it.)
BROKER_SECURITY_EVENTS = ("user.#", "permission.#", "topic.permission.#")

AUDIT_BROKER_EVENTS = ConsumerQueue("audit.broker-events", events=())
"""The audit's copy of the broker's security events. Bound to :data:`BROKER_EVENTS` by the
audit service at start-up, when the exchange exists (the plugin is enabled): never in the
definitions, which a broker without the plugin could not load."""
# --8<-- [end:broker-events]

ALL_QUEUES_WITH_DLQ: tuple[ConsumerQueue, ...] = (
    *CONSUMER_QUEUES,
    NOTIFICATION_EMAILS,
    INVENTORY_QUOTES,
    AUDIT_BROKER_EVENTS,
)


# --- who may do what: one broker user per service --------------------------------------------

# Celery's own resources, used by the email worker: its remote-control ("pidbox") exchanges and
# queues (the healthcheck's ping) and its event exchange.
CELERY_RESOURCES = r"(.+\.)?(reply\.)?celery\.pidbox|celeryev(\..+)?"


# --8<-- [start:service-access]
@dataclass(frozen=True)
class ServiceAccess:
    """What one service's broker user may do. RabbitMQ checks it on every operation."""

    user: str
    consumes: tuple[ConsumerQueue, ...]  # its own queues: declared, bound and read by it only
    publishes: tuple[type[EventData], ...]  # the event types it may publish on shop.events
    # It publishes through the default exchange: quote requests, replies, Celery tasks.
    default_exchange: bool = False
    extra: str = ""  # more resources (a regex) it may configure, write and read
    # Exchanges it may read (bind its own queues to) besides Warren's: the broker's events.
    reads: tuple[str, ...] = ()
    # Its partitioned queues: it declares their exchange and routes events through it or not.
    partitioned: tuple[PartitionedQueue, ...] = ()


SERVICES: tuple[ServiceAccess, ...] = (
    ServiceAccess(
        "order",
        consumes=(ORDER_SAGA_REPLIES,),
        publishes=(OrderPlaced, OrderConfirmed, OrderCancelled),
        default_exchange=True,  # asks inventory for quotes
    ),
    ServiceAccess(
        "inventory",
        consumes=(
            INVENTORY_ORDER_PLACED,
            INVENTORY_PAYMENT_OUTCOMES,
            INVENTORY_ORDER_CANCELLED,
            INVENTORY_QUOTES,
        ),
        publishes=(StockReserved, StockRejected, StockReleased),
        default_exchange=True,  # answers them
    ),
    ServiceAccess(
        "payment",
        consumes=(PAYMENT_STOCK_RESERVED, PAYMENT_ORDER_CANCELLED),
        publishes=(PaymentSucceeded, PaymentFailed),
    ),
    ServiceAccess(
        "notification",
        consumes=(
            NOTIFICATION_ORDER_EVENTS,
            *NOTIFICATION_ORDER_PARTITIONS.partitions,
            NOTIFICATION_EMAILS,
        ),
        publishes=(),
        default_exchange=True,  # hands emails to Celery
        extra=CELERY_RESOURCES,
        partitioned=(NOTIFICATION_ORDER_PARTITIONS,),
    ),
    ServiceAccess(
        "audit",
        consumes=(AUDIT_EVENTS, AUDIT_BROKER_EVENTS),
        publishes=(),  # it records, it never speaks
        reads=(BROKER_EVENTS,),
    ),
)
# --8<-- [end:service-access]


def access_of(user: str) -> ServiceAccess | None:
    return next((access for access in SERVICES if access.user == user), None)


def publisher_of(event_type: str) -> str | None:
    """The one service allowed to publish ``event_type`` on ``shop.events``."""
    for access in SERVICES:
        if any(event_type == event.TYPE for event in access.publishes):
            return access.user
    return None


def _literal(name: str) -> str:
    return name.replace(".", r"\.")


def _alternatives(*names: str) -> str:
    """A regex matching exactly these names (none: matching nothing)."""
    return "^(" + "|".join(names) + ")$" if names else "^$"


# --8<-- [start:permissions]
def permissions(access: ServiceAccess) -> dict[str, str]:
    """configure / write / read regexes over resource names (exchanges and queues).

    * configure: its own queues and their DLQs (declare them); nothing shared;
    * write: shop.events (publish; the topic permissions below narrow the routing keys), the
      retry and dead-letter exchanges (copies of its failed messages), its own queues (bind
      them); the default exchange only if it needs it (requests, replies, Celery);
    * read: its own queues (consume), and the exchanges its queues are bound to (Warren's,
      and the broker's event exchange for the audit).
    """
    queues = [_literal(queue.name) for queue in access.consumes]
    dlqs = [_literal(queue.dlq_name) for queue in access.consumes]
    # Its partitions' exchanges: declared, bound to shop.events, and its partitions bound to them.
    own = [_literal(partitioned.name) for partitioned in access.partitioned]
    extra = [access.extra] if access.extra else []
    copies = [_literal(DEAD_LETTER.name), r"shop\.retry\..+"]
    default = [r"amq\.default"] if access.default_exchange else []
    bound_to = [_literal(EVENTS.name), _literal(DEAD_LETTER.name), _literal(REQUEUE.name)]
    bound_to += [_literal(exchange) for exchange in access.reads]
    return {
        "configure": _alternatives(*queues, *dlqs, *own, *extra),
        "write": _alternatives(
            _literal(EVENTS.name), *copies, *default, *queues, *dlqs, *own, *extra
        ),
        "read": _alternatives(*queues, *bound_to, *own, *extra),
    }


def topic_permissions(access: ServiceAccess) -> dict[str, str]:
    """On shop.events: publish only its own event types, bind only to those its queues receive."""
    receives = sorted({key for queue in access.consumes for key in queue.routing_keys})
    return {
        "exchange": EVENTS.name,
        "write": _alternatives(*sorted(_literal(event.TYPE) for event in access.publishes)),
        "read": _alternatives(*(_literal(key) for key in receives)),
    }
    # --8<-- [end:permissions]


def existing(exchange: RabbitExchange) -> RabbitExchange:
    """The same exchange, checked (a passive declare: no right to configure it needed)."""
    return RabbitExchange(exchange.name, type=exchange.type, durable=True, declare=False)


def exchanges(retry_delays: tuple[int, ...] = RETRY_DELAYS_SECONDS) -> Iterator[RabbitExchange]:
    yield from (EVENTS, DEAD_LETTER, REQUEUE)
    yield from (retry_exchange(delay) for delay in delay_steps(retry_delays))
    yield from (partitioned.exchange for partitioned in PARTITIONED_QUEUES)


def queue_by_name(name: str) -> ConsumerQueue:
    for consumer_queue in ALL_QUEUES_WITH_DLQ:
        if consumer_queue.name == name:
            return consumer_queue
    raise KeyError(f"no consumer queue named {name!r}")


# --8<-- [start:declare-consumer-queue]
async def declare_consumer_queue(
    broker: Any,
    consumer_queue: ConsumerQueue,
    retry_delays: tuple[int, ...],
    *,
    shared: bool = True,
) -> None:
    """Declare one consumer queue with its bindings, its DLQ and its delay queues (idempotent).

    ``shared=False``: the exchanges and delay queues exist already (a service's own user may
    not declare them); only the queue, its DLQ and their bindings are declared."""

    def exchange(declared: RabbitExchange) -> RabbitExchange:
        return declared if shared else existing(declared)

    events = await broker.declare_exchange(exchange(EVENTS))
    requeue = await broker.declare_exchange(exchange(REQUEUE))
    dead_letter = await broker.declare_exchange(exchange(DEAD_LETTER))
    for delay in delay_steps(retry_delays if consumer_queue.retried and shared else ()):
        delay_exchange = await broker.declare_exchange(retry_exchange(delay))
        delay_queue = await broker.declare_queue(retry_queue(delay))
        await delay_queue.bind(delay_exchange, routing_key="")
    queue = await broker.declare_queue(consumer_queue.queue)
    for key in consumer_queue.bound_keys:
        await queue.bind(events, routing_key=key)
    if consumer_queue.partition_of is not None:  # its share of its consistent-hash exchange
        hashed = consistent_hash_exchange(consumer_queue.partition_of)
        await queue.bind(await broker.declare_exchange(hashed), routing_key=PARTITION_WEIGHT)
    await queue.bind(requeue, routing_key=consumer_queue.name)
    dlq = await broker.declare_queue(consumer_queue.dlq)
    await dlq.bind(dead_letter, routing_key=consumer_queue.name)
    # --8<-- [end:declare-consumer-queue]


# --8<-- [start:route-events]
async def route_events(
    broker: Any, single: ConsumerQueue, partitioned: PartitionedQueue, *, partitions: bool
) -> None:
    """Route ``single``'s events to it (as provisioned), or through ``partitioned`` instead:
    bind one way to ``shop.events`` and unbind the other (idempotent). The new way is bound
    first, so no event falls between the two (one may go both ways: handled once, the copy is
    a duplicate). The service consumes both ways, so what waits on the way just unbound is
    still handled: switching loses nothing."""
    events = await broker.declare_exchange(existing(EVENTS))
    hashed = await broker.declare_exchange(partitioned.exchange)
    queue = await broker.declare_queue(single.queue)
    for key in single.routing_keys:
        if partitions:
            await hashed.bind(events, routing_key=key)  # exchange to exchange
            await queue.unbind(events, routing_key=key)
        else:
            await queue.bind(events, routing_key=key)
            await hashed.unbind(events, routing_key=key)
            # --8<-- [end:route-events]


async def declare_topology(broker: Any, retry_delays: tuple[int, ...]) -> None:
    """Declare every exchange, queue and binding (idempotent). ``broker`` is a connected RabbitBroker;
    ``retry_delays`` is the backoff the services run with (settings.retry_delays_seconds)."""
    for exchange in exchanges(retry_delays):
        await broker.declare_exchange(exchange)
    for consumer_queue in ALL_QUEUES_WITH_DLQ:
        await declare_consumer_queue(broker, consumer_queue, retry_delays)


async def declare_own_queues(
    broker: Any, access: ServiceAccess, retry_delays: tuple[int, ...]
) -> None:
    """What a service with a user of its own declares: its own queues, their DLQs and
    bindings. The shared exchanges and delay queues are the operator's (provisioned with
    :func:`declare_topology` or the definitions); they are only checked here, passively."""
    for exchange in (EVENTS, REQUEUE, DEAD_LETTER):
        await broker.declare_exchange(existing(exchange))
    for consumer_queue in access.consumes:
        await declare_consumer_queue(broker, consumer_queue, retry_delays, shared=False)


def queue_names(retry_delays: tuple[int, ...] = RETRY_DELAYS_SECONDS) -> list[str]:
    """Every queue the topology declares (with these retry delays)."""
    names = [q.name for q in ALL_QUEUES_WITH_DLQ] + [q.dlq_name for q in ALL_QUEUES_WITH_DLQ]
    names += [
        retry_queue(delay).name for delay in delay_steps((*RETRY_DELAYS_SECONDS, *retry_delays))
    ]
    return names


async def queues_in_use(
    rabbit_url: str, retry_delays: tuple[int, ...] = RETRY_DELAYS_SECONDS
) -> dict[str, int]:
    """Warren's queues that have consumers right now, with how many: a live system."""
    import aio_pika
    from aiormq.exceptions import ChannelNotFoundEntity

    in_use = {}
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        for name in queue_names(retry_delays):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                continue  # the channel is closed by the broker
            if queue.declaration_result.consumer_count:
                in_use[name] = queue.declaration_result.consumer_count
            await channel.close()
    return in_use


async def delete_queues(
    rabbit_url: str, retry_delays: tuple[int, ...] = RETRY_DELAYS_SECONDS
) -> int:
    """Delete every Warren queue (and its messages). Returns how many were deleted."""
    import aio_pika

    names = queue_names(retry_delays)
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
    return len(names)


# --- definitions.json for compose's broker ---------------------------------------------------


def _queue_definition(queue: RabbitQueue, vhost: str) -> dict[str, Any]:
    arguments = dict(queue.arguments or {})  # includes x-queue-type
    return {
        "name": queue.name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": dict(sorted(arguments.items())),
    }


# --8<-- [start:backlog-policies]
def backlog_policies(vhost: str, max_length: int | None = None) -> list[dict[str, Any]]:
    """One policy per queue with a length limit: ``max-length`` and ``overflow:
    reject-publish``. ``max_length`` replaces every queue's own (the tests make them small).

    A policy, not a queue argument: a limit changes on a running broker (``warren topology
    provision``) without deleting the queue, which a changed argument would require. Not
    limited: the DLQs (a limit would drop dead letters, the evidence) and the delay queues
    (what waits there is already accepted work, bounded by what the queues above let in).
    """
    return [
        {
            "vhost": vhost,
            "name": f"warren-backlog-{queue.name}",
            "pattern": "^" + queue.name.replace(".", r"\.") + "$",
            "apply-to": "queues",
            "priority": 0,
            "definition": {
                "max-length": max_length or queue.max_length,
                # Refuse new messages (a negative confirm to the publisher), never drop old ones.
                "overflow": "reject-publish",
            },
        }
        for queue in ALL_QUEUES_WITH_DLQ
        if queue.max_length is not None
    ]
    # --8<-- [end:backlog-policies]


def password_hash(user: str, password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password)).

    The salt is derived from the user name so that exporting twice gives the same file.
    """
    salt = hashlib.sha256(f"warren:{user}".encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _user(name: str, password: str, tags: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "password_hash": password_hash(name, password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
    }


def _users(
    vhost: str, admin: tuple[str, str] | None, services: Mapping[str, str]
) -> dict[str, Any]:
    """The operator (administrator, every right) and one user per service (least privilege),
    with the vhost and their permissions, as definitions."""
    users, grants, topics = [], [], []
    if admin is not None:
        users.append(_user(*admin, ["administrator"]))
        grants.append(
            {"user": admin[0], "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        )
    for access in SERVICES:
        if access.user in services:
            users.append(_user(access.user, services[access.user], []))
            grants.append({"user": access.user, "vhost": vhost, **permissions(access)})
            topics.append({"user": access.user, "vhost": vhost, **topic_permissions(access)})
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": grants,
        "topic_permissions": topics,
    }


def definitions(
    vhost: str = "/",
    *,
    retry_delays: tuple[int, ...] = RETRY_DELAYS_SECONDS,
    user: str | None = None,
    password: str | None = None,
    service_passwords: Mapping[str, str] | None = None,
    queue_max_length: int | None = None,
) -> dict[str, Any]:
    """RabbitMQ definitions equal to what :func:`declare_topology` does.

    With ``user``/``password`` they also hold that user (the operator: administrator), the vhost
    and its permissions: a broker that loads definitions at boot creates no default user of its
    own. ``service_passwords`` (service -> password) adds one user per service, with the least
    privilege of :data:`SERVICES`. ``queue_max_length`` replaces every queue's length limit
    (:func:`backlog_policies`).
    """
    steps = delay_steps(retry_delays)
    queues: list[RabbitQueue] = [retry_queue(delay) for delay in steps]
    bindings = [(retry_exchange(delay).name, retry_queue(delay).name, "") for delay in steps]
    for consumer_queue in ALL_QUEUES_WITH_DLQ:
        queues += [consumer_queue.queue, consumer_queue.dlq]
        bindings += [(EVENTS.name, consumer_queue.name, key) for key in consumer_queue.bound_keys]
        if consumer_queue.partition_of is not None:
            bindings.append((consumer_queue.partition_of, consumer_queue.name, PARTITION_WEIGHT))
        bindings.append((REQUEUE.name, consumer_queue.name, consumer_queue.name))
        bindings.append((DEAD_LETTER.name, consumer_queue.dlq_name, consumer_queue.name))
    admin = (user, password) if user is not None and password is not None else None
    access: dict[str, Any] = {}
    if admin is not None or service_passwords:
        access = _users(vhost, admin, service_passwords or {})
    return {
        **access,
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type.value,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": dict(exchange.arguments or {}),
            }
            for exchange in exchanges(retry_delays)
        ],
        "queues": [_queue_definition(queue, vhost) for queue in queues],
        "policies": backlog_policies(vhost, queue_max_length),
        "bindings": [
            {
                "source": source,
                "vhost": vhost,
                "destination": destination,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for source, destination, key in bindings
        ],
    }
