"""MongoDB's users under compose (infra/mongo/init-users.js), checked without a MongoDB.

No MongoDB server runs where Warren is developed, so the init script is run here under Node,
as mongosh would run it, against a recording ``db`` and secret files of the test's own. What
it created is compared with the services: one user per service (``shared.topology.SERVICES``,
and every MONGO_URL of docker-compose.yml), each on its own database alone; the audit's user
with exactly the actions its code uses (so the database keeps the trail append-only); the
operator's, read-only where the CLI only reads. A service added without a user fails here.
What MongoDB then enforces (an ``Unauthorized`` for anything else) needs a MongoDB: the
command in docs/14-security.md shows it under compose.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from services.audit.repository import AuditTrail
from shared import topology
from shared.settings import WarrenSettings
from shared.testing.memory_mongo import AsyncMongomockDatabase
from tests.support.node import NODE, harness_state, run_harness
from tests.support.recording import Recording

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "mongo" / "init-users.js"
ENV = dotenv_values(REPO / ".env")
SERVICE_USERS = [access.user for access in topology.SERVICES]  # one per service
OPERATOR = "operator"

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the init script runs under it"
)

# Runs the script as mongosh would (globals db, print, require, process), in a fresh context:
# `db` records the users and roles; `require("fs")` reads the test's secret files by path.
# Anything else the script calls is missing here, and fails the run.
HARNESS = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const state = { users: {}, roles: {}, calls: [], reads: [] };
for (const run of input.runs) {
  const admin = {
    getUser: (user) => (state.users[user] ? { user } : null),
    createUser: (doc) => {
      if (state.users[doc.user]) throw new Error(`user ${doc.user} exists`);
      state.users[doc.user] = { pwd: doc.pwd, roles: doc.roles };
      state.calls.push(["createUser", doc.user]);
    },
    updateUser: (user, doc) => {
      if (!state.users[user]) throw new Error(`no user ${user}`);
      state.users[user] = { pwd: doc.pwd, roles: doc.roles };
      state.calls.push(["updateUser", user]);
    },
    getRole: (role) => (state.roles[role] ? { role } : null),
    createRole: (doc) => {
      if (state.roles[doc.role]) throw new Error(`role ${doc.role} exists`);
      state.roles[doc.role] = { privileges: doc.privileges, roles: doc.roles };
      state.calls.push(["createRole", doc.role]);
    },
    updateRole: (role, doc) => {
      if (!state.roles[role]) throw new Error(`no role ${role}`);
      state.roles[role] = { privileges: doc.privileges, roles: doc.roles };
      state.calls.push(["updateRole", role]);
    },
  };
  const db = {
    getSiblingDB: (name) => {
      if (name !== "admin") throw new Error(`users and roles live in admin, not ${name}`);
      return admin;
    },
  };
  const fs = {
    readFileSync: (path, encoding) => {
      state.reads.push(path);
      if (!(path in run.files)) throw new Error(`ENOENT: no such file ${path}`);
      return run.files[path];
    },
  };
  const require = (name) => {
    if (name !== "fs") throw new Error(`require(${name}): not in mongosh's image`);
    return fs;
  };
  const context = { db, print: () => {}, require, process: { env: run.env } };
  vm.runInNewContext(input.script, context, { filename: "init-users.js" });
}
process.stdout.write(JSON.stringify(state));
"""


def _secret_files(passwords: dict[str, str]) -> dict[str, str]:
    """What compose mounts in the mongo container: /run/secrets/mongo_password_<user>."""
    return {f"/run/secrets/mongo_password_{user}": f"{pw}\n" for user, pw in passwords.items()}


def _dev_passwords() -> dict[str, str]:
    return {
        name.removeprefix("MONGO_PASSWORD_").lower(): value or ""
        for name, value in ENV.items()
        if name.startswith("MONGO_PASSWORD_")
    }


def run_init_script(*runs: dict[str, Any]) -> dict[str, Any]:
    """Run the script once per ``runs`` entry ({"files": {path: text}, "env": {...}}), on one
    recorded server; what it holds afterwards."""
    return harness_state(
        HARNESS, {"script": SCRIPT.read_text(encoding="utf-8"), "runs": list(runs)}
    )


@pytest.fixture(scope="module")
def server() -> dict[str, Any]:
    """The users and roles after the first start of an empty volume, with .env's values."""
    return run_init_script(
        {
            "files": _secret_files(_dev_passwords()),
            "env": {"MONGO_DB_PREFIX": ENV["MONGO_DB_PREFIX"]},
        }
    )


def _db(service: str) -> str:
    return WarrenSettings(mongo_db_prefix=ENV["MONGO_DB_PREFIX"] or "").mongo_db_of(service)


