"""The compose rehearsal (`make compose-rehearsal`) fails when compose and the code disagree.

CI runs the rehearsal itself (it passes: an order placed through the published port reaches
CONFIRMED). This test proves the rehearsal can fail: with one variable taken out of
docker-compose.yml, the app containers fall back to the code's defaults (127.0.0.1), which in a
container -- and in the rehearsal's network namespace -- is nobody.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support.system import rabbitmqctl_command

REPO = Path(__file__).resolve().parents[2]


def test_the_rehearsal_fails_when_compose_loses_a_variable(rabbit_url: str, tmp_path: Path) -> None:
    rabbitmqctl = rabbitmqctl_command()
    if rabbitmqctl is None or shutil.which("ip") is None:
        pytest.skip("the rehearsal needs root, rabbitmqctl and iproute2")
    compose = (REPO / "docker-compose.yml").read_text()
    line = "  MONGO_URL: mongodb://mongo:27017\n"
    assert compose.count(line) == 1
    (tmp_path / "docker-compose.yml").write_text(compose.replace(line, ""))
    shutil.copy(REPO / ".env", tmp_path / ".env")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compose_rehearsal.py"),
            "--compose-file",
            str(tmp_path / "docker-compose.yml"),
            "--broker-port",
            str(urlparse(rabbit_url).port or 5672),
            "--rabbitmqctl",
            " ".join(rabbitmqctl),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "FAILED: seed exited with 1" in result.stdout, result.stdout[-2000:]
    assert "127.0.0.1:27017" in result.stdout  # the default it fell back to, refused
