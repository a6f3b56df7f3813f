"""Shared fixtures: the real RabbitMQ, the MongoDB stand-in (or MONGO_URL), fresh databases.

Environment:
* ``RABBIT_URL`` -- the broker to test against (default: the local one, guest/guest).
* ``MONGO_URL``  -- a real MongoDB to test against; without it the tests start ``nx-27017``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse

import aiormq
import pytest
from pymongo import AsyncMongoClient

from shared.testing.memory_mongo import AsyncMongomockDatabase
from shared.testing.system import mongo_standin, mongo_url_of, open_mongo


def _rabbit_url() -> str:
    return os.environ.get("RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pytest_report_header() -> str:
    """Name the broker the tests run against: its version comes from the AMQP handshake."""

    async def ask() -> str:
        connection = await aiormq.connect(_rabbit_url())
        try:
            version = connection.server_properties.get("version", "?")
            return f"{connection.server_properties.get('product', 'broker')} {version}"
        finally:
            await connection.close()

    url = urlparse(_rabbit_url())
    try:
        server = asyncio.run(ask())
    except Exception as exc:  # the unit tests run without a broker
        server = f"not reachable ({type(exc).__name__})"
    return f"broker: {server} at {url.hostname}:{url.port or 5672}"


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    return _rabbit_url()


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB from MONGO_URL, or the stand-in started for this test session."""
    if url := os.environ.get("MONGO_URL"):
        yield url
        return
    server = mongo_standin(tmp_path_factory.mktemp("nx-27017"))
    server.start()
    try:
        yield mongo_url_of(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def run_id() -> str:
    """Tags this session's databases so runs never see each other's data."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def mongo_client(mongo_url: str) -> AsyncIterator[AsyncMongoClient]:
    async with open_mongo(mongo_url, serverSelectionTimeoutMS=5000) as client:
        yield client


# --8<-- [start:db-fixture]
@pytest.fixture(params=["wire", "oracle"])
async def db(request: pytest.FixtureRequest, mongo_client: AsyncMongoClient, run_id: str):  # type: ignore[no-untyped-def]
    """A fresh database on each backend: the stand-in over the wire, and mongomock as oracle."""
    name = f"t{run_id}_{uuid.uuid4().hex[:8]}"
    if request.param == "oracle":
        yield AsyncMongomockDatabase(name)
        return
    yield mongo_client[name]
    await mongo_client.drop_database(name)
    # --8<-- [end:db-fixture]
