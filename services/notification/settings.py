from typing import Literal

from pydantic import Field

from shared.settings import WarrenSettings


class NotificationSettings(WarrenSettings):
    service_name: str = "notification"
    port: int = 8003
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    mail_from: str = "Warren shop <shop@warren.example>"
    # Customers have no address book here: mail goes to <customer_id>@<this domain>.
    customer_mail_domain: str = "customers.warren.example"
    # The mail system's API (Mailpit's, or `warren mail-sink`'s): asked whether an email whose
    # worker died mid-send arrived after all, before it is sent again. Empty: nothing to ask.
    mail_api_url: str = "http://127.0.0.1:8025"
    # Celery worker processes (each takes one email at a time: prefetch multiplier 1).
    worker_concurrency: int = Field(default=2, ge=1)
    # A claim older than this belongs to a worker that died or froze mid-send: taken over.
    # Longer than any SMTP conversation (the SMTP client's timeout is 10 s).
    stale_claim_seconds: float = Field(default=60.0, gt=10)
    # How often the service looks for emails whose task was lost (and enqueues them again).
    sweep_seconds: float = Field(default=15.0, gt=0)
    # How long an order's event waits for the one before it (its email comes second): past
    # it, the gap is reported and the email sent anyway (services/notification/handlers.py).
    order_wait_seconds: float = Field(default=60.0, gt=0, le=600)
    # How the order events reach this service: "queue", one queue that its replicas compete
    # for (the order is put back together by the sequence numbers above); "partitions", four
    # partitions by order id, each with one active consumer (docs/17-keeping-order.md).
    order_events_via: Literal["queue", "partitions"] = "queue"
    # How often it puts its order events back on that way: a `warren topology provision` (or
    # the compose broker's boot) binds the single queue again (services/notification/app.py).
    order_events_route_check_seconds: float = Field(default=30.0, gt=0)
