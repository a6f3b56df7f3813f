"""Settings: one base class, one subclass per service, built at start-up (never at import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self
from urllib.parse import quote, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from shared.tls import checked_broker_url

# Delay before the 1st, 2nd, 3rd... retry of a failed message. A retry beyond the last goes to
# the queue's DLQ. Quick at first (a blip), then a capped exponential tail: together they outlast
# a realistic outage -- a database failover, a broker restart, a minute of maintenance -- so that
# what is in flight waits it out instead of filling the DLQs. 8 attempts over 811 s (13.5 min).
RETRY_DELAYS_SECONDS: tuple[int, ...] = (1, 5, 25, 60, 120, 300, 300)

# --8<-- [start:secret-files]
# Where this process's secret files are, one file per setting, named after it
# (`rabbit_password`, `payment_token_keys`, ...). Compose mounts each container's own secrets in
# /run/secrets and sets this to that folder; the compose rehearsal points it at a folder of its
# own. Unset (the local run): no files, .env and the environment alone.
SECRETS_DIR_VARIABLE = "WARREN_SECRETS_DIR"


def secrets_dir() -> Path | None:
    """The folder named by ``WARREN_SECRETS_DIR``, when it exists (a container given no secret
    has no /run/secrets)."""
    folder = os.environ.get(SECRETS_DIR_VARIABLE, "")
    return Path(folder) if folder and Path(folder).is_dir() else None


def secret_files_first(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    dotenv_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """A settings class's sources, with the secret files before the environment. Under compose,
    ``env_file`` hands every container all of .env: ``environment:`` blanks the secrets there
    (``PAYMENT_TOKEN_KEYS: ""``), and a container's own secrets arrive as files, which must win
    over those blanks. With secret files, an empty variable is no value (a blank JSON setting
    would not even parse)."""
    folder = secrets_dir()
    if folder is None:
        return init_settings, env_settings, dotenv_settings
    return (
        init_settings,
        SecretsSettingsSource(settings_cls, secrets_dir=folder),
        EnvSettingsSource(settings_cls, env_ignore_empty=True),
        DotEnvSettingsSource(settings_cls, env_ignore_empty=True),
    )


def secret_file_values() -> dict[str, str]:
    """``NAME`` -> value of each secret file (for code that reads variables, not settings)."""
    folder = secrets_dir()
    if folder is None:
        return {}
    return {path.name.upper(): path.read_text().strip() for path in folder.iterdir()}
    # --8<-- [end:secret-files]


class SecretFilesFirst(BaseSettings):
    """Settings that read their secret files (compose's secrets) before the environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return secret_files_first(settings_cls, init_settings, env_settings, dotenv_settings)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password (URL-quoted), the user kept."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0] or "guest"
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


# --8<-- [start:settings]
class WarrenSettings(SecretFilesFirst):
    """Values every service needs. Read from the environment (and `.env` when present)."""

    # A settings error never shows what was read: under compose that includes the passwords of
    # the secret files (a model-level error would print every input).
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    service_name: str = "warren"
    rabbit_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # The broker password, when it is not in RABBIT_URL: under compose each service's own comes
    # as a secret file (rabbit_password) and RABBIT_URL names the user alone.
    rabbit_password: SecretStr | None = None
    mongo_url: str = "mongodb://127.0.0.1:27017"
    # The database password, when it is not in MONGO_URL: under compose each service's own comes
    # as a secret file (mongo_password) and MONGO_URL names the user alone
    # (mongodb://order@mongo:27017/?authSource=admin). Locally, no password: the stand-in has no
    # authentication.
    mongo_password: SecretStr | None = None
    # Each service owns a database of its own: `<mongo_db_prefix>_<service>`.
    mongo_db_prefix: str = "warren"
    # Unacknowledged messages a consumer may hold at once: small, so that competing
    # consumers share work fairly and a crash returns little to the queue.
    prefetch: int = Field(default=10, ge=1)
    # Backoff before each retry of a failed message (JSON list in the environment, e.g.
    # RETRY_DELAYS_SECONDS='[1, 5, 25]'); one more failure sends it to its DLQ. Their sum is the
    # retry budget: how long an outage the services wait out.
    retry_delays_seconds: tuple[int, ...] = RETRY_DELAYS_SECONDS
    # Every consumer queue's length limit, when set (QUEUE_MAX_LENGTH=5: the tests see push-back
    # at once); unset, each queue's own (shared/topology.py). Read by `warren topology
    # provision`/`export`, which load the limits into the broker as policies.
    queue_max_length: int | None = Field(default=None, ge=1)
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

    @model_validator(mode="after")
    def _rabbit_url_verifies_the_broker(self) -> Self:
        checked_broker_url(self.rabbit_url)  # no TLS that accepts any certificate
        return self

    @model_validator(mode="after")
    def _rabbit_password_into_url(self) -> Self:
        if self.rabbit_password is not None:
            password = self.rabbit_password.get_secret_value()
            self.rabbit_url = with_password(self.rabbit_url, password)
        return self

    # --8<-- [start:mongo-password]
    @model_validator(mode="after")
    def _mongo_password_into_url(self) -> Self:
        if self.mongo_password is not None:
            if not urlsplit(self.mongo_url).username:
                # No default user, as RabbitMQ's guest: a password for nobody is a mistake.
                # (Without a user, the URL holds no password either: safe to show.)
                raise ValueError(
                    f"MONGO_URL ({self.mongo_url}) names no user for the MongoDB password "
                    "(mongo_password): mongodb://<user>@<host>:27017/?authSource=admin"
                )
            password = self.mongo_password.get_secret_value()
            self.mongo_url = with_password(self.mongo_url, password)
        return self
        # --8<-- [end:mongo-password]


class BrokerPasswords(SecretFilesFirst):
    """Each service's broker password (``BROKER_PASSWORD_ORDER``...), read by the operator's
    provisioning only (``warren topology export`` / ``provision``). A service gets its own in
    its ``RABBIT_URL`` (under compose: its secret file ``rabbit_password``), and no other."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_PASSWORD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    order: str = ""
    inventory: str = ""
    payment: str = ""
    notification: str = ""
    audit: str = ""

    def configured(self) -> dict[str, str]:
        """service -> password, for the services that have one."""
        return {service: password for service, password in self.model_dump().items() if password}
