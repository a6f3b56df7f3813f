"""Timestamps as fixed-width ISO-8601 UTC strings (``2026-11-26T21:34:41.939000Z``).

Documents written by ``$set`` keep times as these strings, not BSON dates: the MongoDB
stand-in stores a ``$set`` datetime as a string anyway, and a fixed width sorts correctly
as text on both it and MongoDB. Inserted event documents keep real dates.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow_iso() -> str:
    return iso(datetime.now(UTC))
