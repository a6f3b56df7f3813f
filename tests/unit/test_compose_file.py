"""docker-compose.yml checked without a Docker engine.

This covers the Compose JSON schema, a healthcheck on every long-running container,
`depends_on` with explicit conditions, every variable the file interpolates being defined in
.env.example, the commands the app image runs pointing at modules that exist, and the
containers' hardening: read-only root filesystems, no capabilities, `no-new-privileges`, two
networks, and secrets as files that only their containers get, never in an environment; and
MongoDB with authentication, each service logging in as its own user with its own password
(the users themselves: tests/unit/test_mongo_users.py); and the operator's tools, a `warren`
container in a profile that logs in as the operator.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from cli.secrets import SECRET_VARIABLES
from tests.support.deployment import MONGO_URL_OPTIONS, rabbitmq_conf

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
ENV_FILE = REPO / ".env"
RABBITMQ_CONF = REPO / "infra" / "rabbitmq" / "rabbitmq.conf"
SECRETS = REPO / "secrets"
JAEGER_CONFIG = REPO / "infra" / "jaeger" / "config.yaml"

# The operator's tools: `docker compose run --rm warren <command>`, in the profile tools.
TOOLS = "warren"

# Containers that run once and exit. A healthcheck means nothing for them. Their dependents wait
# for `service_completed_successfully`, and they must never be restarted. (The tools run one
# command each time `docker compose run` starts them.)
ONE_SHOT = {"seed", "broker-definitions", "mongo-replica-set", "mongo-members", TOOLS}

# The profile cluster (`make compose-cluster`): two more broker nodes, two more MongoDB
# members and the job that adds them, HAProxy in front, a second order replica.
CLUSTER = {"rabbitmq-2", "rabbitmq-3", "mongo-2", "mongo-3", "mongo-members", "haproxy", "order-2"}

# A second replica named apart (it has no host port), and the service it is a copy of.
REPLICA_OF = {"order-2": "order"}

# Modules the app image runs with `python -m`, relative to the repository root.
APP_MODULES = [
    "services.order",
    "services.inventory",
    "services.payment",
    "services.notification",
    "services.notification.worker",
    "services.audit",
]

# A service's MONGO_URL: its own user, no password (that is its secret file mongo_password),
# users in `admin` (infra/mongo/init-users.js creates them there).
# And the replica set's options (tests/unit/test_mongo_replica_set.py: what each one is for).
_MONGO_URL = re.compile(
    r"mongodb://([a-z]+)@mongo:27017,mongo-2:27017,mongo-3:27017/\?"
    + re.escape("&".join(f"{key}={value}" for key, value in MONGO_URL_OPTIONS.items()))
)

# The MongoDB user of each app container whose user is not named after it: the seed job loads
# inventory's catalogue, the Celery worker is notification's, the tools are the operator's.
MONGO_USER_OF = {
    "seed": "inventory",
    "celery-worker": "notification",
    TOOLS: "operator",
    **REPLICA_OF,
}

# Every broker URL's host: BROKER_HOST, rabbitmq or HAProxy in front of the cluster profile's nodes.
BROKER = "${BROKER_HOST:?set it in .env}:5672"

# ${VAR}, ${VAR:?msg}, ${VAR:-default}, ${VAR-default}, ... but not the escaped $${VAR}.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[?\-+][^}]*)?\}")


def _schema_file() -> Path:
    shared = REPO.parent / "shared" / "compose-spec.schema.json"
    return shared if shared.exists() else REPO / "infra" / "compose-spec.schema.json"


@functools.cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _app_services() -> dict[str, dict[str, Any]]:
    """The services built from the repository's Dockerfile."""
    return {name: svc for name, svc in _services().items() if svc.get("build") == "."}


