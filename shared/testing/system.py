"""Run the whole Warren system as processes (the same commands as `make run`): for end-to-end
tests, the chaos suite and the benchmark.

Everything talks to the real RabbitMQ and to the MongoDB given by the test session. Each
session uses its own database prefix, and the Warren queues are deleted first so that no
message from an earlier run leaks in. Process output goes to files; :meth:`System.logs`
returns a tail for failure messages.
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aio_pika
import httpx
from mirakuru import HTTPExecutor, SimpleExecutor, TCPExecutor
from mirakuru.base import Executor
from pymongo import AsyncMongoClient

from shared import auth, topology
from shared.messaging import H_PUBLISHER
from shared.settings import BrokerPasswords

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rabbitmqctl_command() -> list[str] | None:
    """The command that runs rabbitmqctl against the broker under test, or None where the tests
    may not run it (not root, or no rabbitmqctl). ``WARREN_RABBITMQCTL`` names another node's:
    `make test-rabbitmq4` sets it to ``scripts/rabbitmq4.sh ctl``."""
    command = shlex.split(os.environ.get("WARREN_RABBITMQCTL", "rabbitmqctl"))
    if os.geteuid() != 0 or shutil.which(command[0]) is None:
        return None
    return command


class BrokerInUseError(RuntimeError):
    """Warren's queues on this broker have consumers: a live system would be wiped."""


async def refuse_a_broker_in_use(
    rabbit_url: str, retry_delays: tuple[int, ...] = (), patience: float = 10.0
) -> None:
    """Stop before deleting the queues of a live system (`make run`, compose) on this broker.

    A system the tests themselves stopped a moment ago may still be closing its connections,
    so consumers get a few seconds to go before this refuses."""
    deadline = time.monotonic() + patience
    while in_use := await topology.queues_in_use(rabbit_url, retry_delays):
        if time.monotonic() > deadline:
            url = urlsplit(rabbit_url)
            raise BrokerInUseError(
                f"Warren's queues on {url.hostname}:{url.port or 5672}{url.path or '/'} "
                f"have consumers ({', '.join(sorted(in_use)[:3])}, ...): a live Warren uses "
                "this broker, and the tests would delete its queues and messages. Stop it "
                "(`make run`: Ctrl-C), or give the tests a vhost of their own: "
                "RABBIT_URL=amqp://guest:guest@127.0.0.1:5672/tests"
            )
        await asyncio.sleep(0.5)


async def reset_broker(rabbit_url: str, retry_delays: tuple[int, ...] = ()) -> None:
    """Delete Warren's queues (services re-declare them), dropping leftovers of earlier runs --
    the delay queues too, or a retry of an earlier run would come back into this one. Refuses
    while a live system consumes from them."""
    delays = (1, 2, 4, 8, 16, *retry_delays)
    await refuse_a_broker_in_use(rabbit_url, delays)
    await topology.delete_queues(rabbit_url, retry_delays=delays)


