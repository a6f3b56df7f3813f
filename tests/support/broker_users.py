"""Per-service broker users on a vhost of a test's own, provisioned as `make run` does."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.settings import BrokerPasswords
from shared.testing.system import BIN, REPO, rabbitmqctl_command


@dataclass
class Broker:
    operator: str  # the operator's URL, on the test's vhost
    passwords: dict[str, str]

    def url(self, user: str, password: str | None = None) -> str:
        """``user``'s URL on this vhost (its password, unless another is given)."""
        address = urlsplit(self.operator)
        secret = self.passwords[user] if password is None else password
        netloc = f"{user}:{secret}@{address.hostname}:{address.port or 5672}"
        return address._replace(netloc=netloc).geturl()


def ctl(*args: str) -> None:
    command = rabbitmqctl_command()
    assert command is not None
    subprocess.run([*command, *args], check=True, capture_output=True, timeout=60)


def provision(operator: str, queue_max_length: int | None = None) -> Broker:
    """`warren topology provision` on the operator's vhost, with `make run`'s passwords (the
    users are broker-wide: a test must not change the password a running `make run` uses).
    ``queue_max_length``: every queue's length limit (QUEUE_MAX_LENGTH)."""
    passwords = BrokerPasswords().configured()
    env = {
        **os.environ,
        "RABBIT_URL": operator,
        "RETRY_DELAYS_SECONDS": "[1]",
        **({"QUEUE_MAX_LENGTH": str(queue_max_length)} if queue_max_length else {}),
        **{f"BROKER_PASSWORD_{user.upper()}": password for user, password in passwords.items()},
    }
    subprocess.run(
        [str(BIN / "warren"), "topology", "provision"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Broker(operator, passwords)


@contextmanager
def provisioned_vhost(
    rabbit_url: str, name: str, *, queue_max_length: int | None = None
) -> Iterator[Broker]:
    """A fresh vhost ``<name>-<random>`` with the operator's rights and every service's user
    provisioned on it; deleted afterwards (the users, broker-wide, stay)."""
    vhost = f"{name}-{uuid.uuid4().hex[:8]}"
    address = urlsplit(rabbit_url)
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, address.username or "guest", ".*", ".*", ".*")
    try:
        yield provision(address._replace(path=f"/{vhost}").geturl(), queue_max_length)
    finally:
        ctl("delete_vhost", vhost)
