"""Compose's MongoDB replica set (infra/mongo/replica-set.js), checked without a MongoDB.

No MongoDB server runs where Warren is developed. The script the one-shot jobs
``mongo-replica-set`` and ``mongo-members`` run with mongosh is run here under Node, as mongosh
would run it, against a recorded replica set that behaves as MongoDB's helpers do where the
script depends on them: ``rs.status()`` throws NotYetInitialized (94) before ``rs.initiate``,
``rs.add`` works on a primary only, a primary appears some polls after the set is initiated.
What it checks: a new volume is initiated with mongo alone, the profile cluster adds mongo-2
and mongo-3 once each, a second run changes nothing, no primary is an error; and that the
compose file, the script and every MONGO_URL agree on the set and its members. What MongoDB
itself then does (elections, initial sync, w=majority) needs a MongoDB: docs/18-scaling.md
says what was and was not run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from tests.support.deployment import MONGO_URL_OPTIONS
from tests.support.node import NODE, harness_state

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "mongo" / "replica-set.js"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
ROOT_PASSWORD = dotenv_values(REPO / ".env")["MONGO_ROOT_PASSWORD"]
ONE = "mongo:27017"
THREE = "mongo:27017,mongo-2:27017,mongo-3:27017"

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the script runs under it"
)

# A replica set as mongosh's `rs` helpers show it. `sleep` is mongosh's; each one is a poll, and
# the first member becomes primary `primary_after` polls after the set is initiated (never, if
# null). Anything else the script calls is missing here and fails the run.
HARNESS = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const state = { set: null, polls: 0, calls: [], logins: [], printed: [], busy: input.busy };
const primary = () =>
  state.set !== null && input.primary_after !== null && state.polls >= state.set.since + input.primary_after;
const rs = {
  status: () => {
    if (state.set === null) {
      const error = new Error("no replset config has been received");
      error.code = 94;
      error.codeName = "NotYetInitialized";
      throw error;
    }
    return {
      members: state.set.members.map((m, i) => ({
        name: m.host,
        stateStr: i === 0 && primary() ? "PRIMARY" : i === 0 ? "STARTUP2" : "SECONDARY",
      })),
    };
  },
  initiate: (config) => {
    if (state.set !== null) throw new Error("already initialized");
    state.calls.push(["initiate", config]);
    state.set = { id: config._id, members: config.members, since: state.polls };
  },
  conf: () => ({ _id: state.set.id, members: state.set.members }),
  add: (member) => {
    if (!primary()) throw new Error("NotWritablePrimary: rs.add on a member that is not primary");
    if (state.busy > 0) {
      state.busy -= 1;
      state.calls.push(["refused", member]);
      const error = new Error("a reconfiguration is already in progress");
      error.codeName = "ConfigurationInProgress";
      throw error;
    }
    state.calls.push(["add", member]);
    state.set.members.push({ _id: state.set.members.length, ...member });
  },
};
const admin = { auth: (user, password) => state.logins.push([user, password]) };
const db = { getSiblingDB: (name) => { if (name !== "admin") throw new Error(name); return admin; } };
const fs = { readFileSync: (path) => {
  if (!(path in input.files)) throw new Error(`ENOENT: no such file ${path}`);
  return input.files[path];
} };
const require_ = (name) => { if (name !== "fs") throw new Error(name); return fs; };
let failure = null;
for (const members of input.runs) {
  const context = {
    db, rs, require: require_, process: { env: { MONGO_MEMBERS: members } },
    print: (text) => state.printed.push(text), sleep: () => { state.polls += 1; },
  };
  try {
    vm.runInNewContext(input.script, context, { filename: "replica-set.js" });
  } catch (error) {
    failure = String(error.message);
    break;
  }
}
process.stdout.write(JSON.stringify({ ...state, failure }));
"""


def run_script(*runs: str, primary_after: int | None = 3, busy: int = 0) -> dict[str, Any]:
    """Run the script once per entry of ``runs`` (its MONGO_MEMBERS), on one recorded set whose
    primary refuses the first ``busy`` rs.add calls (another reconfiguration under way)."""
    files = {"/run/secrets/mongo_root_password": f"{ROOT_PASSWORD}\n"}
    payload = {
        "script": SCRIPT.read_text(encoding="utf-8"),
        "runs": list(runs),
        "files": files,
        "primary_after": primary_after,
        "busy": busy,
    }
    return harness_state(HARNESS, payload)