def _compose_mongo_users() -> set[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    users = set()
    for svc in compose["services"].values():
        url = str((svc.get("environment") or {}).get("MONGO_URL", ""))
        if match := re.match(r"mongodb://([^:@/]+)@", url):
            users.add(match.group(1))
    return users


def test_the_init_script_parses() -> None:
    result = subprocess.run([str(NODE), "--check", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_there_is_one_user_per_service_and_the_operator_and_no_other(
    server: dict[str, Any],
) -> None:
    assert set(server["users"]) == {*SERVICE_USERS, OPERATOR}
    # Every user compose logs in as exists (and the operator is `warren --compose`'s).
    assert _compose_mongo_users() | {OPERATOR} == set(server["users"])
    assert all(call[0] in ("createUser", "createRole") for call in server["calls"])


@pytest.mark.parametrize("service", [s for s in SERVICE_USERS if s != "audit"])
def test_a_service_may_read_and_write_its_own_database_and_nothing_else(
    server: dict[str, Any], service: str
) -> None:
    assert server["users"][service]["roles"] == [{"role": "readWrite", "db": _db(service)}]


def test_the_audit_may_only_insert_and_read_its_own_database(server: dict[str, Any]) -> None:
    [grant] = server["users"]["audit"]["roles"]
    role = server["roles"][grant["role"]]
    assert grant["db"] == "admin"  # a role defined in admin may name any database: it names one
    assert role["roles"] == []  # it inherits nothing
    for privilege in role["privileges"]:
        assert privilege["resource"] == {"db": _db("audit"), "collection": ""}
    actions = {action for privilege in role["privileges"] for action in privilege["actions"]}
    assert actions == {"insert", "find", "createIndex"}
    assert not actions & {"update", "remove", "dropCollection", "dropIndex", "collMod"}


# The privilege action MongoDB checks for each PyMongo call the audit makes.
PRIVILEGE_OF = {
    "insert_one": "insert",
    "find": "find",
    "find_one": "find",
    "create_index": "createIndex",
}


async def test_the_audit_role_grants_exactly_what_the_audit_code_calls(
    server: dict[str, Any],
) -> None:
    """The role is not a guess: every call of the audit's repository (start-up, a record, a
    redelivered record, the two reads) maps to one of its actions, and each action is used."""
    trail = AuditTrail(AsyncMongomockDatabase(_db("audit")))
    calls: Counter[str] = Counter()
    trail.events = Recording(trail.events, calls)  # type: ignore[assignment]
    trail.broker_events = Recording(trail.broker_events, calls)  # type: ignore[assignment]
    await trail.create_indexes()
    for _ in range(2):  # the second one is a redelivery: it reads the record that stands
        await trail.record({"_id": "e1/payment", "order_id": "o1", "occurred_at": 1})
        await trail.record_broker_event({"_id": "b1", "at": 1})
    await trail.order_trail("o1")
    await trail.latest_broker_events(5)
    assert calls.keys() <= set(PRIVILEGE_OF), (
        f"map {calls.keys() - set(PRIVILEGE_OF)} to its privilege action"
    )
    [grant] = server["users"]["audit"]["roles"]
    granted = {a for p in server["roles"][grant["role"]]["privileges"] for a in p["actions"]}
    assert {PRIVILEGE_OF[call] for call in calls} == granted


def test_the_operator_writes_only_where_the_cli_writes_and_reads_the_rest(
    server: dict[str, Any],
) -> None:
    # seed (inventory), outbox retry and orders rebuild (order) write; ledger and audit read.
    assert sorted(server["users"][OPERATOR]["roles"], key=lambda r: r["db"]) == sorted(
        [
            {"role": "readWrite", "db": _db("order")},
            {"role": "readWrite", "db": _db("inventory")},
            {"role": "read", "db": _db("payment")},
            {"role": "read", "db": _db("notification")},
            {"role": "read", "db": _db("audit")},
        ],
        key=lambda r: r["db"],
    )


def test_every_password_comes_from_its_secret_file_never_from_the_script(
    server: dict[str, Any],
) -> None:
    passwords = _dev_passwords()
    assert set(passwords) == set(server["users"])  # .env has one per user, and no more
    for user, fields in server["users"].items():
        assert fields["pwd"] == passwords[user], user  # read, newline stripped
    assert sorted(server["reads"]) == sorted(_secret_files(passwords))
    text = SCRIPT.read_text(encoding="utf-8")
    assert not [pw for pw in (*passwords.values(), ENV["MONGO_ROOT_PASSWORD"]) if pw in text]


def test_a_missing_secret_file_stops_the_script() -> None:
    files = _secret_files(_dev_passwords())
    del files["/run/secrets/mongo_password_payment"]
    result = run_harness(
        HARNESS,
        {"script": SCRIPT.read_text(encoding="utf-8"), "runs": [{"files": files, "env": {}}]},
    )
    assert result.returncode != 0
    assert "mongo_password_payment" in result.stderr


def test_run_again_it_updates_the_users_with_their_new_passwords() -> None:
    first = _secret_files(_dev_passwords())
    changed = _secret_files({user: f"{user}-rotated" for user in _dev_passwords()})
    state = run_init_script({"files": first, "env": {}}, {"files": changed, "env": {}})
    assert {user: fields["pwd"] for user, fields in state["users"].items()} == {
        user: f"{user}-rotated" for user in _dev_passwords()
    }
    updated = {name for call, name in state["calls"] if call in ("updateUser", "updateRole")}
    assert updated == {*SERVICE_USERS, OPERATOR, "warrenAuditAppendOnly"}


def test_the_databases_follow_the_prefix_the_services_use() -> None:
    state = run_init_script(
        {"files": _secret_files(_dev_passwords()), "env": {"MONGO_DB_PREFIX": "shop"}}
    )
    settings = WarrenSettings(mongo_db_prefix="shop")
    for service in SERVICE_USERS:
        if service != "audit":
            assert state["users"][service]["roles"] == [
                {"role": "readWrite", "db": settings.mongo_db_of(service)}
            ]
    [privilege] = state["roles"]["warrenAuditAppendOnly"]["privileges"]
    assert privilege["resource"]["db"] == settings.mongo_db_of("audit")
