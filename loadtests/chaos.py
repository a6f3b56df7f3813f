"""``make chaos``: the whole system under one fault after another, with counted effects.

For each scenario it starts the system as ``make run`` does (every service, two payment and
two inventory replicas, the Celery worker, its own MongoDB stand-in, the SMTP sink), places
orders at a steady rate the way a careful client does (an ``Idempotency-Key`` per order, the
same key on every retry of it), injects the fault mid-load, and then waits until the ledger
holds. It counts, where the effects happened:

* **offered** orders, **accepted** ones (202), **final** ones;
* **lost**: accepted, never final;
* **duplicated effects**: charges that moved money twice for an order (the gateway's record
  of every call), emails beyond one per order event (the mail sink itself), stock moved beyond
  what the final orders account for;
* **recovery**: seconds from the end of the fault until every accepted order is final and the
  ledger holds.

Every scenario must end with 0 lost and 0 duplicated effects. The results go to
``reports/chaos.json`` and ``reports/chaos.md`` (the table in the tutorial's chapter).

    python -m loadtests.chaos                      # every scenario (about 20 minutes)
    python -m loadtests.chaos --only duplicates    # one (repeat --only for more)
    python -m loadtests.chaos --quick              # fewer orders per scenario
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aio_pika
import httpx
import typer
from rich.console import Console
from rich.table import Table

from cli.dlq import persistent_copy
from services.order.domain import SAGA_DEADLINE_REASON
from shared import auth
from shared.contracts import (
    Envelope,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentSucceeded,
    StockReserved,
)
from shared.messaging import H_PUBLISHER

console = Console()

SKUS = ["RABBIT-PLUSH", "CARROT-MUG", "WARREN-MAP", "CLOVER-TEA", "HOP-SOCKS", "LETTUCE-BAG"]

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "rabbitmq-cluster.sh"
CLUSTER_URL = "amqp://guest:guest@127.0.0.1:5700/"  # HAProxy in front of the three nodes

# Short enough for a 20-minute suite, with the same proportions as the shipped defaults:
# the inventory lease < the saga deadline < the retry budget (31 s).
FAST_ENV = {
    "RETRY_DELAYS_SECONDS": "[1, 2, 4, 8, 16]",
    "DECISION_LEASE_SECONDS": "5",
    "SAGA_DEADLINE_SECONDS": "20",
    "SAGA_SWEEP_SECONDS": "1",
    "STALE_CLAIM_SECONDS": "15",
    "SWEEP_SECONDS": "3",
    "OUTBOX_SWEEP_SECONDS": "1",
    "OUTBOX_LEASE_SECONDS": "5",  # a killed order replica's events: adopted within the deadline
}


@dataclass
class Result:
    scenario: str
    fault: str
    offered: int = 0
    accepted: int = 0
    final: int = 0
    lost: int = 0
    extra_charges: int = 0
    extra_emails: int = 0
    extra_stock_moves: int = 0
    recovery_s: float = 0.0
    ledger_failures: list[str] = field(default_factory=list)
    notes: str = ""

    @property
    def duplicated(self) -> int:
        return self.extra_charges + self.extra_emails + self.extra_stock_moves

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.ledger_failures


# --- the shop under load -------------------------------------------------------------------------


class Shoppers:
    """Places ``orders`` at ``rate`` per second, each retried with its own key until accepted
    (503, 5xx, a dropped connection) or given up on after ``patience`` seconds."""

    def __init__(
        self, api: str | list[str], orders: int, rate: float, patience: float = 60.0
    ) -> None:
        # Several order replicas: each order goes to the next, and each retry to the one after
        # (a client-side balancer: a replica that died costs a retry, not the order).
        self.apis = [api] if isinstance(api, str) else api
        self.orders, self.rate, self.patience = orders, rate, patience
        self.accepted: list[str] = []
        self.offered = 0
        self.refusals: Counter[str] = Counter()
        # Fifty customers, each with a bearer token of its own.
        secret = auth.configured_secret()
        self.signed_in = [auth.bearer(f"chaos-{c}", secret=secret) for c in range(50)]

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
            started = time.monotonic()
            tasks = []
            for n in range(self.orders):
                await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
                tasks.append(asyncio.create_task(self._one(client, n)))
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, n: int) -> None:
        self.offered += 1
        key = str(uuid.uuid4())
        body = {
            "lines": [{"sku": SKUS[n % len(SKUS)], "quantity": 1 + n % 2}],
            "payment_token": "tok_visa",
        }
        headers = {"Idempotency-Key": key, **self.signed_in[n % 50]}
        deadline = time.monotonic() + self.patience
        tries = 0
        while time.monotonic() < deadline:
            api = self.apis[(n + tries) % len(self.apis)]
            tries += 1
            try:
                response = await client.post(f"{api}/orders", json=body, headers=headers)
            except httpx.HTTPError as exc:
                self.refusals[type(exc).__name__] += 1
            else:
                if response.status_code == 202:
                    self.accepted.append(response.json()["order_id"])
                    return
                self.refusals[str(response.status_code)] += 1
                if response.status_code < 500:
                    return  # refused for good (never expected here)
            await asyncio.sleep(random.uniform(0.5, 1.5))


# --- faults -----------------------------------------------------------------------------------


async def cluster_script(*args: str) -> None:
    """scripts/rabbitmq-cluster.sh (start, stop-node N, start-node N), off the event loop."""
    await asyncio.to_thread(
        subprocess.run, [str(CLUSTER_SCRIPT), *args], check=True, capture_output=True, timeout=300
    )


class Faults:
    """What a scenario can do to the running system."""

    def __init__(self, system: Any, rabbit_url: str, log: Callable[[str], None]) -> None:
        self.system, self.rabbit_url, self.log = system, rabbit_url, log
        self.copies = 0  # events the duplicating tap delivered twice
        self.events: list[tuple[str, float]] = []  # (what, wall-clock time it happened)

    def mark(self, what: str) -> None:
        self.log(what)
        self.events.append((what, time.time()))

    def pid(self, name: str) -> int:
        return int(self.system.processes[name].process.pid)

    async def kill(self, name: str, down_for: float = 2.0) -> None:
        """SIGKILL: no cleanup, no ack, no flush. Then start it again."""
        self.log(f"SIGKILL {name}")
        executor = self.system.processes[name]
        os.kill(self.pid(name), signal.SIGKILL)
        executor.process.wait(timeout=30)
        executor.process = None
        await asyncio.sleep(down_for)
        await asyncio.to_thread(executor.start)
        self.log(f"{name} is back")

    async def kill_email_worker_mid_send(self) -> None:
        """SIGKILL one of the Celery worker's pool children: it is sending under load."""
        listing = subprocess.run(
            ["ps", "-o", "pid=,stat=", "--ppid", str(self.pid("emails"))],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        alive = [line.split()[0] for line in listing if not line.split()[1].startswith("Z")]
        if alive:
            child = random.choice(alive)
            self.log(f"SIGKILL the email worker's pool child {child}")
            os.kill(int(child), signal.SIGKILL)

    async def freeze(self, name: str, seconds: float) -> None:
        self.log(f"SIGSTOP {name} for {seconds:g} s")
        os.kill(self.pid(name), signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(self.pid(name), signal.SIGCONT)
            self.log(f"SIGCONT {name}")

    async def rabbitmqctl(self, *args: str) -> None:
        from shared.testing.system import rabbitmqctl_command

        command = rabbitmqctl_command() or ["rabbitmqctl"]
        await asyncio.to_thread(
            subprocess.run, [*command, *args], check=True, capture_output=True, timeout=120
        )

    async def restart_broker(self, down_for: float = 3.0) -> None:
        self.log("rabbitmqctl stop_app")
        await self.rabbitmqctl("stop_app")
        await asyncio.sleep(down_for)
        await self.rabbitmqctl("start_app")
        self.log("rabbitmqctl start_app")

    async def database_down(self, seconds: float, *, kill: bool) -> None:
        database = self.system.processes["mongo"]
        self.log(f"database {'killed' if kill else 'stopped'} for {seconds:g} s")
        if kill:
            os.kill(int(database.process.pid), signal.SIGKILL)
            database.process.wait(timeout=30)
            database.process = None
        else:
            await asyncio.to_thread(database.stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(database.start)
        self.log("database back")

    async def duplicate_events(self, share: float) -> None:
        """Publish a second copy of ``share`` of all events, at once, while the saga runs
        (until cancelled); ``self.copies`` counts them."""
        connection = await aio_pika.connect(self.rabbit_url)
        operator = urlparse(self.rabbit_url).username or "guest"  # who the copies come from
        self.copies = 0
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange("shop.events")
            tap = await channel.declare_queue(exclusive=True)  # server-named, ours alone
            await tap.bind(events, routing_key="#")
            async with tap.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        headers = dict(message.headers or {})
                        if "x-chaos-copy" in headers or random.random() >= share:
                            continue
                        headers["x-chaos-copy"] = 1
                        await events.publish(
                            persistent_copy(message, headers, operator=operator),
                            routing_key=message.routing_key or "",
                        )
                        self.copies += 1

    async def republish_recent_placements(self, count: int) -> int:
        """Deliver again the ``count`` latest ``order.placed`` events (duplicates of messages
        a frozen consumer may be holding)."""
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient = AsyncMongoClient(self.system.env["MONGO_URL"], tz_aware=True)
        try:
            events = client[self.system.database("order")]["order_events"]
            recent = (
                await events.find({"type": OrderPlaced.TYPE})
                .sort("occurred_at", -1)
                .limit(count)
                .to_list()
            )
        finally:
            await client.close()
        connection = await aio_pika.connect(self.rabbit_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("shop.events")
            for doc in recent:
                envelope = Envelope.model_validate(doc["envelope"])  # as the relay published it
                await exchange.publish(
                    aio_pika.Message(
                        envelope.model_dump_json().encode(),
                        message_id=envelope.id,
                        correlation_id=envelope.correlation_id,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        # The operator vouches for the copy: order published the original.
                        headers={H_PUBLISHER: "order"},
                        user_id=urlparse(self.rabbit_url).username or "guest",
                    ),
                    routing_key=envelope.type,
                )
        self.log(f"delivered {len(recent)} order.placed events again")
        return len(recent)

    async def poison_flood(self, count: int) -> Counter[str]:
        """Undecodable, schema-invalid and unknown-version events, garbage tasks and bad quote
        requests. Returns how many dead letters each DLQ should get."""
        from shared import topology

        expected: Counter[str] = Counter()
        keys = [cls.TYPE for cls in (OrderPlaced, StockReserved, PaymentSucceeded, OrderConfirmed)]
        bodies = [
            b"\x00\xff not json",
            json.dumps({"type": OrderPlaced.TYPE, "data": "not an order"}).encode(),
            json.dumps(
                {
                    "type": StockReserved.TYPE,
                    "version": 9,
                    "source": "x",
                    "correlation_id": "o",
                    "data": {"order_id": "o"},
                }
            ).encode(),
        ]
        connection = await aio_pika.connect(self.rabbit_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            events = await channel.get_exchange("shop.events")
            for n in range(count):
                target = n % 5
                message = aio_pika.Message(
                    bodies[n % len(bodies)],
                    message_id=f"poison-{n}",
                    content_type="application/json",
                )
                if target < 4:
                    key = keys[target]
                    await events.publish(message, routing_key=key)
                    for queue in topology.CONSUMER_QUEUES:
                        if key in queue.bound_keys:
                            expected[queue.dlq_name] += 1
                elif n % 2:
                    await channel.default_exchange.publish(
                        message, routing_key=topology.NOTIFICATION_EMAILS.name
                    )
                    expected[topology.NOTIFICATION_EMAILS.dlq_name] += 1
                else:
                    await channel.default_exchange.publish(
                        message, routing_key=topology.INVENTORY_QUOTES.name
                    )
                    expected[topology.INVENTORY_QUOTES.dlq_name] += 1
        self.log(f"published {count} poison messages")
        return expected


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    fault: str
    act: Callable[[Faults, dict[str, Any]], Awaitable[str]]
    orders: int = 300
    rate: float = 15.0
    # Wait this long into the load before the fault.
    fault_after: float = 5.0
    env: dict[str, str] = field(default_factory=lambda: dict(FAST_ENV))
    recover_within: float = 180.0
    needs_root_broker: bool = False
    # On the local three-node cluster (scripts/rabbitmq-cluster.sh, through HAProxy), with two
    # replicas of every service.
    cluster: bool = False


async def _broker_restart(faults: Faults, _: dict[str, Any]) -> str:
    await faults.restart_broker()
    return ""


async def _kill_each(faults: Faults, _: dict[str, Any]) -> str:
    for name in ("inventory", "payment_1", "notification", "order", "inventory_2"):
        await faults.kill(name)
        await asyncio.sleep(3)
    for _ in range(3):
        await faults.kill_email_worker_mid_send()
        await asyncio.sleep(2)
    return "inventory, payment, notification, order, inventory again; 3 email pool children"


async def _cluster_nodes(faults: Faults, _: dict[str, Any]) -> str:
    """Node 1 stops, comes back; then node 2. Each time two of three nodes keep the quorum."""
    for node in (1, 2):
        faults.log(f"stopping node {node}")
        await cluster_script("stop-node", str(node))
        faults.mark(f"node {node} down")
        await asyncio.sleep(10)
        await cluster_script("start-node", str(node))
        faults.mark(f"node {node} back")
        await asyncio.sleep(5)
    return "node 1 down 10 s, then node 2 down 10 s"


async def _cluster_replicas(faults: Faults, _: dict[str, Any]) -> str:
    """SIGKILL one replica of each service while its twin carries on; each comes back."""
    for name in ("order", "inventory", "payment_1", "notification", "emails"):
        faults.mark(f"{name} killed")
        await faults.kill(name)
        await asyncio.sleep(3)
    return "one replica each of order, inventory, payment, notification, the email worker"


async def _database_killed(faults: Faults, _: dict[str, Any]) -> str:
    await faults.database_down(5, kill=True)
    return ""


async def _frozen_consumer(faults: Faults, _: dict[str, Any]) -> str:
    lease = float(FAST_ENV["DECISION_LEASE_SECONDS"])
    freeze = asyncio.create_task(faults.freeze("inventory", lease + 7))
    await asyncio.sleep(0.5)
    copies = await faults.republish_recent_placements(20)
    await freeze
    return f"frozen {lease + 7:g} s (lease {lease:g} s); {copies} placements delivered again"


async def _duplicates(faults: Faults, state: dict[str, Any]) -> str:
    state["background"] = [asyncio.create_task(faults.duplicate_events(0.10))]
    state["copies"] = lambda: faults.copies
    return ""


async def _poison(faults: Faults, state: dict[str, Any]) -> str:
    state["expected_dead_letters"] = await faults.poison_flood(300)
    return "300 poison messages"


def _payment_errors(rate: float) -> Callable[[Faults, dict[str, Any]], Awaitable[str]]:
    async def act(faults: Faults, _: dict[str, Any]) -> str:
        for name in ("payment_1", "payment_2"):
            await asyncio.to_thread(faults.system.restart, name, PAYMENT_ERROR_RATE=str(rate))
        faults.log(f"gateway error rate {rate:.0%}")
        return ""

    return act


async def _database_down_long(faults: Faults, _: dict[str, Any]) -> str:
    await faults.database_down(120, kill=False)
    return "shipped defaults: retry budget 811 s, saga deadline 600 s"


SCENARIOS = [
    Scenario(
        "broker-restart",
        "RabbitMQ stop_app / start_app mid-load",
        _broker_restart,
        orders=1000,
        rate=20,
        fault_after=15,
        needs_root_broker=True,
    ),
    Scenario(
        "kill-services",
        "SIGKILL each service in turn, the email worker mid-send",
        _kill_each,
        orders=700,  # 47 s of load: every kill lands while orders flow
    ),
    Scenario("database-killed", "the MongoDB stand-in SIGKILLed and restarted", _database_killed),
    Scenario(
        "frozen-consumer",
        "inventory SIGSTOPped past its lease while its messages are delivered again",
        _frozen_consumer,
    ),
    Scenario(
        "duplicates",
        "10 % of all events delivered twice, concurrently",
        _duplicates,
        fault_after=0,
    ),
    Scenario("poison-flood", "300 poison messages across the queues", _poison, orders=200),
    Scenario("payment-errors-10", "gateway fails 10 % of calls", _payment_errors(0.1), orders=200),
    Scenario("payment-errors-50", "gateway fails 50 % of calls", _payment_errors(0.5), orders=200),
    Scenario(
        "payment-errors-100",
        "gateway fails every call (the saga deadline cancels)",
        _payment_errors(1.0),
        orders=150,
        fault_after=0,
    ),
    Scenario(
        "database-down-120s",
        "the database down for 120 s (longer than the old 31 s retry budget)",
        _database_down_long,
        orders=300,
        env={},
        recover_within=420,
    ),
    Scenario(
        "cluster-nodes",
        "cluster: one RabbitMQ node stopped, back, then another (two replicas of everything)",
        _cluster_nodes,
        # 90 s of load: orders flow through both stops and both returns. At 8/s: three broker
        # nodes and two of every service share these two cores; at 20/s the backlog, not the
        # failover, set the times (measured: confirmations 60 s behind).
        orders=720,
        rate=8,
        fault_after=5,
        cluster=True,
    ),
    Scenario(
        "cluster-replicas",
        "cluster: one replica of each service SIGKILLed while its twin carries on",
        _cluster_replicas,
        orders=480,  # 60 s of load: orders flow through every kill and return
        rate=8,
        cluster=True,
    ),
]


# --- one run -------------------------------------------------------------------------------


async def count_effects(system: Any, accepted: list[str], result: Result) -> None:
    """Lost orders and duplicated effects, counted where they happened."""
    from pymongo import AsyncMongoClient

    from cli.ledger import emails_in_maildir

    client: AsyncMongoClient = AsyncMongoClient(system.env["MONGO_URL"], tz_aware=True)
    try:
        order_db = client[system.database("order")]
        # Every order the shop recorded, not only those whose client saw the 202: one whose
        # answer was lost (the client gave up) still sells stock when it is confirmed.
        statuses = {
            doc["_id"]: doc["status"] async for doc in order_db["orders"].find({}, {"status": 1})
        }
        result.final = sum(statuses.get(o) in ("CONFIRMED", "CANCELLED") for o in accepted)
        result.lost = len(set(accepted)) - result.final
        moved: Counter[str] = Counter()
        async for doc in client[system.database("payment")]["gateway_charges"].find(
            {"status": {"$in": ["captured", "refunded"]}}, {"order_id": 1}
        ):
            moved[doc["order_id"]] += 1
        result.extra_charges = sum(n - 1 for n in moved.values() if n > 1)
        result.extra_emails = sum(
            n - 1 for n in emails_in_maildir(system.maildir).values() if n > 1
        )
        bought: Counter[str] = Counter()
        async for doc in order_db["order_events"].find({"type": OrderPlaced.TYPE}):
            if statuses.get(doc["order_id"]) == "CONFIRMED":
                for line in doc["envelope"]["data"]["lines"]:
                    bought[line["sku"]] += line["quantity"]
        async for doc in client[system.database("inventory")]["stock"].find({}):
            held_by_final = sum(
                hold["quantity"]
                for order_id, hold in (doc.get("holds") or {}).items()
                if statuses.get(order_id) in ("CONFIRMED", "CANCELLED")
            )
            result.extra_stock_moves += abs(doc["sold"] - bought[doc["_id"]]) + held_by_final
    finally:
        await client.close()


async def run_scenario(scenario: Scenario, rabbit_url: str, run_dir: Path, quick: bool) -> Result:
    from cli import dlq
    from cli.ledger import run_checks
    from shared.settings import WarrenSettings
    from shared.testing.system import (
        free_port,
        mongo_standin,
        mongo_url_of,
        running_system,
        service_process,
    )

    result = Result(scenario.name, scenario.fault)
    started = time.monotonic()

    def log(message: str) -> None:
        console.print(f"  [dim]{time.monotonic() - started:6.1f}s[/] {message}")

    orders = max(60, scenario.orders // 4) if quick else scenario.orders
    env = {"LOG_LEVEL": "WARNING", "PAYMENT_LATENCY_MS": "20", **scenario.env}
    if scenario.cluster:
        log("starting the local cluster (scripts/rabbitmq-cluster.sh start)")
        await cluster_script("start")
        rabbit_url = CLUSTER_URL
        os.environ["WARREN_RABBITMQCTL"] = env["WARREN_RABBITMQCTL"] = f"{CLUSTER_SCRIPT} ctl"
    database = mongo_standin(run_dir / scenario.name / "mongo")
    database.start()
    async with running_system(
        rabbit_url,
        mongo_url_of(database),
        run_dir / scenario.name,
        f"chaos{uuid.uuid4().hex[:6]}",
        extra_env=env,
        database=database,
    ) as system:
        # A second inventory: a duplicate has a consumer to go to while the first is frozen.
        # On the cluster, a second replica of every service.
        apis = [system.api]
        for service in (
            ("inventory", "order", "notification", "emails") if scenario.cluster else ("inventory",)
        ):
            port = None if service == "emails" else free_port()
            system.processes[f"{service}_2"] = service_process(system, f"{service}_2", port)
            system.start(f"{service}_2")
            if service == "order":
                apis.append(f"http://127.0.0.1:{port}")
        log(f"system up; {orders} orders at {scenario.rate:g}/s")
        shoppers = Shoppers(apis, orders, scenario.rate)
        state: dict[str, Any] = {}
        faults = Faults(system, rabbit_url, log)

        async def fault() -> None:
            # Mid-load, whatever the number of orders (--quick shortens the load).
            await asyncio.sleep(min(scenario.fault_after, orders / scenario.rate / 3))
            result.notes = await scenario.act(faults, state)

        load = asyncio.create_task(shoppers.run())
        act = asyncio.create_task(fault())
        await load
        await act
        if state.get("background"):
            await asyncio.sleep(3)  # the last orders' sagas run with the fault still on
        for task in state.get("background", []):  # e.g. the duplicating tap
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if "copies" in state:
            result.notes = f"{state['copies']()} events delivered twice"
        fault_over = time.monotonic()
        result.offered, result.accepted = shoppers.offered, len(shoppers.accepted)
        log(f"load done: {result.accepted}/{result.offered} accepted {dict(shoppers.refusals)}")

        if "expected_dead_letters" in state:
            expected: Counter[str] = state["expected_dead_letters"]
            counts = await _wait_for_dead_letters(rabbit_url, expected, dlq)
            wrong = {q: (counts.get(q, 0), n) for q, n in expected.items() if counts.get(q) != n}
            if wrong:
                result.ledger_failures.append(f"dead letters (got, expected): {wrong}")
            for name in {q.removesuffix(".dlq") for q in expected}:
                await dlq.purge_queue(name, rabbit_url)
            result.notes += f"; all {sum(expected.values())} dead letters where expected"

        settings = WarrenSettings(
            mongo_url=system.env["MONGO_URL"],
            mongo_db_prefix=system.env["MONGO_DB_PREFIX"],
            rabbit_url=rabbit_url,
        )
        deadline = fault_over + scenario.recover_within
        checks = []
        while time.monotonic() < deadline:
            try:
                checks = await run_checks(settings, maildir=system.maildir)
            except Exception as exc:  # the database may still be coming back
                log(f"ledger not readable yet: {exc!r}")
                checks = []
            if checks and all(c.ok for c in checks):
                break
            await asyncio.sleep(1.0)
        result.recovery_s = round(time.monotonic() - fault_over, 1)
        result.ledger_failures += [f for c in checks for f in c.failures[:10]] or (
            [] if checks else ["the ledger never answered"]
        )
        await count_effects(system, shoppers.accepted, result)
        if faults.events:
            back = await confirming_again(system, faults.events)
            timed_out = int(back.pop("(deadline)")[0])
            result.notes += f"; {timed_out} cancelled by their saga deadline"
            result.notes += "; after each event, first new order confirmed / longest pause: "
            result.notes += ", ".join(
                f"{what} {first:.1f} / {pause:.1f} s" for what, (first, pause) in back.items()
            )
    verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
    log(
        f"{verdict}: lost {result.lost}, duplicated {result.duplicated}, "
        f"recovered in {result.recovery_s} s"
    )
    return result


PAUSE_WINDOW = 20.0  # seconds after a fault event in which the longest pause is looked for


async def confirming_again(
    system: Any, events: list[tuple[str, float]]
) -> dict[str, tuple[float, float]]:
    """For each fault event: seconds from it until the first order placed after it was
    confirmed, and the longest pause between two confirmations in the 20 s after it (from the
    event store: each order's order.placed and order.confirmed times); and, as ``(deadline)``,
    how many orders their saga deadline cancelled (none should be)."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(system.env["MONGO_URL"], tz_aware=True)
    try:
        store = client[system.database("order")]["order_events"]
        placed, confirmed, timed_out = {}, {}, 0
        types = [OrderPlaced.TYPE, OrderConfirmed.TYPE, OrderCancelled.TYPE]
        async for doc in store.find({"type": {"$in": types}}):
            if doc["type"] == OrderCancelled.TYPE:
                timed_out += doc["envelope"]["data"]["reason"] == SAGA_DEADLINE_REASON
                continue
            times = placed if doc["type"] == OrderPlaced.TYPE else confirmed
            times[doc["order_id"]] = doc["occurred_at"].timestamp()
    finally:
        await client.close()
    back = {"(deadline)": (float(timed_out), 0.0)}
    confirmations = sorted(confirmed.values())
    for what, at in events:
        later = [confirmed[o] for o, t in placed.items() if t >= at and o in confirmed]
        first = min(later) - at if later else float("nan")
        # Closed at the window's end (or the last confirmation): no confirmation at all in
        # it, or none at its end, is a pause too.
        end = min(at + PAUSE_WINDOW, max(confirmations, default=at))
        window = [at, *(c for c in confirmations if at < c <= end), end]
        pause = max((b - a for a, b in itertools.pairwise(window)), default=0.0)
        back[what] = (round(first, 1), round(pause, 1))
    return back


async def _wait_for_dead_letters(
    rabbit_url: str, expected: Counter[str], dlq: Any
) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while True:
        counts = {f"{name}.dlq": dead for name, _, dead in await dlq.list_counts(rabbit_url)}
        if all(counts.get(q, 0) >= n for q, n in expected.items()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.5)


def _local_broker(rabbit_url: str) -> bool:
    return urlparse(rabbit_url).hostname in ("127.0.0.1", "localhost") and os.geteuid() == 0


def render(results: list[Result]) -> str:
    table = Table(
        "scenario",
        "offered",
        "accepted",
        "final",
        "lost",
        "extra charges",
        "extra emails",
        "extra stock",
        "recovery s",
        "result",
        title="Warren under chaos",
    )
    lines = [
        "| scenario | fault | offered | accepted | final | lost | duplicated (charges / emails / stock) | recovered after | result | notes |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in results:
        table.add_row(
            r.scenario,
            str(r.offered),
            str(r.accepted),
            str(r.final),
            str(r.lost),
            str(r.extra_charges),
            str(r.extra_emails),
            str(r.extra_stock_moves),
            f"{r.recovery_s:g}",
            "[green]pass[/]" if r.passed else "[red]FAIL[/]",
        )
        lines.append(
            f"| `{r.scenario}` | {r.fault} | {r.offered} | {r.accepted} | {r.final} | {r.lost} "
            f"| {r.extra_charges} / {r.extra_emails} / {r.extra_stock_moves} "
            f"| {r.recovery_s:g} s | {'pass' if r.passed else 'FAIL'} | {r.notes.strip('; ')} |"
        )
    console.print(table)
    return "\n".join(lines) + "\n"


def main(
    only: list[str] = typer.Option(None, "--only", help="Run only this scenario (repeatable)."),
    quick: bool = typer.Option(False, help="A quarter of the orders per scenario."),
    output: Path = typer.Option(Path("reports/chaos.json"), help="Where the results go."),
    rabbit_url: str = typer.Option(
        os.environ.get("RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/"), help="The broker."
    ),
) -> None:
    """Run the system under each fault in turn while orders are placed; count what was lost
    and what happened twice. Exits 1 if any scenario lost or doubled anything."""
    chosen = [s for s in SCENARIOS if not only or s.name in only]
    unknown = set(only or []) - {s.name for s in SCENARIOS}
    if unknown:
        raise typer.BadParameter(
            f"unknown scenario(s) {sorted(unknown)}; known: {[s.name for s in SCENARIOS]}"
        )
    run_dir = Path(".run/chaos") / time.strftime("%Y%m%d-%H%M%S")
    results: list[Result] = []
    for n, scenario in enumerate(chosen, start=1):
        console.rule(f"[{n}/{len(chosen)}] {scenario.name}: {scenario.fault}")
        if scenario.needs_root_broker and not _local_broker(rabbit_url):
            console.print("  skipped: needs the local RabbitMQ and rabbitmqctl as root")
            continue
        if scenario.cluster and (os.geteuid() != 0 or not shutil.which("haproxy")):
            console.print(
                "  skipped: the local cluster needs root and HAProxy (apt-get install haproxy)"
            )
            continue
        ctl = os.environ.get("WARREN_RABBITMQCTL")  # a cluster scenario points it at the cluster
        try:
            results.append(asyncio.run(run_scenario(scenario, rabbit_url, run_dir, quick)))
        finally:
            os.environ.pop("WARREN_RABBITMQCTL", None)
            if ctl is not None:
                os.environ["WARREN_RABBITMQCTL"] = ctl
    markdown = render(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps([{**asdict(r), "passed": r.passed} for r in results], indent=2) + "\n"
    )
    output.with_suffix(".md").write_text(markdown)
    console.print(f"results: {output}, {output.with_suffix('.md')}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
