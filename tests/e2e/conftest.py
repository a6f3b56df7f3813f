from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pymongo import AsyncMongoClient

from shared.testing.system import System, api_client, open_mongo, running_system


# Package scope: the system stops when the e2e tests are done, before tests/faults starts a
# system of its own -- two systems on one broker would consume each other's messages.
@pytest.fixture(scope="package")
async def system(
    rabbit_url: str, mongo_url: str, tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> AsyncIterator[System]:
    """The whole system, started once for the e2e tests: four services, two payment replicas,
    the Celery worker and an SMTP sink, against the real RabbitMQ."""
    run_dir = tmp_path_factory.mktemp("system")
    async with running_system(rabbit_url, mongo_url, run_dir, f"e2e{run_id}") as running:
        yield running


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(system, timeout=10.0) as client:
        yield client


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[AsyncMongoClient]:
    async with open_mongo(mongo_url) as client:
        yield client