@dataclass
class System:
    api: str
    env: dict[str, str]
    maildir: Path
    log_dir: Path
    processes: dict[str, Executor] = field(default_factory=dict)
    # Each process's HTTP port (health checks and /metrics; the order API's is `api`'s).
    ports: dict[str, int] = field(default_factory=dict)
    _log_files: list[IO[Any]] = field(default_factory=list)

    def database(self, service: str) -> str:
        return f"{self.env['MONGO_DB_PREFIX']}_{service}"

    @property
    def spans_file(self) -> Path:
        return self.log_dir.parent / "spans.jsonl"

    def spans(self) -> list[dict[str, Any]]:
        from cli.traces import load_spans

        return load_spans(self.spans_file)

    def warren(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``warren`` command against this system (its environment), output captured."""
        return subprocess.run(
            [str(BIN / "warren"), *args],
            env={**os.environ, **self.env},
            cwd=REPO,
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def emails(self) -> list[Message]:
        return list(mailbox.Maildir(self.maildir, create=False))

    def emails_for(self, order_id: str) -> list[Message]:
        return [m for m in self.emails() if m["X-Warren-Order-Id"] == order_id]

    def logs(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def _executor(
        self,
        name: str,
        command: list[str],
        *,
        health_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Executor:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(log)
        options: dict[str, Any] = {
            "envvars": {**self.env, **(env or {})},
            "cwd": str(REPO),
            "timeout": 60,
            "stdout": log,
            "stderr": subprocess.STDOUT,
        }
        if health_port is None:
            return SimpleExecutor(command, **options)
        return HTTPExecutor(
            command,
            url=f"http://127.0.0.1:{health_port}/readyz",
            method="GET",
            status=200,
            **options,
        )

    def start(self, name: str) -> None:
        self.processes[name].start()

    def stop(self, name: str) -> None:
        self.processes[name].stop()

    def restart(self, name: str, **env: str) -> None:
        """Stop ``name`` and start it again with ``env`` added to (or replacing) its environment."""
        executor = self.processes[name]
        if executor.running():
            executor.stop()
        executor._envvars = {**executor._envvars, **env}
        executor.start()

    def restart_after_crash(self, name: str) -> None:
        """Start ``name`` again after it died (e.g. killed itself at a crash point)."""
        executor = self.processes[name]
        if executor.process is not None:
            executor.process.wait(timeout=30)
            executor.process = None
        executor.start()

    def stop_all(self) -> None:
        for executor in reversed(list(self.processes.values())):
            if executor.running():
                executor.stop()
        for log in self._log_files:
            log.close()


def mongo_standin(data_dir: Path) -> TCPExecutor:
    """The MongoDB stand-in (nx-27017) on a free port, keeping its data in ``data_dir``."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    return TCPExecutor(
        [
            str(BIN / "nx-27017"),
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--log-file",
            str(data_dir / "server.log"),
            "--pid-file",
            str(data_dir / "server.pid"),
        ],
        host="127.0.0.1",
        port=port,
        timeout=30,
        # It writes its own log file; keep its console chatter out of the test output.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def mongo_url_of(server: TCPExecutor) -> str:
    return f"mongodb://{server.host}:{server.port}"


PROCESSES_WITH_PORTS = (
    "order",
    "inventory",
    "payment_1",
    "payment_2",
    "notification",
    "audit",
    "smtp",
    "mail_api",
    "otlp",
)


def payment_replicas(count: int) -> tuple[str, ...]:
    """The names of ``count`` payment replicas: ``payment_1`` ... (two, as `make run`)."""
    return tuple(f"payment_{i}" for i in range(1, count + 1))


def broker_users() -> dict[str, str]:
    """One broker user per service (``BROKER_PASSWORD_<SERVICE>``, from .env), when this machine
    can provision them (rabbitmqctl, as root); else none, and every process connects as the
    operator. The passwords are `make run`'s: users are broker-wide, so a test run in another
    vhost must not change the password a running `make run` connects with."""
    if rabbitmqctl_command() is None or os.environ.get("WARREN_BROKER_USERS") == "0":
        return {}
    return {
        f"BROKER_PASSWORD_{user.upper()}": password
        for user, password in BrokerPasswords().configured().items()
    }


def service_url(system: System, user: str) -> dict[str, str]:
    """The RABBIT_URL of a process that connects as ``user`` (when users are provisioned)."""
    password = system.env.get(f"BROKER_PASSWORD_{user.upper()}")
    if password is None:
        return {}
    url = urlsplit(system.env["RABBIT_URL"])
    netloc = f"{user}:{password}@{url.hostname}:{url.port or 5672}"
    return {"RABBIT_URL": url._replace(netloc=netloc).geturl()}


def system_env(
    rabbit_url: str,
    mongo_url: str,
    prefix: str,
    ports: dict[str, int],
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every process's environment: this run's broker, database prefix and ports."""
    return {
        "RABBIT_URL": rabbit_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB_PREFIX": prefix,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(ports["smtp"]),
        "MAIL_API_URL": f"http://127.0.0.1:{ports['mail_api']}",
        "QUOTE_TIMEOUT_SECONDS": "2",  # the shipped default
        # The order API's rate limits, loose: the tests, the benchmark and the chaos runs
        # send everything from one address, many orders for one customer (bugs-bunny).
        "REQUESTS_PER_SECOND_PER_ADDRESS": "1000",
        "REQUEST_BURST_PER_ADDRESS": "2000",
        "ORDERS_PER_MINUTE_PER_CUSTOMER": "6000",
        "ORDER_BURST_PER_CUSTOMER": "1000",
        "PAYMENT_DECLINE_RATE": "0",
        "PAYMENT_LATENCY_MS": "0",
        "PAYMENT_ERROR_RATE": "0",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # Every span goes to this run's own OTLP receiver (warren traces collect), quickly.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['otlp']}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Every trace, load-test traffic's too: the tests read the traces of orders they tag
        # as synthetic (the shipped default keeps 1 in 100 of those: .env).
        "SYNTHETIC_TRACE_RATIO": "1",
        **broker_users(),
        **(extra_env or {}),
    }


def _plumbing(system: System, ports: dict[str, int]) -> None:
    """The SMTP sink (with its API) and the OTLP receiver, as `make run` starts them."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    smtp = ["mail-sink", "--maildir", str(system.maildir), "--api-port", str(ports["mail_api"])]
    system.processes["smtp"] = _warren_listener(system, smtp, ports["smtp"], **quiet)
    traces = ["traces", "collect", "--output", str(system.spans_file)]
    system.processes["traces"] = _warren_listener(system, traces, ports["otlp"])


def _warren_listener(system: System, args: list[str], port: int, **options: Any) -> TCPExecutor:
    """``warren <args> --port <port>``, ready when the port accepts connections."""
    return TCPExecutor(
        [str(BIN / "warren"), *args, "--port", str(port)],
        host="127.0.0.1",
        port=port,
        envvars=system.env,
        timeout=30,
        **options,
    )


def build_system(
    rabbit_url: str,
    mongo_url: str,
    run_dir: Path,
    prefix: str,
    extra_env: dict[str, str] | None = None,
    *,
    payments: int = 2,
) -> System:
    """Every process of a system, not started; ``payments`` replicas of payment (the
    drain benchmark starts them one by one)."""
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    names = dict.fromkeys([*PROCESSES_WITH_PORTS, *payment_replicas(payments)])
    ports = {name: free_port() for name in names}
    env = system_env(rabbit_url, mongo_url, prefix, ports, extra_env)
    system = System(
        api=f"http://127.0.0.1:{ports['order']}",
        env=env,
        maildir=run_dir / "mail",
        log_dir=log_dir,
        ports=ports,
    )
    _plumbing(system, ports)
    for name in ("inventory", *payment_replicas(payments), "notification", "audit", "order"):
        system.processes[name] = service_process(system, name, ports[name])
    system.processes["emails"] = service_process(system, "emails")
    return system


def service_process(system: System, name: str, port: int | None = None) -> Executor:
    """The process ``name`` -- a service or a replica of one (``payment_2``), or ``emails``
    (the Celery worker) -- on ``port`` (its health checked there), connected as its service's
    broker user. Not started."""
    process = name.split("_")[0]
    module, user = (
        ("services.notification.worker", "notification")
        if process == "emails"
        else (f"services.{process}", process)
    )
    command = [str(BIN / "python"), "-m", module]
    if port is not None:
        command += ["--port", str(port)]
        system.ports[name] = port
    return system._executor(name, command, health_port=port, env=service_url(system, user))


def provision_broker(system: System) -> None:
    """`warren topology provision` (users, permissions, topology), or -- without per-service
    users -- `warren topology declare`, as `make run` does."""
    users = any(key.startswith("BROKER_PASSWORD_") for key in system.env)
    system.warren("topology", "provision" if users else "declare", check=True, timeout=120)


def seed_catalog(system: System) -> None:
    system.warren("seed", "--reset", check=True, timeout=60)


async def _idempotency_key(request: httpx.Request) -> None:
    if request.method == "POST" and "Idempotency-Key" not in request.headers:
        request.headers["Idempotency-Key"] = str(uuid.uuid4())


@asynccontextmanager
async def api_client(
    system: System, timeout: float, *, customer: str = "bugs-bunny"
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the system's order API that behaves like a well-written client:
    signed in as ``customer`` (a bearer token, signed with the configured API_TOKEN_SECRET, as
    the order service's), and every POST carries a fresh Idempotency-Key unless the test gives
    one. A request's own ``Authorization`` header (another customer's, an operator's) wins."""
    async with httpx.AsyncClient(
        base_url=system.api,
        timeout=timeout,
        headers=auth.bearer(customer),
        event_hooks={"request": [_idempotency_key]},
    ) as client:
        yield client


@asynccontextmanager
async def open_mongo(url: str, **options: Any) -> AsyncIterator[AsyncMongoClient]:
    """An async MongoDB client (timezone-aware datetimes), closed on exit."""
    client: AsyncMongoClient = AsyncMongoClient(url, tz_aware=True, **options)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def running_system(
    rabbit_url: str,
    mongo_url: str,
    run_dir: Path,
    prefix: str,
    *,
    extra_env: dict[str, str] | None = None,
    database: TCPExecutor | None = None,
) -> AsyncIterator[System]:
    """A whole system on a clean broker, stopped (and its ``database``, if given) on exit."""
    delays = json.loads((extra_env or {}).get("RETRY_DELAYS_SECONDS", "[]"))
    await reset_broker(rabbit_url, tuple(delays))
    system = build_system(rabbit_url, mongo_url, run_dir, prefix, extra_env)
    if database is not None:
        # First in, last out: stop_all stops the services before their database.
        system.processes = {"mongo": database, **system.processes}
    try:
        start_everything(system)
        yield system
    finally:
        system.stop_all()


SERVICES = ("inventory", "payment_1", "payment_2", "notification", "emails", "audit", "order")


def start_everything(system: System) -> None:
    """The SMTP sink and the OTLP receiver, the broker's users and topology, the seeded
    catalog, then every service (every payment replica the system was built with)."""
    system.start("smtp")
    system.start("traces")
    provision_broker(system)
    seed_catalog(system)
    payments = [name for name in system.processes if name.startswith("payment_")]
    for name in SERVICES:
        if name == "payment_1":
            for replica in payments:
                system.start(replica)
        elif not name.startswith("payment_"):
            system.start(name)


async def publish_raw(
    rabbit_url: str,
    exchange_name: str,
    routing_key: str,
    body: bytes,
    *,
    publisher: str | None = None,
    **properties: Any,
) -> None:
    """Publish bytes as they are (no envelope checks): duplicates, poison, dead letters.

    ``rabbit_url`` is the operator's. A copy of a service's event says which service
    published the original (``publisher``), as the operator's DLQ replay does; without it, a
    service with a broker user of its own takes the copy for a forgery."""
    if publisher is not None:
        properties["headers"] = {**properties.get("headers", {}), H_PUBLISHER: publisher}
        # The operator's copy: RabbitMQ checks the user_id, the consumer trusts the header.
        properties.setdefault("user_id", urlsplit(rabbit_url).username or "guest")
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = (
            await channel.get_exchange(exchange_name)
            if exchange_name
            else channel.default_exchange  # "" cannot be looked up, only used
        )
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
            routing_key=routing_key,
        )
