"""The Celery side of notification: workers that deliver each email over SMTP, once.

Run a worker with ``python -m services.notification.worker`` (``--ping`` checks one answers).

Celery's defaults lose work on a crash, so this app turns them around:

* ``task_acks_late`` -- ack after the task ran, not before;
* ``task_reject_on_worker_lost`` -- a worker killed mid-task puts the task back;
* ``worker_prefetch_multiplier = 1`` -- a worker holds one task at a time (fair dispatch);
* ``confirm_publish`` -- enqueueing waits for RabbitMQ's publisher confirm;
* ``notification.emails`` is a quorum queue with a delivery limit, like every Warren queue: a
  task that kills its worker every time is dead-lettered after a few tries, not run for ever;
* a message that cannot even be decoded is rejected into ``notification.emails.dlq`` (Celery
  would ack it away with one log line);
* an order's emails leave in the order of its events: one that names the email it goes out
  ``after`` waits (the task retries) until that one is sent, for ``ORDER_WAIT_SECONDS`` at most.

With acks late a task can run twice, so the task itself is idempotent: it **claims** the
notification (``queued`` -> ``sending``) in one atomic update and marks it ``sent`` after the
SMTP server accepted it. A claim is never taken over while it is fresh -- not even by a
redelivery of the same task, whose first run may still be sending (a lost connection does
not stop it). A claim older than ``stale_claim_seconds`` (60 s) belongs to a worker that died or froze
mid-send: the next task (or the notification service's sweeper) takes it over, but first asks
the mail system whether the email arrived after all (``MAIL_API_URL``: Mailpit's API, or the
local sink's), so that "accepted, then the worker died before marking it sent" is marked sent,
not sent again. Every email carries ``Message-ID: <notification id@warren>``.

The duplicate that remains possible: with no mail system to ask (a plain SMTP relay), an email
accepted by the server whose worker died before marking it is sent once more, with the same
Message-ID, ``stale_claim_seconds`` later -- at most once per such crash. With one to ask, only a
worker frozen for longer than that *between its last claim check and the end of the SMTP
conversation* can send a copy beside its successor's.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import sys
import threading
import uuid
from email.message import EmailMessage
from email.utils import parseaddr
from functools import cache
from typing import Any, ClassVar

import httpx
import structlog
import typer
from celery import Celery, Task, signals
from celery.worker.consumer import Consumer
from kombu import Exchange, Queue
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from tenacity import retry, stop_after_attempt, wait_exponential

from services.notification.recipients import single_address
from services.notification.settings import NotificationSettings
from shared import topology
from shared.clock import DatabaseClock, utcnow_iso
from shared.mongo import CLIENT_OPTIONS
from shared.observability import setup_observability
from shared.tls import celery_broker

TASK_NAME = "notification.send_email"
# Stale claims of one notification (its worker died or froze mid-send) before it is failed.
MAX_TAKEOVERS = 5

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
def _claim(
    notifications: Any, notification_id: str, task_id: str, now: float, stale_after: float
) -> dict[str, Any] | None:
    """Take the notification for this task: queued, or abandoned by a worker that died or froze
    mid-send (a stale claim). Returns the notification as it was *before* (its ``state`` says
    which); None if it is sent, failed, or freshly claimed by someone -- this very task's
    earlier run included."""
    claim = {"state": "sending", "claimed_at": now, "claimed_by": task_id}
    for condition, update in (
        ({"state": "queued"}, {"$set": claim}),
        # Counted: a notification whose sending kills its worker every time ends failed.
        (
            {"state": "sending", "claimed_at": {"$lt": now - stale_after}},
            {"$set": claim, "$inc": {"takeovers": 1}},
        ),
    ):
        claimed = notifications.find_one_and_update({"_id": notification_id, **condition}, update)
        if claimed is not None:
            return claimed
    return None


def deliver(notification_id: str, settings: NotificationSettings, task_id: str = "") -> str:
    """Send one notification's email unless it was sent already. Returns what happened."""
    notifications = _collection(settings.mongo_url, settings.mongo_db)
    now = _clock(settings.mongo_url, settings.mongo_db).now()
    claimed = _claim(
        notifications,
        notification_id,
        task_id or uuid.uuid4().hex,
        now,
        settings.stale_claim_seconds,
    )
    if claimed is None:
        current = notifications.find_one({"_id": notification_id}, {"state": 1})
        if current is None:
            return "unknown"
        return {"sent": "already sent", "failed": "failed before"}.get(
            current["state"], "being sent by another task"
        )
    # --8<-- [end:claim]
    message_id = f"<{notification_id}@warren>"
    # --8<-- [start:ask-mail-system]
    if claimed["state"] == "sending" and delivered_before(message_id, settings.mail_api_url):
        # The worker that died had got the email accepted: record it, do not send it again.
        _mark_sent(notifications, notification_id)
        log.warning("stale claim: the email had arrived", notification_id=notification_id)
        return "found delivered"
    # --8<-- [end:ask-mail-system]
    if waits_for_earlier(notifications, claimed, now - settings.order_wait_seconds):
        _give_back(notifications, notification_id, now)  # and the task retries
        raise EarlierEmailPendingError(f"{notification_id} goes out after {claimed['after']}")
    if claimed["state"] == "sending" and claimed.get("takeovers", 0) + 1 >= MAX_TAKEOVERS:
        _fail(notifications, notification_id, f"its worker died {MAX_TAKEOVERS} times sending it")
        return "failed"
    try:
        message = _compose(claimed, message_id, settings)
    except (ValueError, TypeError) as exc:
        # It can never be sent (a header that cannot be written): fail it for good, visibly.
        _fail(notifications, notification_id, f"cannot build the email: {exc}")
        return "failed"
    try:
        send_message(message, settings.smtp_host, settings.smtp_port, **_envelope(message))
    except Exception as exc:
        if _refused_for_good(exc):
            # The server said no for good (5xx): retrying would only be refused again.
            _fail(notifications, notification_id, f"refused by the mail server: {exc}")
            return "failed"
        _give_back(notifications, notification_id, now)  # the retry (or any task) takes it
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


