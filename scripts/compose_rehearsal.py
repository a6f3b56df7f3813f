"""A compose rehearsal: run what docker-compose.yml runs, on a machine without Docker.

No Docker engine runs where Warren is developed, so the compose file could only be checked
against its schema. This script executes it instead, as far as a single machine can:

* every app container's ``command``, ``env_file`` and ``environment`` exactly as the compose
  file gives them (``${VAR}`` filled in from .env, as compose does), each process started with
  that environment alone, in an empty folder (a container has no .env file);
* the app processes run in a network namespace of their own, as containers do: 127.0.0.1 there
  is not this machine's (a service that falls back to a default like 127.0.0.1:5672 finds
  nothing), and the compose service names resolve (through the namespace's own /etc/hosts) to
  the stand-ins on the host side of a virtual link: ``rabbitmq`` to a RabbitMQ loaded with the
  definitions the ``broker-definitions`` job writes (the broker user from .env included),
  ``mongo`` to the MongoDB stand-in, ``jaeger`` to an OTLP receiver, ``mailpit`` to the SMTP
  sink and its Mailpit-like API, each on the port compose's own service uses;
* the published API port is forwarded from this machine's 127.0.0.1 into the namespace;
* each app's ``healthcheck`` command is run as written, within compose's own time budget;
* then an order is placed through the published API port and must reach CONFIRMED, with its
  trace at the OTLP receiver and its email at the sink.

It fails, naming the service, when compose and the code disagree: a variable missing or
misspelled, a wrong port, a command that does not exist. What it cannot rehearse: the images
themselves (the Dockerfile's build, Python 3.12 instead of this machine's), the infrastructure
containers' own commands and healthchecks, one namespace per container (the app processes
share one), and replicas (one payment process, not two: both would listen on the same port).
It needs root (to make the namespace) and iproute2.

    python scripts/compose_rehearsal.py                # make compose-rehearsal
    python scripts/compose_rehearsal.py --help
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import typer
import yaml
from dotenv import dotenv_values

from shared.topology import queues_in_use

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# In the order compose starts them (depends_on); payment runs once, not as two replicas.
APP_ORDER = [
    "broker-definitions",
    "seed",
    "order",
    "inventory",
    "payment",
    "notification",
    "celery-worker",
]
# What the Dockerfile's ENV lines give every container.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def log(message: str) -> None:
    print(f"[rehearsal] {message}", flush=True)


class RehearsalError(Exception):
    """Compose and the code disagree (or a stand-in could not start)."""


# --- reading the compose file as compose does -----------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?\-+])([^}]*))?\})")


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?message}``, ``${VAR:-default}``, ``$$`` escapes."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = values.get(name)
        if operator in (":?", "?") and (value is None or (operator == ":?" and value == "")):
            raise RehearsalError(f"${{{name}}} is not set: {argument}")
        if operator in (":-", "-") and (value is None or (operator == ":-" and value == "")):
            return argument
        return value or ""

    return _VARIABLE.sub(substitute, text)


def load_compose(path: Path, values: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(interpolate(path.read_text(encoding="utf-8"), values))


def env_file_values(service: dict[str, Any], project: Path) -> dict[str, str]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str) else files
    values: dict[str, str] = {}
    for name in files:
        values.update({k: v or "" for k, v in dotenv_values(project / name).items()})
    return values


def container_env(service: dict[str, Any], project: Path) -> dict[str, str]:
    """env_file first, then ``environment:`` on top (compose's precedence)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {
        **IMAGE_ENV,
        **env_file_values(service, project),
        **{k: str(v) for k, v in environment.items()},
    }


# --- the network namespace: a container's view of the network -----------------------------------

HOST_SIDE, APP_SIDE = "10.231.0.1", "10.231.0.2"  # the two ends of the virtual link


