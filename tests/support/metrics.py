"""Where the tests find the broker's Prometheus endpoint."""

from __future__ import annotations

import os

# RabbitMQ's Prometheus plugin: the machine's RabbitMQ 3.x on 15692, the 4.x test node on 15693
# (make test-rabbitmq4 says so).
BROKER_METRICS = os.environ.get("WARREN_TEST_RABBITMQ_METRICS", "127.0.0.1:15692")
