"""The compose stack's mongosh scripts, run under Node as mongosh would run them, against a
recorded server: a harness (JavaScript) reads a JSON payload on its standard input, runs the
script in a context of its own and prints what the recorded server holds afterwards
(tests/unit/test_mongo_users.py, tests/unit/test_mongo_replica_set.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

NODE = shutil.which("node")


def run_harness(harness: str, payload: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``node -e harness``, ``payload`` as JSON on its standard input."""
    return subprocess.run(
        [str(NODE), "-e", harness],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def harness_state(harness: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the harness printed (JSON), once it ran through."""
    result = run_harness(harness, payload)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
