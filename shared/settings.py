"""Settings: one base class, one subclass per service, built at start-up (never at import)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Delay before the 1st, 2nd, 3rd... retry of a failed message. A retry beyond the last goes to
# the queue's DLQ. Quick at first (a blip), then a capped exponential tail: together they outlast
# a realistic outage -- a database failover, a broker restart, a minute of maintenance -- so that
# what is in flight waits it out instead of filling the DLQs. 8 attempts over 811 s (13.5 min).
RETRY_DELAYS_SECONDS: tuple[int, ...] = (1, 5, 25, 60, 120, 300, 300)


# --8<-- [start:settings]
class WarrenSettings(BaseSettings):
    """Values every service needs. Read from the environment (and `.env` when present)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    service_name: str = "warren"
    rabbit_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    # Each service owns a database of its own: `<mongo_db_prefix>_<service>`.
    mongo_db_prefix: str = "warren"
    # Unacknowledged messages a consumer may hold at once: small, so that competing
    # consumers share work fairly and a crash returns little to the queue.
    prefetch: int = Field(default=10, ge=1)
    # Backoff before each retry of a failed message (JSON list in the environment, e.g.
    # RETRY_DELAYS_SECONDS='[1, 5, 25]'); one more failure sends it to its DLQ. Their sum is the
    # retry budget: how long an outage the services wait out.
    retry_delays_seconds: tuple[int, ...] = RETRY_DELAYS_SECONDS
    log_level: str = "INFO"
    # "console" for humans, "json" for machines (compose sets json).
    log_format: str = "console"
    # Where the service's HTTP side (health checks, the API) listens: HOST and PORT in the
    # environment, or --host/--port on the command line (see shared.runner).
    host: str = "127.0.0.1"
    port: int = 8000
    # The operator's broker user (compose's RABBITMQ_USER; locally "guest" too): the CLI replays
    # dead letters and copies messages under it, so a copy it made is trusted to say who
    # published the original. A service never connects as the operator when it has a user of
    # its own (see shared/topology.py, SERVICES).
    rabbitmq_user: str = "guest"

    @property
    def broker_user(self) -> str:
        """The user this process connects as (from RABBIT_URL)."""
        return urlsplit(self.rabbit_url).username or "guest"

    @property
    def broker_operators(self) -> frozenset[str]:
        return frozenset({"guest", self.rabbitmq_user})

    @property
    def mongo_db(self) -> str:
        return self.mongo_db_of(self.service_name)

    def mongo_db_of(self, service: str) -> str:
        return f"{self.mongo_db_prefix}_{service}"
        # --8<-- [end:settings]


class BrokerPasswords(BaseSettings):
    """Each service's broker password (``BROKER_PASSWORD_ORDER``...), read by the operator's
    provisioning only (``warren topology export`` / ``provision``). A service gets its own in
    its ``RABBIT_URL``, and no other."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_PASSWORD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    order: str = ""
    inventory: str = ""
    payment: str = ""
    notification: str = ""

    def configured(self) -> dict[str, str]:
        """service -> password, for the services that have one."""
        return {service: password for service, password in self.model_dump().items() if password}