def _env_names(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        values[name.strip()] = value.strip()
    return values


def _runnable_module_exists(dotted: str) -> bool:
    """True when ``python -m dotted`` finds a module in the repository (no import)."""
    path = REPO.joinpath(*dotted.split("."))
    return (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()


def _importable_module_exists(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()


# --- (a) the Compose specification ---------------------------------------------------------------


def test_compose_file_matches_the_compose_schema() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--schemafile",
            str(_schema_file()),
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in _compose()


def test_yaml_anchors_resolve_into_every_app_service() -> None:
    services = _app_services()
    expected = {"seed", "order", "inventory", "payment", "notification", "celery-worker", "audit"}
    assert set(services) == expected | {"broker-definitions", TOOLS, *REPLICA_OF}
    for name in expected | set(REPLICA_OF):
        svc = services[name]
        assert "<<" not in svc, f"{name}: merge key left unresolved"
        assert svc["env_file"] == ".env", name
        env = svc["environment"]
        assert "<<" not in env, f"{name}: environment merge key left unresolved"
        assert env["RABBIT_URL"].endswith(f"@{BROKER}/"), name
        assert _MONGO_URL.fullmatch(env["MONGO_URL"]), (name, env["MONGO_URL"])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name
        assert env["LOG_FORMAT"] == "json", name
        # The Celery worker's traces say whose work it does, as in the local run.
        traced_as = "notification-worker" if name == "celery-worker" else name
        assert env["OTEL_SERVICE_NAME"] == REPLICA_OF.get(name, traced_as), name


def _secrets_of(svc: dict[str, Any]) -> dict[str, str]:
    """A service's secrets: the file name it reads (in /run/secrets) -> the secret's name."""
    listed = {}
    for entry in svc.get("secrets", []):
        if isinstance(entry, str):
            listed[entry] = entry
        else:
            listed[entry.get("target") or entry["source"]] = entry["source"]
    return listed


def _holders(secret: str) -> set[str]:
    return {name for name, svc in _services().items() if secret in _secrets_of(svc).values()}


def test_only_the_payment_containers_get_the_keys_that_open_payment_tokens() -> None:
    """env_file hands every app container all of .env; ``environment:`` wins over it. So the
    private keys are blanked for every container, payment's get them as a secret file, and order
    gets the public key."""
    assert _env_names(ENV_EXAMPLE)["PAYMENT_TOKEN_KEYS"]  # what env_file would hand over
    for name, svc in _app_services().items():
        env = svc.get("environment") or {}
        assert env.get("PAYMENT_TOKEN_KEYS") == "", f"{name} would get the keys from env_file"
    assert _holders("payment_token_keys") == {"payment"}
    assert _secrets_of(_services()["payment"])["payment_token_keys"] == "payment_token_keys"
    payment, order = _services()["payment"]["environment"], _services()["order"]["environment"]
    assert order["PAYMENT_TOKEN_PUBLIC_KEY"] == "${PAYMENT_TOKEN_PUBLIC_KEY:?set it in .env}"
    assert order["PAYMENT_TOKEN_KEY_ID"] == payment["PAYMENT_TOKEN_KEY_ID"]


def test_only_order_and_locust_get_the_key_that_signs_api_tokens() -> None:
    """Whoever holds API_TOKEN_SECRET can sign in as any customer, or as an operator: order
    verifies with it, Locust's shoppers sign with it; every other container gets it blanked."""
    assert _env_names(ENV_EXAMPLE)["API_TOKEN_SECRET"]  # what env_file would hand over
    for name, svc in _app_services().items():
        env = svc.get("environment") or {}
        assert env.get("API_TOKEN_SECRET") == "", f"{name} would get the token key from env_file"
    assert _holders("api_token_secret") == {"order", "order-2", "locust"}
    locust = _services()["locust"]
    assert locust["environment"]["API_TOKEN_SECRET_FILE"] == "/run/secrets/api_token_secret"


def _replicas(svc: dict[str, Any]) -> int:
    """deploy.replicas with ${VAR} filled in from .env, as compose does."""
    value, env = str(svc.get("deploy", {}).get("replicas", 1)), dotenv_values(ENV_FILE)
    return int(_INTERPOLATION.sub(lambda m: env[m.group(1)] or "", value))


def test_payment_runs_two_competing_consumers_without_fixed_names_or_host_ports() -> None:
    payment = _services()["payment"]
    assert _replicas(payment) == 2
    assert "container_name" not in payment
    assert "ports" not in payment


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("inventory", "INVENTORY_REPLICAS"),
        ("payment", "PAYMENT_REPLICAS"),
        ("notification", "NOTIFICATION_REPLICAS"),
        ("celery-worker", "EMAILS_REPLICAS"),
    ],
)
def test_the_consumers_replica_counts_are_env_variables_named_as_make_run_names_them(
    service: str, variable: str
) -> None:
    svc = _services()[service]
    assert svc["deploy"]["replicas"] == f"${{{variable}:?set it in .env}}", service
    assert svc["deploy"]["resources"]["limits"]["memory"], service  # deploy: replaced, not merged
    assert "ports" not in svc and "container_name" not in svc, service
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^{variable} \?= \d+$", makefile, re.MULTILINE), variable


# --- (b) healthchecks and start-up order ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(_services()) - ONE_SHOT))
def test_every_long_running_container_has_a_healthcheck(name: str) -> None:
    healthcheck = _services()[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False), f"{name} disables its healthcheck"
    assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in healthcheck, f"{name}: healthcheck without {key}"


@pytest.mark.parametrize("name", sorted(ONE_SHOT))
def test_one_shot_jobs_run_once_and_have_no_healthcheck(name: str) -> None:
    svc = _services()[name]
    assert svc["restart"] == "no"
    assert "healthcheck" not in svc
    assert "replicas" not in svc.get("deploy", {})


def test_every_dependency_states_a_condition_that_the_target_can_meet() -> None:
    services = _services()
    for name, svc in services.items():
        depends_on = svc.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on as a list has no conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition")
            assert condition, f"{name} -> {target} has no condition"
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"


def test_every_app_service_waits_for_a_healthy_broker_and_database() -> None:
    for name in ("order", "inventory", "payment", "notification", "celery-worker", "audit"):
        depends_on = _services()[name]["depends_on"]
        assert depends_on["rabbitmq"]["condition"] == "service_healthy", name
        assert depends_on["mongo"]["condition"] == "service_healthy", name
        assert _services()[name]["restart"] == "unless-stopped", name
    assert _services()["inventory"]["depends_on"]["seed"] == {
        "condition": "service_completed_successfully"
    }


def test_broker_loads_the_definitions_the_one_shot_job_writes_from_env() -> None:
    # A node that loads definitions at boot creates no default user: the file brings its own.
    settings = rabbitmq_conf(RABBITMQ_CONF)
    job, broker = _services()["broker-definitions"], _services()["rabbitmq"]
    assert job["command"][:3] == ["warren", "topology", "export"]
    written = job["command"][job["command"].index("--output") + 1]
    [job_volume] = job["volumes"]
    volume, job_mount = job_volume.split(":")[:2]
    assert written.startswith(job_mount + "/")
    [broker_mount] = [v.split(":")[1] for v in broker["volumes"] if v.startswith(volume + ":")]
    assert settings["load_definitions"] == broker_mount + written.removeprefix(job_mount)
    assert broker["depends_on"]["broker-definitions"] == {
        "condition": "service_completed_successfully"
    }
    # A renamed user changes the broker's configuration, so `up` re-creates it and it loads the
    # new definitions. The passwords are secret files, in no environment.
    assert set(broker["environment"].values()) == {"${RABBITMQ_USER:?set it in .env}"}
    # The job hashes the operator's password and every service's: it holds all of them.
    passwords = {
        name.lower()
        for name in _env_names(ENV_EXAMPLE)
        if name == "RABBITMQ_PASSWORD" or name.startswith("BROKER_PASSWORD_")
    }
    assert set(_secrets_of(job)) == set(_secrets_of(job).values()) == passwords


def test_no_two_services_share_an_image_tag_that_compose_builds() -> None:
    # Current Compose builds each service as its own target: two of them exporting one tag race
    # on the containerd image store ("image already exists").
    for name, svc in _app_services().items():
        assert "image" not in svc, f"{name}: a built service gets its own image name"


def test_every_image_is_pinned_to_an_exact_version() -> None:
    for name, svc in _services().items():
        if "image" in svc:
            assert re.search(r":v?\d+\.\d+\.\d+(-[a-z]+)?$", svc["image"]), (name, svc["image"])


def test_every_published_port_comes_from_env_and_binds_to_localhost() -> None:
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            assert re.fullmatch(
                r"127\.0\.0\.1:\$\{HOST_PORT_[A-Z_]+:\?set it in \.env\}:\d+", port
            ), (
                name,
                port,
            )


def test_every_long_running_service_has_a_memory_limit() -> None:
    for name, svc in _services().items():
        if name in ONE_SHOT or ("profiles" in svc and name not in CLUSTER):
            continue
        assert svc["deploy"]["resources"]["limits"]["memory"], name


def test_jaeger_caps_its_traces_and_listens_where_compose_looks() -> None:
    jaeger = _services()["jaeger"]
    config_mount = next(v for v in jaeger["volumes"] if v.startswith("./infra/jaeger/config.yaml:"))
    assert jaeger["command"] == ["--config", config_mount.split(":")[1]]
    config = yaml.safe_load(JAEGER_CONFIG.read_text(encoding="utf-8"))
    [backend] = config["extensions"]["jaeger_storage"]["backends"].values()
    assert 0 < backend["memory"]["max_traces"] <= 20_000
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["extensions"]["healthcheckv2"]["http"]["endpoint"] == "0.0.0.0:13133"
    assert "13133/status" in " ".join(jaeger["healthcheck"]["test"])


# --- (c) values live in .env ---------------------------------------------------------------------


def test_every_interpolated_variable_is_defined_in_env_example() -> None:
    referenced = set(_INTERPOLATION.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert referenced, "expected ${VAR:?...} references in the compose file"
    missing = referenced - set(_env_names(ENV_EXAMPLE))
    assert not missing, f"not defined in .env.example: {sorted(missing)}"


def test_required_variables_fail_fast_with_a_hint() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    bare = re.findall(r"(?<!\$)\$\{RABBITMQ_USER\}", text)
    assert not bare, "${RABBITMQ_USER} without :? would start with an empty value"
    assert "${RABBITMQ_USER:?set it in .env}" in text


def test_env_and_env_example_define_the_same_names() -> None:
    assert set(_env_names(ENV_FILE)) == set(_env_names(ENV_EXAMPLE))


def test_env_does_not_carry_connection_urls() -> None:
    # Compose sets them under `environment:`. The local run relies on the code's defaults
    # (127.0.0.1), and the services also read ./.env, so a URL here would break one of the two.
    for path in (ENV_FILE, ENV_EXAMPLE):
        assert not {"RABBIT_URL", "MONGO_URL"} & set(_env_names(path)), path.name


# --- (d) the image runs code that exists ---------------------------------------------------------


@pytest.mark.parametrize("module", APP_MODULES)
def test_python_modules_run_by_the_image_exist(module: str) -> None:
    assert _runnable_module_exists(module), f"python -m {module}: no such module in {REPO}"


def test_every_python_command_in_the_compose_file_is_listed() -> None:
    used: set[str] = set()
    for svc in _app_services().values():
        for argv in (svc.get("command") or [], (svc.get("healthcheck") or {}).get("test") or []):
            argv = [arg for arg in argv if arg not in {"CMD", "CMD-SHELL"}]
            if argv[:2] == ["python", "-m"]:
                used.add(argv[2])
    assert used == set(APP_MODULES)


def test_warren_command_used_by_seed_is_installed_by_the_image() -> None:
    assert _services()["seed"]["command"][0] == "warren"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    module, _, _function = scripts["warren"].partition(":")
    assert _importable_module_exists(module), f"warren = {scripts['warren']}: no module {module}"


@pytest.mark.parametrize(
    "source",
    sorted(
        {
            volume.split(":", 1)[0]
            for svc in _services().values()
            for volume in svc.get("volumes", [])
            if isinstance(volume, str) and volume.startswith("./")
        }
    ),
)
def test_bind_mounted_host_paths_exist(source: str) -> None:
    # A missing file is silently replaced by an empty directory when the engine creates the
    # mount.
    assert (REPO / source).exists(), f"{source} does not exist"


# --- (e) the containers' hardening (docs/14-security.md, "Containers") ---------------------------

# Containers whose root filesystem stays writable, with the reason. None today: every image
# writes only to its volumes and tmpfs mounts.
WRITABLE_ROOT: dict[str, str] = {}

# Infrastructure images that start as root and step down themselves (chown, gosu): compose starts
# them as their own user instead, since they have no capability to step down with.
IMAGE_USERS = {
    "rabbitmq": "rabbitmq",
    "rabbitmq-2": "rabbitmq",
    "rabbitmq-3": "rabbitmq",
    "mongo": "mongodb",
    "mongo-2": "mongodb",
    "mongo-3": "mongodb",
    "mongo-replica-set": "mongodb",
    "mongo-members": "mongodb",
    "mailpit": "65534:65534",
}


def _networks_of(svc: dict[str, Any]) -> set[str]:
    return set(svc.get("networks") or [])  # a list, or a mapping of network -> options


@pytest.mark.parametrize("name", sorted(_services()))
def test_every_container_has_a_read_only_root_filesystem(name: str) -> None:
    svc = _services()[name]
    if name in WRITABLE_ROOT:
        assert not svc.get("read_only"), f"{name} is read-only now: take it off the list"
        return
    assert svc.get("read_only") is True, f"{name}: read_only: true, or WRITABLE_ROOT with why"
    for mount in svc.get("tmpfs", []):
        # A tmpfs is memory: bounded, so that a runaway writer hits its limit, not the host's.
        assert re.fullmatch(r"/[\w/.-]+:size=\d+[kmg]", mount), (name, mount)


@pytest.mark.parametrize("name", sorted(_services()))
def test_every_container_drops_every_capability_and_may_not_gain_privileges(name: str) -> None:
    svc = _services()[name]
    assert svc.get("cap_drop") == ["ALL"], name
    assert not svc.get("cap_add"), f"{name}: no image here needs a capability"
    assert "no-new-privileges:true" in svc.get("security_opt", []), name
    assert not svc.get("privileged"), name


def test_no_container_runs_as_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER warren$", dockerfile, re.MULTILINE)
    for name, svc in _services().items():
        if name in IMAGE_USERS:
            assert svc.get("user") == IMAGE_USERS[name], name
        else:
            # The app image's user, or the image's own (Jaeger 10001, Locust's "locust").
            assert "user" not in svc, f"{name}: user {svc['user']!r}"


def test_the_backend_network_is_internal_and_the_frontend_is_not() -> None:
    networks = _compose()["networks"]
    assert set(networks) == {"backend", "frontend"}
    assert networks["backend"] == {"internal": True}
    assert not (networks["frontend"] or {}).get("internal")


def test_only_services_on_the_frontend_publish_ports_and_each_of_them_is_on_it() -> None:
    """Docker publishes no port of a container on internal networks only: whatever the host
    reaches must be on the frontend, and nothing else is."""
    for name, svc in _services().items():
        on_frontend = "frontend" in _networks_of(svc)
        assert on_frontend == bool(svc.get("ports")), f"{name}: ports {svc.get('ports')}"
    published = {name for name, svc in _services().items() if svc.get("ports")}
    assert published == {
        "order",
        "rabbitmq",
        "mongo",
        "jaeger",
        "mailpit",
        "locust",
        "prometheus",
        "alertmanager",
        "grafana",
        "haproxy",
    }


def test_the_services_talk_over_the_backend_and_the_job_with_every_password_has_no_network() -> (
    None
):
    for name, svc in _services().items():
        if name == "broker-definitions":
            assert svc["network_mode"] == "none"
            assert "networks" not in svc
        elif name == "locust":
            # A client from outside: it reaches the API, nothing on the backend.
            assert _networks_of(svc) == {"frontend"}
        else:
            assert "backend" in _networks_of(svc), name
    for name in ("inventory", "payment", "notification", "celery-worker", "seed", TOOLS):
        assert _networks_of(_services()[name]) == {"backend"}, name


# --- (f) secrets: files for the containers that need them, never in an environment -------------


def _secret_variables() -> list[str]:
    return [name for name in _env_names(ENV_FILE) if SECRET_VARIABLES.fullmatch(name)]


def test_every_secret_of_env_is_a_compose_secret_read_from_its_file() -> None:
    declared = _compose()["secrets"]
    expected = {name.lower() for name in _secret_variables()}
    assert {"rabbitmq_password", "payment_token_keys", "api_token_secret"} <= expected
    assert set(declared) == expected
    for name, definition in declared.items():
        # A file: compose copies an `environment:` secret into the container, which a read-only
        # root filesystem refuses (docker/compose#12531).
        assert definition == {"file": f"./secrets/{name}"}, name


def test_the_secret_files_hold_what_env_says() -> None:
    """They are written from .env (`make secrets`) and committed with its development values."""
    env = dotenv_values(ENV_FILE)
    for name in _secret_variables():
        path = SECRETS / name.lower()
        assert path.is_file(), f"{path} is missing: run `make secrets`"
        written = path.read_text(encoding="utf-8").strip()
        assert written == env[name], f"{path} differs from .env's {name}: run `make secrets`"
        assert path.stat().st_mode & 0o004, f"{path}: the containers' users cannot read it"


def test_no_secret_reaches_a_container_through_its_environment() -> None:
    """Not interpolated into any `environment:`, not written there literally, and blanked in
    every container that env_file hands all of .env to."""
    values = {name: dotenv_values(ENV_FILE)[name] or "" for name in _secret_variables()}
    for name, svc in _services().items():
        env = svc.get("environment") or {}
        for variable, value in env.items():
            text = str(value)
            for secret, secret_value in values.items():
                assert f"${{{secret}" not in text, f"{name}: {variable} interpolates {secret}"
                assert secret_value not in text or len(secret_value) < 8, (name, variable)
            url = re.sub(r"\$\{[^}]*\}", "VAR", text)  # ${RABBITMQ_USER:?...} is a user
            assert not re.search(r"://[^/@:]+:[^/@]+@", url), f"{name}: a password in {variable}"
        if "env_file" in svc:
            for secret in values:
                assert env.get(secret) == "", f"{name}: env_file would hand it {secret}"


def test_each_service_gets_its_own_broker_password_and_no_other_secret() -> None:
    others = {"payment": {"payment_token_keys"}, "order": {"api_token_secret"}}
    for name, svc in _app_services().items():
        if name in ("broker-definitions", "seed", TOOLS):
            continue  # the tools: the operator's passwords (test below)
        env, secrets = svc["environment"], _secrets_of(svc)
        user = env["RABBIT_URL"].removeprefix("amqp://").partition("@")[0]
        assert secrets.pop("rabbit_password") == f"broker_password_{user}", name
        # The same user on both: its MongoDB password (test below) and nothing else of another.
        assert secrets.pop("mongo_password") == f"mongo_password_{user}", name
        expected = others.get(REPLICA_OF.get(name, name), set())
        assert set(secrets) == set(secrets.values()) == expected, name
        assert env["WARREN_SECRETS_DIR"] == "/run/secrets", name
    # seed uses no broker: inventory's MongoDB password alone.
    assert _secrets_of(_services()["seed"]) == {"mongo_password": "mongo_password_inventory"}


# --- (g) MongoDB: authentication, one user per service (docs/14-security.md) -------------------


def test_mongodb_starts_with_authentication_and_creates_the_users_at_first_start() -> None:
    """The image's entrypoint adds --auth when it has a root user and password, creates root
    at the first start of an empty volume, then runs /docker-entrypoint-initdb.d/*.js."""
    mongo = _services()["mongo"]
    env, secrets = mongo["environment"], _secrets_of(mongo)
    assert env["MONGO_INITDB_ROOT_USERNAME"] == "root"
    # Root's password as a file (the entrypoint reads *_FILE), never as a value.
    assert "MONGO_INITDB_ROOT_PASSWORD" not in env
    password_file = env["MONGO_INITDB_ROOT_PASSWORD_FILE"]
    assert password_file == "/run/secrets/mongo_root_password"
    assert secrets["mongo_root_password"] == "mongo_root_password"
    # The image's own entrypoint and command (mongod), after the replica set's key is copied
    # (tests/unit/test_mongo_replica_set.py): a key file turns authentication on too.
    assert mongo["command"] == ["mongod"]
    assert 'exec docker-entrypoint.sh "$$@" --replSet rs0 --keyFile' in mongo["entrypoint"][2]
    assert not {"--noauth", "--transitionToAuth"} & set(" ".join(mongo["entrypoint"]).split())
    assert env["MONGO_DB_PREFIX"] == "${MONGO_DB_PREFIX:?set it in .env}"
    assert (
        "./infra/mongo/init-users.js:/docker-entrypoint-initdb.d/init-users.js:ro"
        in (mongo["volumes"])
    )
    # The script reads every user's password: the container gets each one, and no other secret.
    users = {name.lower() for name in _secret_variables() if name.startswith("MONGO_PASSWORD_")}
    assert (
        set(secrets)
        == set(secrets.values())
        == users
        | {
            "mongo_root_password",
            "mongo_replica_set_key",
        }
    )


def test_the_mongodb_healthcheck_logs_in_as_nobody() -> None:
    # `ping` requires no authentication (mongod: PingCommand::requiresAuth() is false), so the
    # check works with authentication on and holds no password.
    test = _services()["mongo"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "mongosh"]
    assert "db.adminCommand('ping').ok" in test
    assert not {"-u", "-p", "--username", "--password"} & set(test)


@pytest.mark.parametrize(
    "name", sorted(set(_app_services()) - {"broker-definitions"}), ids=lambda name: name
)
def test_each_service_logs_in_to_mongodb_as_its_own_user_with_its_own_password(
    name: str,
) -> None:
    svc = _services()[name]
    match = _MONGO_URL.fullmatch(svc["environment"]["MONGO_URL"])
    assert match, f"{name}: MONGO_URL {svc['environment']['MONGO_URL']!r}"
    user = match.group(1)
    assert user == MONGO_USER_OF.get(name, name), name
    if "RABBIT_URL" in svc["environment"] and name not in ("seed", TOOLS):
        assert svc["environment"]["RABBIT_URL"].startswith(f"amqp://{user}@"), name
    secrets = _secrets_of(svc)
    assert secrets["mongo_password"] == f"mongo_password_{user}", name
    assert not {s for s in secrets.values() if s.startswith("mongo_")} - {
        f"mongo_password_{user}"
    }, f"{name} gets another MongoDB password"


def test_each_mongodb_password_reaches_its_own_service_and_the_database_alone() -> None:
    holders: dict[str, set[str]] = {}
    for name in set(_app_services()) - {"broker-definitions"}:
        holders.setdefault(MONGO_USER_OF.get(name, name), set()).add(name)
    for user, services in holders.items():
        assert _holders(f"mongo_password_{user}") == services | {"mongo"}, user
    # The operator's is for the tools container and `warren --compose` on this machine, root's
    # for an administrator.
    assert _holders("mongo_password_operator") == {"mongo", TOOLS}
    # (and the jobs that make the replica set, which log in as root)
    assert _holders("mongo_root_password") == {"mongo", "mongo-replica-set", "mongo-members"}
    assert not _secrets_of(_services()["broker-definitions"]).keys() & {"mongo_password"}
    assert "MONGO_URL" not in _services()["broker-definitions"]["environment"]


def test_no_mongo_url_carries_a_password() -> None:
    passwords = {
        value
        for name, value in dotenv_values(ENV_FILE).items()
        if name.startswith(("MONGO_PASSWORD_", "MONGO_ROOT_PASSWORD")) and value
    }
    assert passwords
    for name, svc in _services().items():
        url = str((svc.get("environment") or {}).get("MONGO_URL", ""))
        assert not re.search(r"://[^/@]*:[^/@]*@", url), f"{name}: a password in {url}"
        assert not any(password in url for password in passwords), name


# --- (h) the operator's tools: `docker compose run --rm warren <command>` ----------------------


def test_the_tools_run_warren_as_the_operator_and_only_when_asked() -> None:
    """A command run in a service's container runs as that service (its own database and queues
    only); the operator's commands (ledger, dlq, outbox, seed --reset) run in this container,
    as the operator, like `warren --compose` from the host."""
    tools = _services()[TOOLS]
    # In a profile: `docker compose up` does not start it, `docker compose run warren` does.
    assert tools["profiles"] == ["tools"]
    assert tools["entrypoint"] == ["warren"] and tools["command"] == ["--help"]
    assert tools["restart"] == "no"
    assert "depends_on" not in tools  # for a running stack; `--help` needs nothing
    env = tools["environment"]
    # The operator's broker user, the one broker-definitions makes from RABBITMQ_USER ...
    assert env["RABBIT_URL"] == f"amqp://${{RABBITMQ_USER:?set it in .env}}@{BROKER}/"
    definitions_user = _services()["broker-definitions"]["environment"]["RABBITMQ_USER"]
    assert definitions_user == "${RABBITMQ_USER:?set it in .env}"
    # ... and MongoDB's operator (infra/mongo/init-users.js), with their passwords as the files
    # the settings read, and no other secret (not the API's token key: demo and token stay in
    # the order container).
    assert _MONGO_URL.fullmatch(env["MONGO_URL"]).group(1) == "operator"
    assert _secrets_of(tools) == {
        "rabbit_password": "rabbitmq_password",
        "mongo_password": "mongo_password_operator",
    }
    assert env["WARREN_SECRETS_DIR"] == "/run/secrets"
    # What the commands read: ledger counts the emails in Mailpit, a DLQ replay is traced.
    assert env["MAIL_API_URL"] == "http://mailpit:8025"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    # Not `--compose`: that would point the command at this machine's published ports.
    assert "WARREN_COMPOSE" not in env
    # The operator's broker password reaches the job that hashes it and the tools, no service.
    assert _holders("rabbitmq_password") == {"broker-definitions", TOOLS}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert "warren" in scripts
