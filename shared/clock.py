"""Timestamps as fixed-width ISO-8601 UTC strings (``2026-11-26T21:34:41.939000Z``).

Documents written by ``$set`` keep times as these strings, not BSON dates: the MongoDB
stand-in stores a ``$set`` datetime as a string anyway, and a fixed width sorts correctly
as text on both it and MongoDB. Inserted event documents keep real dates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow_iso() -> str:
    return iso(datetime.now(UTC))


# --8<-- [start:database-clock]
class DatabaseClock:
    """Lease time from one clock for every process: the database server's.

    Two processes comparing leases by their own wall clocks disagree by their skew (containers
    on several hosts, a clock stepped by NTP). This clock reads the server's time once at
    start-up (``hello`` answers with ``localTime``) and runs on from there on the process's
    monotonic clock, which never jumps. Until :meth:`sync` is called it is the local clock.
    """

    def __init__(self) -> None:
        self._base, self._since = time.time(), time.monotonic()

    def now(self) -> float:
        """Seconds since the epoch, on the database's clock."""
        return self._base + (time.monotonic() - self._since)

    def _set(self, hello: dict[str, Any], sent: float) -> None:
        # Half the round trip: the server read its clock about half-way through.
        self._since = (sent + time.monotonic()) / 2
        server_time: datetime = hello["localTime"]
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        self._base = server_time.timestamp()

    async def sync(self, client: Any) -> None:
        """Take the time from the database (an async PyMongo client)."""
        sent = time.monotonic()
        self._set(await client.admin.command("hello"), sent)

    def sync_blocking(self, client: Any) -> None:
        """The same, for a synchronous PyMongo client (the Celery worker)."""
        sent = time.monotonic()
        self._set(client.admin.command("hello"), sent)
        # --8<-- [end:database-clock]
