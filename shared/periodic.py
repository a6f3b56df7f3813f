"""A background loop: an action every few seconds, for the life of the service, whose failures
(the database or the broker away) are logged once -- and once more when they end -- instead of
once per round."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def every(
    seconds: float,
    action: Callable[[], Awaitable[object]],
    *,
    what: str,
    wait_first: bool = False,
) -> None:
    """Run ``action`` every ``seconds`` (after waiting them first, if ``wait_first``: a service
    that did it at start-up already). ``what`` names it in the logs: "cannot <what>"."""
    failing = False
    if wait_first:
        await asyncio.sleep(seconds)
    while True:
        try:
            await action()
        except Exception as exc:
            if not failing:
                log.warning(f"cannot {what}", error=repr(exc))
            failing = True
        else:
            if failing:
                log.info(f"can {what} again")
            failing = False
        await asyncio.sleep(seconds)
