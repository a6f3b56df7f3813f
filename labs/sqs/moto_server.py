"""moto in server mode: an SQS- and SNS-compatible HTTP endpoint on this machine, for the labs.

moto is an emulator. It answers SQS's API the way SQS does (visibility timeouts, redrive
policies, FIFO groups, deduplication), which is what the labs show; it says nothing about how
fast, how distributed or how durable the real service is.

Run one by hand: .venv/bin/python -m labs.sqs.moto_server [--port 5999], then point the labs at
it with SQS_ENDPOINT=http://127.0.0.1:5999.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from labs.common import SQS_ENDPOINT, free_port, lab_parser

# moto accepts any credentials; boto3 only needs some to sign with.
CREDENTIALS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "lab",
    "aws_secret_access_key": "lab",
}


class MotoServer:
    """`python -m moto.server` as a child process, stopped by its PID."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> str:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto did not start on {self.endpoint}: {self.tail()}")
            time.sleep(0.05)
        return self.endpoint

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


@contextmanager
def sqs_endpoint(endpoint: str | None = SQS_ENDPOINT) -> Iterator[str]:
    """The endpoint given (SQS_ENDPOINT), or a moto server started for the block."""
    if endpoint:
        yield endpoint
        return
    server = MotoServer()
    try:
        yield server.start()
    finally:
        server.stop()


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for `sqs` or `sns` at `endpoint` (threads may share it)."""
    return boto3.client(service, endpoint_url=endpoint, **CREDENTIALS)


def main() -> None:
    parser = lab_parser(__doc__, __spec__)
    parser.add_argument("--port", type=int, default=5999, help="port (default: %(default)s)")
    args = parser.parse_args()
    server = MotoServer(args.port)
    print(f"moto serves SQS and SNS on {server.start()} (Ctrl-C stops it)")
    try:
        assert server.process is not None
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
