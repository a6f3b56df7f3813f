"""Every lab is a module a reader runs (`python -m labs.<broker>.<pattern> --help` says what it
shows), stands alone (nothing from Warren's services or shared package), and the Kafka
compose file is valid compose with a pinned image and a healthcheck."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LABS = REPO / "labs"
MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for path in LABS.glob("*/*.py")
    if path.name != "__init__.py"
)
COMPOSE_SCHEMA = [
    REPO.parent / "shared/compose-spec.schema.json",
    REPO / "infra/compose-spec.schema.json",
]


def test_the_labs_are_the_modules_the_chapter_names() -> None:
    chapter = (REPO / "docs/16-other-brokers.md").read_text()
    runnable = [m for m in MODULES if m != "labs.sqs.moto_server"]
    assert len(runnable) == 10, runnable
    for module in runnable:
        assert f"-m {module}" in chapter, f"docs/16-other-brokers.md does not show {module}"


def test_every_test_the_chapter_names_exists() -> None:
    chapter = (REPO / "docs/16-other-brokers.md").read_text()
    tests = "".join(path.read_text() for path in (REPO / "tests/labs").glob("test_*.py"))
    named = set(re.findall(r"`(test_\w+)`", chapter)) | set(re.findall(r"::(test_\w+)", chapter))
    named |= {
        m for path in LABS.rglob("*.py") for m in re.findall(r"::(test_\w+)", path.read_text())
    }
    assert len(named) > 10, named
    for name in sorted(named):
        assert f"def {name}(" in tests, f"{name} is named in the docs but is no test"


@pytest.mark.parametrize("module", MODULES)
def test_each_lab_explains_itself_with_help(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {module}" in result.stdout


def test_the_labs_import_nothing_from_warren() -> None:
    for path in LABS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"services", "shared", "cli"}, (
                    f"{path.relative_to(REPO)} imports {name}: the labs stand alone"
                )


def test_the_kafka_compose_file_pins_its_image_and_checks_its_health() -> None:
    compose = yaml.safe_load((LABS / "kafka/docker-compose.yml").read_text())
    kafka = compose["services"]["kafka"]

    assert kafka["image"] == "apache/kafka:3.9.1"
    assert kafka["healthcheck"]["test"][0] == "CMD-SHELL"
    assert kafka["ports"] == ["127.0.0.1:9092:9092"]  # the tests' default KAFKA_BOOTSTRAP
    assert kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:9092"


def test_the_kafka_compose_file_is_valid_compose() -> None:
    schema = next(path for path in COMPOSE_SCHEMA if path.exists())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--schemafile", str(schema),
         str(LABS / "kafka/docker-compose.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
