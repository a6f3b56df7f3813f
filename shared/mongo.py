"""MongoDB through PyMongo's async API (``AsyncMongoClient``), the successor of Motor."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.settings import WarrenSettings

# --8<-- [start:client]
# Every client Warren makes, async or not, fails fast instead of hanging.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 3000,
    "connectTimeoutMS": 3000,
    # No operation waits for ever on a database that stalls: it fails, and is retried.
    "timeoutMS": 10_000,
    "tz_aware": True,
}


def make_client(settings: WarrenSettings) -> AsyncMongoClient:
    """One client per process; it pools connections and reconnects by itself."""
    return AsyncMongoClient(settings.mongo_url, appname=settings.service_name, **CLIENT_OPTIONS)


def service_database(client: AsyncMongoClient, settings: WarrenSettings) -> AsyncDatabase:
    """The service's own database: no service reads another's."""
    return client[settings.mongo_db]
    # --8<-- [end:client]


# --8<-- [start:insert-first]
async def insert_first(
    collection: AsyncCollection, document: dict[str, Any]
) -> dict[str, Any] | None:
    """Insert ``document`` unless one with its ``_id`` exists; return the one that stands.

    The first writer wins and a later one reads the winner back: Warren's one way of writing
    something exactly once (an upsert with ``$setOnInsert`` would do on MongoDB, but not on the
    stand-in). None only if the winner vanished in between (an expired document).
    """
    try:
        await collection.insert_one(document)
    except DuplicateKeyError:
        return await collection.find_one({"_id": document["_id"]})
    return document
    # --8<-- [end:insert-first]


async def ping(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
    except Exception:
        return False
    return True