def _give_back(notifications: Any, notification_id: str, now: float) -> None:
    """Not sent now: the claim goes back, so that the task's retry (or any task) takes it."""
    notifications.update_one(
        {"_id": notification_id, "state": "sending"},
        {"$set": {"state": "queued", "touched_at": now}},
    )


class EarlierEmailPendingError(Exception):
    """The order's previous email is not sent yet: this one waits (the task retries)."""


# --8<-- [start:waits-for-earlier]
def waits_for_earlier(notifications: Any, claimed: dict[str, Any], deadline: float) -> bool:
    """Whether this email must wait for the order's previous one (``after``: recorded by the
    notification service, docs/07), still queued or being sent. Not for ever: one recorded
    before ``deadline`` (the database's clock, as ``recorded_at``) goes out anyway, and says
    so."""
    if not claimed.get("after"):
        return False
    earlier = notifications.find_one({"_id": claimed["after"]}, {"state": 1})
    if earlier is None or earlier["state"] in ("sent", "failed"):
        return False
    if claimed.get("recorded_at", deadline) > deadline:
        return True
    log.warning("sent before the email it follows", notification_id=claimed["_id"])
    return False
    # --8<-- [end:waits-for-earlier]


def _compose(
    claimed: dict[str, Any], message_id: str, settings: NotificationSettings
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    # One plain address, checked again: a notification recorded by an older Warren was not.
    message["To"] = single_address(claimed["to"])
    message["Subject"] = claimed["subject"]
    message["Message-ID"] = message_id
    message["X-Warren-Order-Id"] = claimed["order_id"]
    message["X-Warren-Event-Type"] = claimed["event_type"]
    message.set_content(claimed["body"])
    return message


def _envelope(message: EmailMessage) -> dict[str, str]:
    """Who sends it, and to whom: given to SMTP explicitly, never left to its reading of the
    headers. (``_compose`` made ``To`` one checked address.)"""
    return {"sender": parseaddr(str(message["From"]))[1], "recipient": str(message["To"])}


def _refused_for_good(exc: Exception) -> bool:
    """A permanent SMTP refusal (5xx), as opposed to a busy or unreachable server."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500


def _fail(notifications: Any, notification_id: str, reason: str) -> None:
    notifications.update_one(
        {"_id": notification_id}, {"$set": {"state": "failed", "failure": reason[:500]}}
    )
    log.error("email failed for good", notification_id=notification_id, reason=reason)


# --8<-- [start:delivered-before]
def delivered_before(message_id: str, mail_api_url: str) -> bool:
    """Has the mail system got an email with this Message-ID? (False when there is none to ask.)

    Mailpit's search API under compose; ``warren mail-sink`` answers the same call locally.
    A mail system that cannot answer right now makes the task fail and retry later: sending
    blind is what would make the duplicate.
    """
    if not mail_api_url:
        return False
    response = httpx.get(
        f"{mail_api_url.rstrip('/')}/api/v1/search",
        params={"query": f'message-id:"{message_id.strip("<>")}"'},
        timeout=5.0,
    )
    response.raise_for_status()
    return bool(response.json().get("messages"))
    # --8<-- [end:delivered-before]


@cache
def _clock(mongo_url: str, db_name: str) -> DatabaseClock:
    """Claim times on the database's clock, like the notification service's sweeper."""
    clock = DatabaseClock()
    with contextlib.suppress(PyMongoError):  # not reachable now: the local clock, until then
        clock.sync_blocking(_collection(mongo_url, db_name).database.client)
    return clock


# --8<-- [start:smtp-connection]
_smtp = threading.local()  # each worker thread (or process) keeps its own connection


def send_message(
    message: EmailMessage, host: str, port: int, *, sender: str, recipient: str
) -> None:
    """Send to ``recipient`` alone, over a kept-open SMTP connection, checked first; once,
    never retried here. The envelope's sender and recipient are given explicitly: SMTP would
    otherwise take them from the headers, where text could add a recipient.

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
        smtp.send_message(message, from_addr=sender, to_addrs=[recipient])
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


# --8<-- [start:email-consumer]
class EmailConsumer(Consumer):
    """Celery's worker consumer, with two of its defaults turned around."""

    class Blueprint(Consumer.Blueprint):
        # Celery declares 28 exchanges and queues for "native delayed delivery" as soon as it
        # sees a quorum queue. Warren's email retries wait in the worker instead (a handful
        # at a time, prefetch 1), so the broker keeps only the topology Warren declares.
        default_steps: ClassVar[list[str]] = [
            step
            for step in Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery acks a message it cannot decode: dropped, one log line. Reject it instead,
        # so that it lands in notification.emails.dlq like every other queue's poison.
        log.error(
            "undecodable task message: dead-lettered",
            error=repr(exc)[:500],
            content_type=message.content_type,
        )
        message.reject(requeue=False)
        # --8<-- [end:email-consumer]


# --8<-- [start:make-celery]
def make_celery(settings: NotificationSettings) -> Celery:
    # Over amqps, the broker's certificate and name verified as aio-pika verifies them.
    broker_url, broker_tls = celery_broker(settings.rabbit_url)
    app = Celery("warren-notification", broker=broker_url)
    queue = email_queue()
    app.conf.update(
        broker_use_ssl=broker_tls,
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
        worker_consumer=f"{__name__}:EmailConsumer",
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
        # (and a mail system that cannot say whether a stale claim's email arrived).
        autoretry_for=(smtplib.SMTPException, OSError, PyMongoError, httpx.HTTPError),
        retry_backoff=2,
        retry_backoff_max=60,
        max_retries=8,
    )
    def send_email(self: Task, notification_id: str) -> str:
        try:
            return deliver(notification_id, settings, task_id=self.request.id or "")
        except EarlierEmailPendingError as exc:
            # Waiting is not failing: the email goes back to the queue as a new task, a second
            # later, and this one is done. Not self.retry(): every wait would use up one of the
            # 8 retries kept for real failures (max_retries=None means "the task's default" to
            # Celery: the ninth wait dead-lettered the email), and a max_retries of its own
            # would stay set on the task object for the worker's next tasks. waits_for_earlier
            # bounds the waiting (ORDER_WAIT_SECONDS).
            log.info(
                "email waits for the previous one", notification_id=notification_id, why=str(exc)
            )
            self.apply_async(args=(notification_id,), countdown=1)
            return "waiting"

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
    ping: bool = typer.Option(
        False, "--ping", help="Exit 0 if this host's worker answers a ping, else 1."
    ),
) -> None:
    """Run a Celery worker that delivers notification emails (queue notification.emails)."""
    settings = NotificationSettings()
    setup_observability("notification-worker", level=settings.log_level, fmt=settings.log_format)
    app = make_celery(settings)
    if ping:
        # Only a worker of this host (container, pod) counts: a twin's answer would hide a hung
        # worker here.
        mine = f"emails@{os.uname().nodename}."
        replies = app.control.ping(timeout=2.0)
        sys.exit(0 if any(name.startswith(mine) for r in replies for name in r) else 1)
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
            # No chatter between workers: gossip and mingle share state Warren does not use
            # (revoked tasks, clocks), and event heartbeats feed monitors it does not run.
            # The broker connection's own AMQP heartbeat stays on; `--ping` still answers.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":
    typer.run(main)
