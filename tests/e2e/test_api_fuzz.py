"""Fuzz the order API from its own OpenAPI schema with schemathesis: whatever a client sends,
the answer is never a 5xx, and every answer matches what the schema documents."""

from __future__ import annotations

import subprocess

from tests.support.system import BIN, System


def test_the_api_answers_every_generated_request_with_a_documented_non_5xx_response(
    system: System,
) -> None:
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{system.api}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "7",  # reproducible: the same requests every run
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
