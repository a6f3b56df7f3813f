"""Group a py-spy profile by package: which libraries a service spends its CPU in.

Record a running service under load, then summarise::

    .venv/bin/py-spy record --gil --format raw --rate 100 -d 15 -o order.txt -p <pid>
    .venv/bin/python -m loadtests.profile_summary order.txt

Each sample is charged to the innermost frame that is not the standard library (asyncio,
contextlib, threading...), so the time the event loop spends on behalf of a library counts
for that library. ``--gil`` keeps only samples that held the GIL: CPU, not waiting.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import typer

# py-spy names frames "function (path:line)", with paths relative to their sys.path entry.
_FRAME = re.compile(r"\((?P<path>.*?):\d+\)$")
_OURS = ("services/", "shared/", "cli/", "loadtests/")
# OpenTelemetry is a namespace package: py-spy shows its paths from below "opentelemetry/".
_OTEL = (
    "opentelemetry",
    "trace/",
    "sdk/",
    "context/",
    "propagate",
    "propagators/",
    "baggage/",
    "attributes/",
    "instrumentation/",
    "exporter/",
    "common/",
    "util/",
    "semconv",
    "_semconv",
    "_shared_internal",
    "metrics/",
    "resources/",
)


def _is_stdlib(path: str) -> bool:
    top = path.split("/")[0].removesuffix(".py")
    return path.startswith("<frozen") or top in _STDLIB


_STDLIB = {
    "asyncio",
    "concurrent",
    "contextlib",
    "contextvars",
    "threading",
    "queue",
    "selectors",
    "socket",
    "ssl",
    "typing",
    "functools",
    "enum",
    "abc",
    "weakref",
    "_weakrefset",
    "copy",
    "json",
    "uuid",
    "re",
    "logging",
    "email",
    "http",
    "urllib",
    "inspect",
    "dataclasses",
    "datetime",
    "collections",
    "base64",
    "hashlib",
    "traceback",
    "string",
    "types",
    "random",
    "os",
    "posixpath",
    "operator",
    "warnings",
    "linecache",
    "smtplib",
    "struct",
    "textwrap",
    "decimal",
    "numbers",
    "ipaddress",
    "mimetypes",
    "calendar",
    "zoneinfo",
}


def owner(frame: str) -> str | None:
    """The package a frame belongs to; None for the standard library."""
    match = _FRAME.search(frame)
    path = match.group("path") if match else frame
    if _is_stdlib(path):
        return None
    if path.startswith(_OURS):
        return "Warren: " + path.split("/")[0]
    if "opentelemetry" in path and path.startswith("faststream/"):
        return "opentelemetry (FastStream's middleware)"
    if path.startswith(_OTEL):
        return "opentelemetry"
    return path.split("/")[0].removesuffix(".py")


def summarise(lines: list[str]) -> tuple[Counter[str], int]:
    """Samples per package (innermost non-stdlib frame), and the total."""
    by_package: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        charged = "standard library"
        for frame in reversed(stack.split(";")):
            package = owner(frame)
            if package is not None:
                charged = package
                break
        by_package[charged] += samples
    return by_package, total


def main(
    profile: Path = typer.Argument(..., help="A py-spy profile recorded with --format raw."),
    top: int = typer.Option(15, help="How many packages to list."),
) -> None:
    """Print the share of CPU samples per package, largest first."""
    by_package, total = summarise(profile.read_text().splitlines())
    if not total:
        raise typer.BadParameter(f"{profile} holds no samples (record with --format raw)")
    typer.echo(f"{profile.name}: {total} samples")
    for package, samples in by_package.most_common(top):
        typer.echo(f"{samples * 100 / total:6.1f} %  {package}")


if __name__ == "__main__":
    typer.run(main)
