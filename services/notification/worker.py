"""The Celery side of notification: workers that deliver each email over SMTP, once.

Run a worker with ``python -m services.notification.worker`` (``--ping`` checks one answers).

Delivery is at-least-once with one email per notification in practice: a worker that dies
after the SMTP server accepted the message but before it was marked sent will send it again
after the claim expires; ``Message-ID`` (the notification id) lets a mail system drop that copy.

Celery's defaults lose work on a crash, so this app turns them around:

* ``task_acks_late`` -- ack after the task ran, not before;
* ``task_reject_on_worker_lost`` -- a worker killed mid-task puts the task back;
* ``worker_prefetch_multiplier = 1`` -- a worker holds one task at a time (fair dispatch);
* ``confirm_publish`` -- enqueueing waits for RabbitMQ's publisher confirm.

With acks late a task can run twice, so the task itself is idempotent: it claims the
notification (``queued`` -> ``sending``) in one atomic update and marks it ``sent`` after the
SMTP server accepted it. Every email carries ``Message-ID: <notification id@warren>``.
"""

from __future__ import annotations

import os
import smtplib
import sys
import threading
import time
import uuid
from email.message import EmailMessage
from functools import cache
from typing import Any

import structlog
import typer
from celery import Celery, Task, signals
from kombu import Exchange, Queue
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from tenacity import retry, stop_after_attempt, wait_exponential

from services.notification.settings import NotificationSettings
from shared import topology
from shared.clock import utcnow_iso
from shared.mongo import CLIENT_OPTIONS
from shared.observability import setup_observability

TASK_NAME = "notification.send_email"
# A claim older than this belongs to a worker that died mid-send: deliver again.
STALE_CLAIM_SECONDS = 60.0

log = structlog.get_logger(__name__)


def email_queue() -> Queue:
    """Celery's view of ``notification.emails``: same arguments as the topology declares."""
    declared = topology.NOTIFICATION_EMAILS.queue
    return Queue(
        declared.name,
        exchange=Exchange(""),  # the default exchange: routing key = queue name
        routing_key=declared.name,
        durable=True,
        queue_arguments=dict(declared.arguments or {}),
    )


@cache
def _collection(mongo_url: str, db_name: str) -> Any:
    # One client per worker process, made after the fork (PyMongo clients are not fork-safe).
    client: MongoClient = MongoClient(mongo_url, appname="notification-worker", **CLIENT_OPTIONS)
    return client[db_name]["notifications"]


# --8<-- [start:claim]
def _claim(notifications: Any, notification_id: str, task_id: str) -> dict[str, Any] | None:
    """Take the notification for this task: queued, already ours (a redelivery or retry of
    the same task), or abandoned by a worker that died mid-send. None if someone else has it."""
    now = time.time()
    for condition in (
        {"state": "queued"},
        {"state": "sending", "claimed_by": task_id},
        {"state": "sending", "claimed_at": {"$lt": now - STALE_CLAIM_SECONDS}},
    ):
        claimed = notifications.find_one_and_update(
            {"_id": notification_id, **condition},
            {"$set": {"state": "sending", "claimed_at": now, "claimed_by": task_id}},
        )
        if claimed is not None:
            return claimed
    return None


def deliver(notification_id: str, settings: NotificationSettings, task_id: str = "") -> str:
    """Send one notification's email unless it was sent already. Returns what happened."""
    notifications = _collection(settings.mongo_url, settings.mongo_db)
    claimed = _claim(notifications, notification_id, task_id or uuid.uuid4().hex)
    if claimed is None:
        current = notifications.find_one({"_id": notification_id}, {"state": 1})
        if current is None:
            return "unknown"
        return "already sent" if current["state"] == "sent" else "being sent by another task"
    # --8<-- [end:claim]

    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = claimed["to"]
    message["Subject"] = claimed["subject"]
    message["Message-ID"] = f"<{notification_id}@warren>"
    message["X-Warren-Order-Id"] = claimed["order_id"]
    message["X-Warren-Event-Type"] = claimed["event_type"]
    message.set_content(claimed["body"])
    try:
        send_message(message, settings.smtp_host, settings.smtp_port)
    except Exception:
        # Not sent: give the claim back so that the retry (or any task) can take it.
        notifications.update_one(
            {"_id": notification_id, "state": "sending"}, {"$set": {"state": "queued"}}
        )
        raise
    try:
        _mark_sent(notifications, notification_id)
    except PyMongoError as exc:
        # Sent, but not recorded: failing the task now would retry it and send it again.
        log.error(
            "email sent but not marked sent", notification_id=notification_id, error=repr(exc)
        )
    log.info("email sent", notification_id=notification_id, order_id=claimed["order_id"])
    return "sent"


