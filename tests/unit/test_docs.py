"""The tutorial builds: every page, every included code section, no warnings (--strict).

Code on the pages is included from the source files between ``--8<-- [start:NAME]`` /
``[end:NAME]`` marker comments, and ``check_paths`` makes a missing file or section an error,
so removing or renaming a marker fails this test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def test_the_tutorial_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        print(result.stderr)
    assert result.returncode == 0, result.stderr


def test_every_chapter_includes_code_from_the_repository() -> None:
    """Each chapter shows code included from the source files, not a pasted copy."""
    chapters = [
        *sorted((REPO_ROOT / "docs").glob("[0-9]*.md")),
        REPO_ROOT / "docs/mongodb-stand-in.md",
    ]
    assert chapters
    for chapter in chapters:
        assert '--8<-- "' in chapter.read_text(), f"{chapter.name} includes no code"
