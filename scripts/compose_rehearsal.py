"""A compose rehearsal: run what docker-compose.yml runs, on a machine without Docker.

No Docker engine runs where Warren is developed, so the compose file could only be checked
against its schema. This script executes it instead, as far as a single machine can:

* every app container's ``command``, ``env_file`` and ``environment`` exactly as the compose
  file gives them (``${VAR}`` filled in from .env, as compose does), each process started with
  that environment alone, in an empty folder of its own (a container has no .env file);
* its ``secrets:``: the files compose would mount in /run/secrets, copied into a folder of the
  container's own, which its ``WARREN_SECRETS_DIR`` names instead; and no secret in its
  environment (env_file hands every container all of .env: a secret not blanked fails here);
* its MongoDB login, checked, then dropped: a container whose MONGO_URL names a user must get
  its secret ``mongo_password``; the MongoDB stand-in has no authentication (it cannot take a
  login at all), so the process connects without user and password, and says so;
* what ``cap_drop: [ALL]`` and ``no-new-privileges`` take away, taken away (``setpriv``: the
  processes run with no capability and cannot gain one); ``read_only``, checked after the run:
  a container that wrote into its working folder or HOME (the image's read-only /app and
  /home/warren) fails; ``network_mode: none``, a network namespace with nothing in it;
* the app processes run in a network namespace of their own, as containers do: 127.0.0.1 there
  is not this machine's (a service that falls back to a default like 127.0.0.1:5672 finds
  nothing), and the compose service names resolve (through the namespace's own /etc/hosts) to
  the stand-ins on the host side of a virtual link: ``rabbitmq`` to a RabbitMQ loaded with the
  definitions the ``broker-definitions`` job writes (the broker user from .env included),
  ``mongo`` to the MongoDB stand-in, ``jaeger`` to an OTLP receiver, ``mailpit`` to the SMTP
  sink and its Mailpit-like API, each on the port compose's own service uses;
* the published API port is forwarded from this machine's 127.0.0.1 into the namespace, unless
  the service is on internal networks only (Docker publishes no port there: it fails);
* each app's ``healthcheck`` command is run as written, within compose's own time budget;
* then an order is placed through the published API port and must reach CONFIRMED, with its
  trace at the OTLP receiver and its email at the sink;
* and the operator's tools, ``docker compose run --rm warren ledger --wait 30``: the ``warren``
  service (in a profile: ``up`` does not start it) with its entrypoint, environment and secrets,
  logged in as the operator; the ledger must hold. The broker is this machine's: a DLQ that
  already held dead letters before the rehearsal (an earlier test's) is not held against it,
  one that holds more now is. Other services in a profile (Locust) are not run.

It fails, naming the service, when compose and the code disagree: a variable missing or
misspelled, a wrong port, a command that does not exist, a secret missing or leaked. What it
cannot rehearse: the images themselves (the Dockerfile's build, Python 3.12 instead of this
machine's, its user: the processes run as root without capabilities, not as uid 10001), the
infrastructure containers' own commands, healthchecks and hardening (MongoDB's users and its
authentication among them: infra/mongo/init-users.js never runs here; and its replica set:
the stand-in is a lone server, so MONGO_URL loses replicaSet=), the profile cluster (its nodes,
members and HAProxy: tests/unit/test_compose_cluster.py), one namespace per
container and the two networks (the app processes share one namespace, which has no route out
at all), a read-only root filesystem beyond the working folder and HOME (a write to /tmp goes
to this machine's), and replicas (one payment process, not two: both would listen on the same
port). It needs root (to make the namespaces), iproute2 and util-linux (unshare, setpriv).

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
from urllib.parse import urlsplit

import httpx
import psutil
import typer
import yaml
from dotenv import dotenv_values

from shared import auth
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
    "audit",
]
# The operator's tools (profile tools), and what the rehearsal runs with them, as
# `docker compose run --rm warren ledger --wait 30` would.
TOOLS = "warren"
TOOLS_COMMAND = ["ledger", "--wait", "30"]
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
    compose: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The containers whose MongoDB login was checked, then dropped (see without_mongo_login).
    mongo_logins: dict[str, str] = field(default_factory=dict)

    # --- processes ---

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """Start a process: an app container's (``in_container``) or a stand-in's."""
        log_file = (self.workdir / "logs" / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
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

    def root(self, name: str) -> Path:
        """A container's own empty folders: ``app`` (its working directory, /app in the image:
        no .env there) and ``home``."""
        root = self.workdir / "containers" / name
        for folder in ("app", "home"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        return root

    def process_env(self, name: str, service: dict[str, Any]) -> dict[str, str]:
        """The container's environment, with the image's commands (`python`, `warren`: here the
        virtualenv's), its own HOME, and its secrets folder where /run/secrets is named."""
        env = container_env(service, self.project)
        leaks = environment_leaks(env, self.secret_values())
        if leaks:
            raise RehearsalError(
                f"{name}: its environment carries {', '.join(leaks)}; compose must give a "
                "secret as a file (`secrets:`), and blank it where env_file hands .env over"
            )
        folder = self.secrets_folder(name, service)
        env = self.without_mongo_login(name, env, folder)
        secrets = str(folder)
        env = {k: re.sub(r"^/run/secrets(?=/|$)", secrets, v) for k, v in env.items()}
        path = f"{BIN}{os.pathsep}/usr/bin:/bin"
        return {**env, "PATH": path, "HOME": str(self.root(name) / "home")}

    def without_mongo_login(self, name: str, env: dict[str, str], folder: Path) -> dict[str, str]:
        """The container's environment without its MongoDB login, which the stand-in cannot take.

        Under compose each service logs in to MongoDB as its own user: MONGO_URL names it, the
        secret file mongo_password holds its password. nx-27017 has no authentication at all:
        it answers a client's SASL login without a payload, and PyMongo gives up on every
        operation (KeyError 'payload'). So the rehearsal checks what it can -- MONGO_URL names a
        user and the container gets its mongo_password, as it would need to log in -- then
        connects without: the user leaves MONGO_URL, the file leaves the secrets folder. Which
        user may read what is MongoDB's to enforce (tests/unit/test_mongo_users.py checks the
        users against the services; no MongoDB runs here)."""
        url = env.get("MONGO_URL", "")
        parts = urlsplit(url)
        if not parts.username:
            return env  # nothing to log in with; a stray mongo_password stays and fails
        password = folder / "mongo_password"
        if name not in self.mongo_logins:
            if not password.is_file() or not password.read_text().strip():
                raise RehearsalError(
                    f"{name}: MONGO_URL names the user {parts.username} but the container gets "
                    "no secret mongo_password: it could not log in to MongoDB under compose"
                )
            password.unlink()
            self.mongo_logins[name] = parts.username
            log(
                f"{name}: logs in to MongoDB as {parts.username} (password: its secret file); "
                "the stand-in has no authentication, so it connects without, and is no replica "
                "set, so without replicaSet="
            )
        return {**env, "MONGO_URL": as_the_stand_in_takes_it(url)}

    def in_container(self, service: dict[str, Any], argv: list[str]) -> list[str]:
        """``argv`` as compose runs it in the service's container: in the namespace (with
        ``network_mode: none``, in one of its own with nothing in it), without what
        ``cap_drop`` and ``security_opt`` take away."""
        if service.get("network_mode") == "none":
            return ["unshare", "--net", *confinement(service), *argv]
        return [*self.namespace.run_in, *confinement(service), *argv]

    # --- secrets: files, as compose mounts them ---

    def secret_values(self) -> dict[str, str]:
        """Secret name -> the content of its file, for every file secret of the compose file."""
        values = {}
        for secret, definition in (self.compose.get("secrets") or {}).items():
            path = self.project / str((definition or {}).get("file", ""))
            if (definition or {}).get("file") and path.is_file():
                values[secret] = path.read_text().strip()
        return values

    def secrets_folder(self, name: str, service: dict[str, Any]) -> Path:
        """The service's ``secrets:``, each file copied under its target name into a folder of
        its own: what /run/secrets is in its container (absent when it lists none)."""
        folder = self.workdir / "secrets" / name
        declared = self.compose.get("secrets") or {}
        for entry in service.get("secrets", []) if not folder.exists() else []:
            source = entry if isinstance(entry, str) else entry["source"]
            target = source if isinstance(entry, str) else entry.get("target", source)
            target = target.removeprefix("/run/secrets/")
            file = (declared.get(source) or {}).get("file")
            if not file:
                raise RehearsalError(
                    f"{name}: secret {source} is not a file; compose copies any other kind into "
                    "the container, which a read-only root filesystem refuses"
                )
            if "/" in target or not (self.project / file).is_file():
                raise RehearsalError(f"{name}: secret {source}: no file {file}, or target {target}")
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.project / file, folder / target)
        return folder

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
            self.start(name, argv, dict(os.environ), self.workdir)
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
        argv = self.in_container(service, self.argv(service))
        process = self.start(name, argv, self.process_env(name, service), self.root(name) / "app")
        if process.wait(timeout=120) != 0:
            raise RehearsalError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
        log(f"{name}: completed")

    def run_tool(self, name: str, service: dict[str, Any], args: list[str]) -> tuple[int, str]:
        """``docker compose run --rm <name> <args>``: the service's ``entrypoint`` with ``args``
        in place of its ``command``, once, as its container; its exit status and output."""
        entrypoint = list(service.get("entrypoint") or [])
        if not entrypoint:
            raise RehearsalError(f"{name}: no entrypoint for `docker compose run {name} ...`")
        argv = self.in_container(service, [*entrypoint, *args])
        process = self.start(name, argv, self.process_env(name, service), self.root(name) / "app")
        try:
            returncode = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise RehearsalError(f"{name} {' '.join(args)} still running after 120 s") from None
        return returncode, self.tail(name, 200)

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
        argv = self.in_container(service, self.argv(service))
        self.start(name, argv, self.process_env(name, service), self.root(name) / "app")

    def publish(self, name: str, service: dict[str, Any]) -> None:
        """``ports: 127.0.0.1:HOST:CONTAINER`` -> forward this machine's port into the namespace;
        none for a service on internal networks only, as Docker publishes none there."""
        networks = service.get("networks") or ["default"]
        declared = self.compose.get("networks") or {}
        if service.get("ports") and all((declared.get(n) or {}).get("internal") for n in networks):
            raise RehearsalError(
                f"{name} publishes {service['ports']} but is on internal networks only "
                f"({', '.join(networks)}): Docker publishes no port of such a container"
            )
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
        env = self.process_env(name, service)
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
                self.in_container(service, argv),
                env=env,
                cwd=self.root(name) / "app",
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

    def nothing_written(self, names: list[str]) -> None:
        """``read_only: true``: a container writes only to its volumes and tmpfs mounts. Its
        working folder (the image's /app) and HOME are on the root filesystem: a file a process
        left in them here would have been refused there."""
        for name in names:
            if not self.compose["services"][name].get("read_only"):
                continue
            root = self.root(name)
            written = sorted({str(p.relative_to(root)) for p in root.rglob("*")} - {"app", "home"})
            if written:
                raise RehearsalError(
                    f"{name} wrote {', '.join(written[:5])}: its root filesystem is read-only "
                    "under compose (read_only: true), so that write would fail there"
                )
        log(f"read-only: {', '.join(names)} wrote nothing into their working folder or HOME")


