"""The tutorial's commands print what the chapters say they print.

``scripts/tutorial_check.py`` starts the whole system as ``make run`` does (in a scratch copy of
the tree, on the Procfile's ports), runs every ```bash block of the chapters that is marked for
checking, in order, and checks the key line of each output. This test runs it as a reader's
``make tutorial-check`` would, against the broker in ``RABBIT_URL``, and shows its report when a
chapter has drifted from the code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORDER_API_PORT = 8000


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_every_checked_command_of_the_tutorial_prints_what_its_chapter_says() -> None:
    if port_taken(ORDER_API_PORT):
        pytest.skip(
            f"port {ORDER_API_PORT} is taken (make run?): the tutorial's commands need the "
            "system on the Procfile's ports; stop it, or run `make tutorial-check ARGS=--running`"
        )
    env = {
        **os.environ,
        "RABBIT_URL": os.environ.get("RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    }

    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "tutorial_check.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