# --8<-- [start:smtp-connection]
_smtp = threading.local()  # each worker thread (or process) keeps its own connection


def send_message(message: EmailMessage, host: str, port: int) -> None:
    """Send over a kept-open SMTP connection, checked first; once, never retried here.

    Connecting, greeting (EHLO) and QUIT for every email cost more than the email itself, so
    each worker keeps its connection. A kept connection may have been closed by the server
    while idle: a ``NOOP`` finds out before the email is sent, and a new connection replaces
    it. The send itself is not repeated on failure: a connection that breaks after ``DATA``
    may have delivered the message, and only the task's retry (after the claim is given
    back) decides to send again.
    """
    connections: dict[tuple[str, int], smtplib.SMTP] = _smtp.__dict__.setdefault("open", {})
    smtp = connections.pop((host, port), None)
    if smtp is not None:
        try:
            alive = smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            alive = False
        if not alive:
            smtp.close()
            smtp = None
    if smtp is None:
        smtp = smtplib.SMTP(host, port, timeout=10)
    try:
        smtp.send_message(message)
    except Exception:
        smtp.close()  # a refusal or a broken conversation: start clean next time
        raise
    connections[(host, port)] = smtp
    # --8<-- [end:smtp-connection]


@retry(stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.2, max=3), reraise=True)
def _mark_sent(notifications: Any, notification_id: str) -> None:
    """Record the send; retried, because failing here would send the email again later."""
    notifications.update_one(
        {"_id": notification_id}, {"$set": {"state": "sent", "sent_at": utcnow_iso()}}
    )


# --8<-- [start:make-celery]
def make_celery(settings: NotificationSettings) -> Celery:
    app = Celery("warren-notification", broker=settings.rabbit_url)
    queue = email_queue()
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that failed for good is rejected, not acked: it goes to notification.emails.dlq.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        task_queues=[queue],
        task_default_queue=queue.name,
        task_routes={TASK_NAME: {"queue": queue.name}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
    )

    @app.task(
        bind=True,
        name=TASK_NAME,
        # SMTP trouble and a database that is briefly away are both worth waiting out.
        autoretry_for=(smtplib.SMTPException, OSError, PyMongoError),
        retry_backoff=2,
        retry_backoff_max=60,
        max_retries=8,
    )
    def send_email(self: Task, notification_id: str) -> str:
        return deliver(notification_id, settings, task_id=self.request.id or "")

    return app
    # --8<-- [end:make-celery]


# --8<-- [start:instrument-worker]
def _instrument_worker(**_: Any) -> None:
    # Runs in each worker process after the fork. Logging and the tracer provider came across
    # the fork from main(); Celery's task hooks must be installed in the process that runs tasks.
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
    # --8<-- [end:instrument-worker]


def main(
    ping: bool = typer.Option(False, "--ping", help="Exit 0 if a worker answers a ping, else 1."),
) -> None:
    """Run a Celery worker that delivers notification emails (queue notification.emails)."""
    settings = NotificationSettings()
    setup_observability("notification-worker", level=settings.log_level, fmt=settings.log_format)
    app = make_celery(settings)
    if ping:
        replies = app.control.ping(timeout=2.0)
        sys.exit(0 if replies else 1)
    # --8<-- [start:connect-worker-init]
    signals.worker_process_init.connect(_instrument_worker, weak=False)
    # --8<-- [end:connect-worker-init]
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--queues",
            topology.NOTIFICATION_EMAILS.name,
            "--hostname",
            f"emails@{os.uname().nodename}.{os.getpid()}",
        ]
    )


if __name__ == "__main__":
    typer.run(main)