def test_the_script_parses() -> None:
    result = subprocess.run([str(NODE), "--check", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_new_volume_becomes_a_replica_set_of_mongo_alone_as_root() -> None:
    state = run_script(ONE)
    assert state["failure"] is None
    assert state["calls"] == [["initiate", {"_id": "rs0", "members": [{"_id": 0, "host": ONE}]}]]
    assert state["logins"] == [["root", ROOT_PASSWORD]]
    assert state["polls"] >= 3  # it waited for the primary
    assert state["printed"][-1] == "warren: replica set rs0: mongo:27017 PRIMARY"


def test_the_cluster_profile_adds_each_other_member_once() -> None:
    state = run_script(ONE, THREE)
    assert state["failure"] is None
    assert [call[0] for call in state["calls"]] == ["initiate", "add", "add"]
    assert [call[1] for call in state["calls"][1:]] == [
        {"host": "mongo-2:27017"},
        {"host": "mongo-3:27017"},
    ]


def test_members_are_added_once_the_new_set_has_its_primary() -> None:
    """rs.add is a reconfiguration, which only a primary takes: on a set just initiated the
    script waits for one first (the recorded set refuses rs.add before)."""
    state = run_script(THREE, primary_after=5)
    assert state["failure"] is None
    assert [call[0] for call in state["calls"]] == ["initiate", "add", "add"]
    assert state["polls"] >= 5


def test_a_member_refused_during_another_reconfiguration_is_added_again() -> None:
    state = run_script(ONE, THREE, busy=2)
    assert state["failure"] is None
    assert [call[0] for call in state["calls"]] == ["initiate", "refused", "refused", "add", "add"]
    assert [call[1]["host"] for call in state["calls"] if call[0] == "add"] == [
        "mongo-2:27017",
        "mongo-3:27017",
    ]


def test_a_second_run_changes_nothing() -> None:
    state = run_script(ONE, THREE, ONE, THREE)
    assert [call[0] for call in state["calls"]] == ["initiate", "add", "add"]


def test_no_primary_in_time_fails_the_job_and_adds_no_member() -> None:
    state = run_script(THREE, primary_after=None)
    assert state["failure"] == "warren: replica set rs0: no primary after 60 s"
    assert [call[0] for call in state["calls"]] == ["initiate"]


def test_no_root_password_fails_before_touching_the_set() -> None:
    payload_script = SCRIPT.read_text(encoding="utf-8").replace(
        "/run/secrets/mongo_root_password", "/run/secrets/missing"
    )
    state = harness_state(
        HARNESS,
        {"script": payload_script, "runs": [ONE], "files": {}, "primary_after": 0, "busy": 0},
    )
    assert "ENOENT" in state["failure"] and state["calls"] == []


# --- the compose file agrees with the script -------------------------------------------------


def _members_of(job: str) -> str:
    return SERVICES[job]["environment"]["MONGO_MEMBERS"]


def _replica_set_members() -> list[str]:
    """The services that run mongod as a member of rs0."""
    return [
        name
        for name, svc in SERVICES.items()
        if svc.get("image", "").startswith("mongo:") and svc.get("command") == ["mongod"]
    ]


def test_every_member_runs_mongod_in_rs0_with_the_key_copied_for_mongod() -> None:
    assert _replica_set_members() == ["mongo", "mongo-2", "mongo-3"]
    for name in _replica_set_members():
        svc = SERVICES[name]
        shell, flag, script, _ = svc["entrypoint"]
        assert (shell, flag) == ("sh", "-c"), name
        # The secret copied owner-only (mongod refuses a key others may read), then the image's
        # own entrypoint, which creates root at a new volume's first start.
        assert script.startswith("install -m 400 /run/secrets/mongo_replica_set_key "), name
        assert 'exec docker-entrypoint.sh "$$@" --replSet rs0 --keyFile ' in script, name
        assert "mongo_replica_set_key" in [
            s if isinstance(s, str) else s["source"] for s in svc["secrets"]
        ]
    # The other two start empty and copy everything (root and the users too) from the primary.
    for name in ("mongo-2", "mongo-3"):
        assert "environment" not in SERVICES[name], name
        assert SERVICES[name]["profiles"] == ["cluster"]
        assert not [v for v in SERVICES[name]["volumes"] if "initdb" in v], name


def test_the_jobs_name_the_members_compose_runs() -> None:
    assert _members_of("mongo-replica-set") == ONE
    assert _members_of("mongo-members") == THREE
    assert [host.split(":")[0] for host in THREE.split(",")] == _replica_set_members()
    for job in ("mongo-replica-set", "mongo-members"):
        svc = SERVICES[job]
        assert svc["entrypoint"][-2:] == [
            "mongodb://mongo:27017/?directConnection=true",
            "/warren/replica-set.js",
        ]
        assert "./infra/mongo/replica-set.js:/warren/replica-set.js:ro" in svc["volumes"]
        assert svc["secrets"] == ["mongo_root_password"]
        assert svc["restart"] == "no"
    assert SERVICES["mongo-members"]["profiles"] == ["cluster"]
    assert "profiles" not in SERVICES["mongo-replica-set"]


def test_every_mongo_url_asks_for_the_set_and_majority_journaled_retryable_writes() -> None:
    urls = {
        name: svc["environment"]["MONGO_URL"]
        for name, svc in SERVICES.items()
        if "MONGO_URL" in (svc.get("environment") or {})
    }
    assert len(urls) >= 8
    for name, url in urls.items():
        options = dict(re.findall(r"[?&]([^=&]+)=([^&]*)", url))
        assert options == MONGO_URL_OPTIONS, name
