"""MongoDB through PyMongo's async API (``AsyncMongoClient``), the successor of Motor."""

from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared.settings import WarrenSettings


# --8<-- [start:client]
def make_client(settings: WarrenSettings) -> AsyncMongoClient:
    """One client per process; it pools connections and reconnects by itself."""
    return AsyncMongoClient(
        settings.mongo_url,
        serverSelectionTimeoutMS=3000,
        connectTimeoutMS=3000,
        # No operation waits for ever on a database that stalls: it fails, and is retried.
        timeoutMS=10_000,
        tz_aware=True,
        appname=settings.service_name,
    )


def service_database(client: AsyncMongoClient, settings: WarrenSettings) -> AsyncDatabase:
    """The service's own database: no service reads another's."""
    return client[settings.mongo_db]
    # --8<-- [end:client]


async def ping(client: AsyncMongoClient) -> bool:
    try:
        await client.admin.command("ping")
    except Exception:
        return False
    return True
