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
    # Celery worker processes (each takes one email at a time: prefetch multiplier 1).
    worker_concurrency: int = Field(default=2, ge=1)