def as_the_stand_in_takes_it(url: str) -> str:
    """``url`` without its login (the stand-in has no authentication), with its first member
    alone and without ``replicaSet=``: compose's MongoDB is the replica set rs0 (made by the job mongo-replica-set, infra/mongo/replica-set.js; its members
    mongo, mongo-2, mongo-3), the stand-in a lone server, which a client that asks for a set, or
    is given several, never selects. The write concern (w=majority, journal) stays: a lone
    server takes it. The replica set itself is checked in tests/unit/test_mongo_replica_set.py."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    query = "&".join(o for o in parts.query.split("&") if o and not o.startswith("replicaSet="))
    return parts._replace(netloc=hosts.split(",")[0], query=query).geturl()


def confinement(service: dict[str, Any]) -> list[str]:
    """The command prefix that takes away what compose takes from a container: every capability
    (``cap_drop: [ALL]``) and the right to gain privileges (``no-new-privileges:true``)."""
    options = []
    if [cap.upper() for cap in service.get("cap_drop", [])] == ["ALL"]:
        options += ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    if "no-new-privileges:true" in service.get("security_opt", []):
        options.append("--no-new-privs")
    if service.get("cap_add"):
        raise RehearsalError(f"cap_add {service['cap_add']}: not rehearsed")
    return ["setpriv", *options] if options else []


def environment_leaks(env: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """The variables of a container's environment that carry a secret: one named after a secret
    and not blank (env_file hands over all of .env), or one that contains a secret's value (a
    password in a URL; values shorter than 8 characters are too likely to match by chance)."""
    leaks = []
    for variable, value in env.items():
        for secret, secret_value in secrets.items():
            named = variable.lower() == secret and value
            if named or (len(secret_value) >= 8 and secret_value in value):
                leaks.append(f"{variable} (the secret {secret})")
    return leaks


_DEAD_LETTERS = re.compile(r"✗ (\S+\.dlq) holds (\d+) message")


def ledger_failures(output: str, dead_letters_before: dict[str, int]) -> list[str]:
    """The ledger's failure lines (``✗ ...``) that are the rehearsal's: all but a DLQ that held
    at least as many dead letters before the rehearsal began (the broker is this machine's)."""
    failures = []
    for line in output.splitlines():
        if "✗" not in line:
            continue
        dead = _DEAD_LETTERS.search(line)
        if dead and int(dead.group(2)) <= dead_letters_before.get(dead.group(1), 0):
            continue
        failures.append(line.strip())
    return failures


def _seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- the order, end to end ---------------------------------------------------------------------


def place_an_order(api: str, rehearsal: Rehearsal, timeout: float = 90.0) -> dict[str, Any]:
    # Signed in as the customer "rehearsal", with the key compose gives the order container.
    secret = compose_values(rehearsal.project).get("API_TOKEN_SECRET") or ""
    signed_in = auth.bearer("rehearsal", secret=secret)
    with httpx.Client(base_url=api, timeout=10.0, headers=signed_in) as client:
        response = client.post(
            "/orders",
            json={"lines": [{"sku": "RABBIT-PLUSH", "quantity": 1}], "payment_token": "tok_visa"},
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


def default_broker(port: int) -> tuple[int, str]:
    """The broker on ``port`` and its rabbitmqctl; for port 0 the RabbitMQ 4.x node of `make
    test-rabbitmq4` when it runs (compose runs 4.x), else the machine's."""
    if port == 5673 or (port == 0 and answers(5673)):
        return 5673, f"{REPO / 'scripts' / 'rabbitmq4.sh'} ctl"
    return port or 5672, os.environ.get("WARREN_RABBITMQCTL", "rabbitmqctl")


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
    broker_port, ctl = default_broker(broker_port)  # a given port gets its own rabbitmqctl
    rabbitmqctl = rabbitmqctl or ctl
    check_broker(broker_port)
    dead_letters_before = dead_letters_on(broker_port)
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
            dead_letters_before,
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


def dead_letters_on(broker_port: int) -> dict[str, int]:
    """DLQ -> its dead letters on the broker now, before the rehearsal (none where Warren's
    queues do not exist yet)."""
    from cli.ledger import dead_letter_counts

    try:
        return asyncio.run(dead_letter_counts(f"amqp://guest:guest@127.0.0.1:{broker_port}/"))
    except Exception:  # a queue missing: nothing was dead-lettered into it
        return {}


def make_workdir() -> Path:
    """A fresh work folder: the processes' logs, MongoDB's data (and, as they start, each
    container's own folders and secrets)."""
    workdir = Path(tempfile.mkdtemp(prefix="warren-rehearsal-"))
    for folder in ("logs", "mongo"):
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
    dead_letters_before: dict[str, int],
) -> dict[str, Any]:
    """Read the compose file and run its app services in a network namespace of their own, up to
    an order placed through the published API port and the operator's ledger; every process is
    stopped at the end."""
    compose = load_compose(compose_file, values)
    services = compose["services"]
    log(
        f"{compose_file.name}: {len(services)} services; rehearsing {', '.join(APP_ORDER)}, "
        f"then `docker compose run --rm {TOOLS} {' '.join(TOOLS_COMMAND)}`"
    )
    hosts = sorted(set(services) - set(APP_ORDER))  # rabbitmq, mongo, jaeger, mailpit, ...
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            raise RehearsalError(f"the rehearsal needs {tool} (util-linux)")
    with Namespace(hosts) as namespace:
        rehearsal = Rehearsal(
            compose_file.parent, broker_port, rabbitmqctl, workdir, namespace, forwarder, compose
        )
        try:
            return run_in_compose_order(rehearsal, compose, imported_users, dead_letters_before)
        finally:
            rehearsal.stop_all()


def run_in_compose_order(
    rehearsal: Rehearsal,
    compose: dict[str, Any],
    imported_users: list[str],
    dead_letters_before: dict[str, int],
) -> dict[str, Any]:
    """What `docker compose up` does, in its order: the stand-ins, the one-shot jobs (the broker
    imports the definitions between the two), the services, their healthchecks; then the order,
    and the operator's ledger in the tools container. The broker users the definitions bring
    are added to ``imported_users``."""
    services = compose["services"]
    rehearsal.start_stand_ins()
    rehearsal.run_one_shot("broker-definitions", services["broker-definitions"])
    imported_users.extend(rehearsal.load_definitions(compose))
    rehearsal.run_one_shot("seed", services["seed"])
    for name in APP_ORDER[2:]:
        rehearsal.start_service(name, services[name])
        rehearsal.publish(name, services[name])
    for name in APP_ORDER[2:]:
        rehearsal.healthy(name, services[name])
    api_port = int(str(services["order"]["ports"][0]).split(":")[-2])
    result = place_an_order(f"http://127.0.0.1:{api_port}", rehearsal)
    if TOOLS not in services:
        raise RehearsalError(f"no service {TOOLS}: the operator's tools (profile tools)")
    returncode, output = rehearsal.run_tool(TOOLS, services[TOOLS], TOOLS_COMMAND)
    failures = ledger_failures(output, dead_letters_before)
    if returncode not in (0, 1) or (returncode == 1 and (failures or "✗" not in output)):
        raise RehearsalError(
            f"`docker compose run --rm {TOOLS} {' '.join(TOOLS_COMMAND)}` exited with "
            f"{returncode}:\n{output[-3000:]}"
        )
    log(
        f"{TOOLS}: `docker compose run --rm {TOOLS} {' '.join(TOOLS_COMMAND)}`, as the operator: "
        "the ledger holds"
        + ("" if returncode == 0 else " (but for dead letters the broker held before)")
    )
    rehearsal.nothing_written([*APP_ORDER, TOOLS])
    return result


def delete_imported_users(rabbitmqctl: str, users: list[str]) -> None:
    """Leave the broker's users as they were: delete those the definitions brought (the
    operator's and one per service), except guest (which the broker had before)."""
    for user in users:
        if user and user != "guest":
            subprocess.run([*shlex.split(rabbitmqctl), "delete_user", user], capture_output=True)


if __name__ == "__main__":
    typer.run(main)
