"""Kafka labs: the same two patterns with FastStream's KafkaBroker (aiokafka).

No Kafka runs where Warren is developed: `docker compose -f labs/kafka/docker-compose.yml up -d`
starts a single-node KRaft broker on localhost:9092, and the tests run where one answers.
"""

from __future__ import annotations

import socket

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """Whether the first bootstrap server accepts a TCP connection."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host or "localhost", int(port or 9092)), timeout=timeout).close()
    except OSError:
        return False
    return True


async def delete_topics(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(topics))
    finally:
        await admin.close()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()
