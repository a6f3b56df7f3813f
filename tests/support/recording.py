"""A collection (or any object) whose methods are counted as the code under test uses them."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Recording:
    """Stands in for ``target`` and counts each attribute asked of it -- a method's count is how
    often it was called. Several recordings may share one ``calls``."""

    def __init__(self, target: Any, calls: Counter[str] | None = None) -> None:
        self._target = target
        self.calls: Counter[str] = Counter() if calls is None else calls

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._target, name)
