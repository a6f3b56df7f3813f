"""Where the tests find the broker's Prometheus endpoint."""

from __future__ import annotations

import os

# RabbitMQ's Prometheus plugin: the machine's RabbitMQ 3.x on 15692, the 4.x test node on 15693
# (make test-rabbitmq4 says so).
BROKER_METRICS = os.environ.get("WARREN_TEST_RABBITMQ_METRICS", "127.0.0.1:15692")

# Each metric family docs/13-monitoring.md names -> the test system's processes that serve it.
EXPECTED = {
    "warren_messages": ("inventory", "payment_1", "order", "notification", "audit"),
    "warren_handler_duration_seconds": ("inventory", "order", "audit"),
    "warren_saga_duration_seconds": ("order",),
    "warren_orders_finished": ("order",),
    "warren_outbox_pending": ("order",),
    "warren_outbox_oldest_pending_age_seconds": ("order",),
    "warren_rpc_duration_seconds": ("order",),
    "warren_emails": ("notification",),
    # FastStream's own, given the meter provider: per destination, consume and publish.
    "messaging_process_duration_seconds": ("inventory", "order"),
    "messaging_publish_duration_seconds": ("inventory", "order"),
}
