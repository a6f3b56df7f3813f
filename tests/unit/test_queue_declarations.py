"""No code path declares a transient queue that is not exclusive.

RabbitMQ 4.3 refuses such a queue by default (the deprecated feature
``transient_nonexcl_queues``), and aio-pika's ``declare_queue`` and FastStream's ``RabbitQueue``
both default to ``durable=False, exclusive=False``. So every declaration must say which one it
is: ``durable=True``, ``exclusive=True``, or ``passive=True`` (only looks). The RabbitMQ 4.x run
(`make test-rabbitmq4`) refuses such a queue too; this check catches the ones no test executes,
such as the benchmark's.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    path
    for folder in ("services", "shared", "cli", "loadtests", "labs", "tests", "scripts")
    for path in (ROOT / folder).rglob("*.py")
)
SAYS_WHICH = {"durable", "exclusive", "passive"}


def _receiver(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        value = func.value
        if isinstance(value, ast.Name):
            return value.id
        if isinstance(value, ast.Attribute):
            return value.attr
    return ""


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _says_which(call: ast.Call) -> bool:
    return any(
        keyword.arg in SAYS_WHICH
        and isinstance(keyword.value, ast.Constant)
        and keyword.value.value is True
        for keyword in call.keywords
    )


def transient_shared_declarations(source: str) -> list[int]:
    """Line numbers of the queue declarations that neither are durable nor exclusive."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node)
        # FastStream's broker.declare_queue(RabbitQueue(...)) takes a queue object, checked
        # where it is built. Anything else is aio-pika's channel.declare_queue(name, ...).
        declares = name == "RabbitQueue" or (
            name == "declare_queue" and _receiver(node) != "broker"
        )
        if declares and not _says_which(node):
            found.append(node.lineno)
    return sorted(found)


def test_the_check_finds_a_transient_queue_that_is_not_exclusive() -> None:
    # A text file, not code: the sample's bad declarations must not count as the project's own.
    sample = (Path(__file__).parent / "samples" / "queue_declarations.txt").read_text()
    assert transient_shared_declarations(sample) == [2, 3]


def test_no_queue_is_declared_transient_and_shared() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in SOURCES
        if (lines := transient_shared_declarations(path.read_text()))
    }
    assert len(SOURCES) > 50  # the walk found the code
    assert not offenders, f"neither durable nor exclusive (RabbitMQ 4.3 refuses): {offenders}"