class Namespace:
    """A network namespace joined to this machine by a veth pair, with its own /etc/hosts
    (``ip netns exec`` mounts /etc/netns/NAME/hosts over /etc/hosts for what it runs)."""

    def __init__(self, hosts: list[str]) -> None:
        self.name = f"warren-rehearsal-{os.getpid()}"
        self.veth = f"wr{os.getpid() % 100000}"
        self.hosts = hosts

    def __enter__(self) -> Namespace:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise RehearsalError("the rehearsal needs root and iproute2 (ip netns)")
        self.remove_leftovers()
        for argv in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", f"{self.veth}c"],
            ["ip", "link", "set", f"{self.veth}c", "netns", self.name],
            ["ip", "addr", "add", f"{HOST_SIDE}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            [*self.run_in, "ip", "addr", "add", f"{APP_SIDE}/30", "dev", f"{self.veth}c"],
            [*self.run_in, "ip", "link", "set", f"{self.veth}c", "up"],
            [*self.run_in, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        etc = Path("/etc/netns") / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{HOST_SIDE} {host}\n" for host in self.hosts)
        )
        return self

    @staticmethod
    def remove_leftovers() -> None:
        """Namespaces of rehearsals that were killed before they could clean up (same address)."""
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for name in re.findall(r"^warren-rehearsal-(\d+)", listing, re.MULTILINE):
            if not psutil.pid_exists(int(name)):
                subprocess.run(["ip", "netns", "delete", f"warren-rehearsal-{name}"], check=False)
                shutil.rmtree(Path("/etc/netns") / f"warren-rehearsal-{name}", ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)  # and the veth
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)

    @property
    def run_in(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


class Forwarder:
    """TCP forwarding in a background thread: (listen host, port) -> (target host, port)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def add(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        asyncio.run_coroutine_threadsafe(asyncio.start_server(serve, *listen), self.loop).result(
            timeout=10
        )

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for_port(port: int, what: str, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not answers(port, host):
        if time.monotonic() > deadline:
            raise RehearsalError(f"{what} did not listen on {host}:{port} within {timeout:g} s")
        time.sleep(0.2)


@dataclass
class Rehearsal:
    project: Path
    broker_port: int
    rabbitmqctl: list[str]
    workdir: Path
    namespace: Namespace
    forwarder: Forwarder
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # --- processes ---

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, inside: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start a process, in the namespace (an app container) or beside it (a stand-in)."""
        log_file = (self.workdir / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [*self.namespace.run_in, *argv] if inside else argv,
            env=env,
            cwd=self.workdir / "container",  # an empty folder: no .env, as in the image
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def process_env(self, env: dict[str, str]) -> dict[str, str]:
        """The container's environment, plus the image's commands (`python`, `warren`): here,
        the virtualenv's."""
        return {**env, "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(self.workdir)}

    # --- stand-ins, on the host side of the link, on the ports compose's services use ---

    def start_stand_ins(self) -> None:
        host = HOST_SIDE
        stand_ins = {
            "mongo (nx-27017)": (
                [
                    str(BIN / "nx-27017"),
                    "--data-dir",
                    str(self.workdir / "mongo"),
                    "--host",
                    host,
                    "--port",
                    "27017",
                ],
                [27017],
            ),
            "jaeger (OTLP receiver)": (
                [
                    str(BIN / "warren"),
                    "traces",
                    "collect",
                    "--output",
                    str(self.spans),
                    "--host",
                    host,
                    "--port",
                    "4318",
                ],
                [4318],
            ),
            "mailpit (SMTP sink)": (
                [
                    str(BIN / "warren"),
                    "mail-sink",
                    "--maildir",
                    str(self.maildir),
                    "--host",
                    host,
                    "--port",
                    "1025",
                    "--api-port",
                    "8025",
                ],
                [1025, 8025],
            ),
        }
        for name, (argv, _) in stand_ins.items():
            self.start(name, argv, dict(os.environ), inside=False)
        self.forwarder.add((host, 5672), ("127.0.0.1", self.broker_port))
        for name, (_, ports) in stand_ins.items():
            for port in ports:
                wait_for_port(port, name, host)
        log(
            f"stand-ins on {host}: rabbitmq:5672 -> 127.0.0.1:{self.broker_port}, "
            "mongo:27017, jaeger:4318, mailpit:1025 and :8025"
        )

    @property
    def spans(self) -> Path:
        return self.workdir / "spans.jsonl"

    @property
    def maildir(self) -> Path:
        return self.workdir / "mail"

    # --- the compose services ---

    def volume_paths(self, service: dict[str, Any]) -> dict[str, Path]:
        """Named volumes become folders here: container path -> local folder."""
        paths = {}
        for spec in service.get("volumes", []):
            source, target = str(spec).split(":")[:2]
            if not source.startswith((".", "/")):
                paths[target] = self.workdir / "volumes" / source
                paths[target].mkdir(parents=True, exist_ok=True)
        return paths

    def argv(self, service: dict[str, Any]) -> list[str]:
        argv = list(service.get("command") or [])
        if not argv:
            raise RehearsalError("no command")
        for target, local in self.volume_paths(service).items():
            argv = [
                str(local) + a[len(target) :] if a.startswith(target + "/") else a for a in argv
            ]
        return argv

    def run_one_shot(self, name: str, service: dict[str, Any]) -> None:
        env = self.process_env(container_env(service, self.project))
        process = self.start(name, self.argv(service), env)
        if process.wait(timeout=120) != 0:
            raise RehearsalError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
        log(f"{name}: completed")

    def load_definitions(self, compose: dict[str, Any]) -> list[str]:
        """What the broker does at boot: import the definitions the job wrote."""
        job = compose["services"]["broker-definitions"]
        written = Path(self.argv(job)[self.argv(job).index("--output") + 1])
        definitions = json.loads(written.read_text())
        # rabbitmqctl may run as the rabbitmq user, and 3.10's cannot read standard input:
        # hand it a readable copy.
        with tempfile.NamedTemporaryFile("w", suffix=".json") as copy:
            copy.write(written.read_text())
            copy.flush()
            os.chmod(copy.name, 0o644)
            result = subprocess.run(
                [*self.rabbitmqctl, "import_definitions", copy.name],
                capture_output=True,
                text=True,
                timeout=60,
            )
        if result.returncode != 0:
            raise RehearsalError(f"rabbitmqctl import_definitions failed: {result.stderr}")
        users = [user["name"] for user in definitions["users"]]
        log(f"broker: imported {len(definitions['queues'])} queues and users {', '.join(users)}")
        return users

    def start_service(self, name: str, service: dict[str, Any]) -> None:
        self.start(name, self.argv(service), self.process_env(container_env(service, self.project)))

    def publish(self, service: dict[str, Any]) -> None:
        """``ports: 127.0.0.1:HOST:CONTAINER`` -> forward this machine's port into the namespace."""
        for spec in service.get("ports", []):
            parts = str(spec).split(":")
            host_port, container_port = int(parts[-2]), int(parts[-1])
            if answers(host_port):
                raise RehearsalError(f"host port {host_port} is taken (is `make run` running?)")
            self.forwarder.add(("127.0.0.1", host_port), (APP_SIDE, container_port))

    def healthy(self, name: str, service: dict[str, Any]) -> None:
        """Run the healthcheck as written, in the namespace, until it passes, within compose's
        own budget (start period + interval x retries)."""
        check = service.get("healthcheck")
        if not check:
            return
        test = list(check["test"])
        if test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", test[1]]
        elif test[0] == "CMD":
            argv = test[1:]
        else:
            raise RehearsalError(f"{name}: healthcheck test {test[0]!r} is not CMD or CMD-SHELL")
        budget = _seconds(check.get("start_period", "0s")) + _seconds(
            check.get("interval", "30s")
        ) * int(check.get("retries", 3))
        env = self.process_env(container_env(service, self.project))
        deadline = time.monotonic() + budget
        last = ""
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RehearsalError(
                    f"{name} exited with {process.returncode} before it was healthy:\n"
                    f"{self.tail(name)}"
                )
            result = subprocess.run(
                [*self.namespace.run_in, *argv],
                env=env,
                cwd=self.workdir / "container",
                capture_output=True,
                text=True,
                timeout=_seconds(check.get("timeout", "30s")) + 5,
            )
            if result.returncode == 0:
                log(f"{name}: healthy")
                return
            last = (result.stdout + result.stderr).strip()[-400:]
            time.sleep(1.0)
        raise RehearsalError(
            f"{name}: healthcheck still failing after {budget:g} s: {last}\n{self.tail(name)}"
        )


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- the order, end to end ---------------------------------------------------------------------


def place_an_order(api: str, rehearsal: Rehearsal, timeout: float = 90.0) -> dict[str, Any]:
    with httpx.Client(base_url=api, timeout=10.0) as client:
        response = client.post(
            "/orders",
            json={
                "customer_id": "rehearsal",
                "lines": [{"sku": "RABBIT-PLUSH", "quantity": 1}],
                "payment_token": "tok_visa",
            },
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        if response.status_code != 202:
            raise RehearsalError(f"POST /orders answered {response.status_code}: {response.text}")
        order_id = response.json()["order_id"]
        log(f"order {order_id} accepted through {api}")
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            view = client.get(f"/orders/{order_id}")
            status = view.json().get("status") if view.status_code == 200 else None
            if status in ("CONFIRMED", "CANCELLED"):
                break
            time.sleep(0.3)
        if status != "CONFIRMED":
            raise RehearsalError(f"order {order_id} is {status} after {timeout:g} s, not CONFIRMED")
    services: set[str] = set()
    emails: list[Path] = []
    while time.monotonic() < deadline:
        services = (
            {
                span["service"]
                for line in rehearsal.spans.read_text().splitlines()
                if (span := json.loads(line))["attributes"].get("order.id") == order_id
            }
            if rehearsal.spans.exists()
            else set()
        )
        emails = (
            [
                p
                for p in (rehearsal.maildir / "new").glob("*")
                if order_id in p.read_text(errors="replace")
            ]
            if (rehearsal.maildir / "new").is_dir()
            else []
        )
        if {"order", "inventory", "payment", "notification"} <= services and emails:
            break
        time.sleep(0.5)
    else:
        raise RehearsalError(
            f"order {order_id}: spans from {sorted(services)}, {len(emails)} email(s) at the sink"
        )
    return {
        "order_id": order_id,
        "status": status,
        "services": sorted(services),
        "emails": len(emails),
    }


# --- the command -----------------------------------------------------------------------------------


def default_broker() -> tuple[int, str]:
    """The RabbitMQ 4.x node of `make test-rabbitmq4` when it runs (compose runs 4.x), else
    the machine's."""
    if answers(5673):
        return 5673, f"{REPO / 'scripts' / 'rabbitmq4.sh'} ctl"
    return 5672, os.environ.get("WARREN_RABBITMQCTL", "rabbitmqctl")


def main(
    compose_file: Path = typer.Option(REPO / "docker-compose.yml", help="The compose file."),
    broker_port: int = typer.Option(
        0, help="AMQP port of the RabbitMQ to stand in for `rabbitmq` (0: 5673 if up, else 5672)."
    ),
    rabbitmqctl: str = typer.Option(
        "", help="rabbitmqctl for that broker (default: the one that matches the port)."
    ),
    keep: bool = typer.Option(False, help="Keep the work folder (logs, spans, mail)."),
) -> None:
    """Run docker-compose.yml's app containers as local processes against stand-ins, check their
    healthchecks, and place an order through the published API port. Exit 0 prints the order."""
    values = compose_values(compose_file.parent)
    port, ctl = default_broker()
    broker_port = broker_port or port
    rabbitmqctl = rabbitmqctl or ctl
    check_broker(broker_port)
    workdir = make_workdir()
    imported_users: list[str] = []  # filled as the rehearsal goes: it may fail after the import
    started = time.monotonic()
    forwarder = Forwarder()
    try:
        result = rehearse(
            compose_file,
            values,
            broker_port,
            shlex.split(rabbitmqctl),
            workdir,
            forwarder,
            imported_users,
        )
    except (RehearsalError, subprocess.CalledProcessError) as error:
        log(f"FAILED: {error}")
        log(f"logs: {workdir / 'logs'}")
        keep = True
        raise typer.Exit(1) from None
    finally:
        forwarder.close()
        delete_imported_users(rabbitmqctl, imported_users)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    log(
        f"passed in {time.monotonic() - started:.0f} s: order {result['order_id']} "
        f"{result['status']}, traced by {', '.join(result['services'])}, "
        f"{result['emails']} email(s) at the sink"
    )


def compose_values(project: Path) -> dict[str, str]:
    """What compose fills ``${VAR}`` in with: .env, and the shell's variables over it."""
    values = {k: v or "" for k, v in dotenv_values(project / ".env").items()}
    values.update(os.environ)  # the shell wins over .env, as in compose
    return values


def check_broker(broker_port: int) -> None:
    """Stop unless a RabbitMQ answers on the port (a usage error) with nothing consuming from
    Warren's queues on it (exit 1)."""
    if not answers(broker_port):
        raise typer.BadParameter(f"no RabbitMQ on 127.0.0.1:{broker_port}")
    # Compose's services use the vhost "/": another Warren consuming there would take the
    # rehearsal's messages (and the rehearsal its).
    in_use = asyncio.run(queues_in_use(f"amqp://guest:guest@127.0.0.1:{broker_port}/"))
    if in_use:
        log(
            f"FAILED: Warren's queues on 127.0.0.1:{broker_port} have consumers ({min(in_use)}, ...)"
        )
        log("a live Warren uses this broker: stop it (make run: Ctrl-C) and rehearse again")
        raise typer.Exit(1)


def make_workdir() -> Path:
    """A fresh work folder: the processes' logs, the containers' empty folder, MongoDB's data."""
    workdir = Path(tempfile.mkdtemp(prefix="warren-rehearsal-"))
    for folder in ("logs", "container", "mongo"):
        (workdir / folder).mkdir()
    return workdir


def rehearse(
    compose_file: Path,
    values: dict[str, str],
    broker_port: int,
    rabbitmqctl: list[str],
    workdir: Path,
    forwarder: Forwarder,
    imported_users: list[str],
) -> dict[str, Any]:
    """Read the compose file and run its app services in a network namespace of their own, up to
    an order placed through the published API port; every process is stopped at the end."""
    compose = load_compose(compose_file, values)
    services = compose["services"]
    log(f"{compose_file.name}: {len(services)} services; rehearsing {', '.join(APP_ORDER)}")
    hosts = sorted(set(services) - set(APP_ORDER))  # rabbitmq, mongo, jaeger, mailpit, ...
    with Namespace(hosts) as namespace:
        rehearsal = Rehearsal(
            compose_file.parent, broker_port, rabbitmqctl, workdir, namespace, forwarder
        )
        try:
            return run_in_compose_order(rehearsal, compose, imported_users)
        finally:
            rehearsal.stop_all()


def run_in_compose_order(
    rehearsal: Rehearsal, compose: dict[str, Any], imported_users: list[str]
) -> dict[str, Any]:
    """What `docker compose up` does, in its order: the stand-ins, the one-shot jobs (the broker
    imports the definitions between the two), the services, their healthchecks; then the order.
    The broker users the definitions bring are added to ``imported_users``."""
    services = compose["services"]
    rehearsal.start_stand_ins()
    rehearsal.run_one_shot("broker-definitions", services["broker-definitions"])
    imported_users.extend(rehearsal.load_definitions(compose))
    rehearsal.run_one_shot("seed", services["seed"])
    for name in APP_ORDER[2:]:
        rehearsal.start_service(name, services[name])
        rehearsal.publish(services[name])
    for name in APP_ORDER[2:]:
        rehearsal.healthy(name, services[name])
    api_port = int(str(services["order"]["ports"][0]).split(":")[-2])
    return place_an_order(f"http://127.0.0.1:{api_port}", rehearsal)


def delete_imported_users(rabbitmqctl: str, users: list[str]) -> None:
    """Leave the broker's users as they were: delete those the definitions brought (the
    operator's and one per service), except guest (which the broker had before)."""
    for user in users:
        if user and user != "guest":
            subprocess.run([*shlex.split(rabbitmqctl), "delete_user", user], capture_output=True)


if __name__ == "__main__":
    typer.run(main)
